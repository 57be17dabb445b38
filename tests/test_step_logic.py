"""The in-graph step logic run eagerly, without compiling, against its twins in the eager reference:
`classify_call` at every timestep convention, `should_cache` / `update_counters` on the golden grids."""

import math

import pytest
import torch
from test_policy import GOLDEN, SCM_GOLDEN

from dit_cache_fx import CacheConfig, reference
from dit_cache_fx.runtime import policy, step
from dit_cache_fx.runtime.layout import RegionPolicy, StepContext

# timestep sequences as pipelines send them, and the (generation, step, branch) of each call
SIGMAS = [1.0, 0.75, 0.5, 0.25]
CONVENTIONS = {
    "decreasing sigmas": (SIGMAS * 2, [(g, s, 0) for g in (1, 2) for s in range(4)]),
    "increasing (Z-Image, Lumina2, Mochi inverted)": ([0.0, 0.1, 0.25, 0.5] * 2,
                                                     [(g, s, 0) for g in (1, 2) for s in range(4)]),
    "integer timesteps": ([999, 750, 500, 250, 999, 750], [(1, 0, 0), (1, 1, 0), (1, 2, 0), (1, 3, 0), (2, 0, 0),
                                                           (2, 1, 0)]),
    "separate CFG": ([t for t in SIGMAS for _ in (0, 1)] * 2,
                     [(g, s, b) for g in (1, 2) for s in range(4) for b in (0, 1)]),
    "increasing with CFG (Lumina2)": ([t for t in (0.0, 0.05, 0.15) for _ in (0, 1)],
                                      [(1, s, b) for s in range(3) for b in (0, 1)]),
    # Heun-type: every timestep after the first twice; each call is a step, never a new generation
    "Heun": ([1.0, 0.8, 0.8, 0.5, 0.5, 1.0, 0.8, 0.8], [(1, 0, 0), (1, 1, 0), (1, 2, 0), (1, 3, 0), (1, 4, 0),
                                                       (2, 0, 0), (2, 1, 0), (2, 2, 0)]),
    "Heun with CFG": ([1.0, 1.0, 0.8, 0.8, 0.8, 0.8, 0.5, 0.5],
                      [(1, 0, 0), (1, 0, 1), (1, 1, 0), (1, 1, 1), (1, 2, 0), (1, 2, 1), (1, 3, 0), (1, 3, 1)]),
    # a second expert (Wan 2.2) sees the low-noise part of each generation
    "second expert": ([0.5, 0.25, 0.1, 0.5, 0.25], [(1, 0, 0), (1, 1, 0), (1, 2, 0), (2, 0, 0), (2, 1, 0)]),
}


def _classify_tensors(ts, cfg_mode=None, reset_at=()):
    ctx = StepContext.allocate("cpu")
    ctx.cfg_mode.fill_({None: -1, False: 0, True: 1}[cfg_mode])
    out = []
    for i, t in enumerate(ts):
        if i in reset_at:
            ctx.reset.fill_(True)
        step.classify_call(ctx, step.timestep_value(torch.tensor([t])))
        out.append((int(ctx.gen), int(ctx.step), int(ctx.branch)))
    return out


def _classify_reference(ts, cfg_mode=None, reset_at=()):
    ctx, out = reference.StepState(), []
    for i, t in enumerate(ts):
        ctx.reset = ctx.reset or i in reset_at
        reference.classify_call(ctx, float(torch.tensor(t, dtype=torch.float32)), cfg_mode)
        out.append((ctx.gen, ctx.step, ctx.branch))
    return out


@pytest.mark.parametrize("name", list(CONVENTIONS))
def test_classify_call_at_every_convention(name):
    ts, want = CONVENTIONS[name]
    assert _classify_tensors(ts) == _classify_reference(ts) == want


def test_classify_call_reset_and_forced_cfg():
    ts = [t for t in SIGMAS for _ in (0, 1)]
    got = _classify_tensors(ts, reset_at=(4,))
    assert got == _classify_reference(ts, reset_at=(4,))
    assert [g for g, _, _ in got] == [1, 1, 1, 1, 2, 2, 2, 2] and got[4] == (2, 0, 0)
    # CFG forced off: the repeated timestep is a new step (as a Heun repeat), not a branch
    assert _classify_tensors(ts, cfg_mode=False) == _classify_reference(ts, False) == [(1, s, 0) for s in range(8)]
    # CFG forced on: branches alternate from the first call, the step advances on branch 0
    on = _classify_tensors(ts, cfg_mode=True)
    assert on == _classify_reference(ts, True) == [(1, s, b) for s in range(4) for b in (0, 1)]


def test_timestep_value_of_any_shape():
    assert step.timestep_value(torch.tensor(3)).item() == 3.0
    assert step.timestep_value(torch.tensor([[0.0, 0.7, 0.7]])).item() == pytest.approx(0.7)  # per-token (TI2V)
    assert step.timestep_value(torch.tensor([999, 999], dtype=torch.int64)).dtype == torch.float32


def _decisions_tensors(config: CacheConfig, steps: int, diffs) -> str:
    pol = RegionPolicy.allocate("cpu")
    pol.load(config)
    zero = lambda dtype: torch.zeros((), dtype=dtype)  # noqa: E731
    c = policy.Counters(zero(torch.int64), zero(torch.int64), zero(torch.bool), zero(torch.int64), zero(torch.int64))
    out = []
    for s in range(steps):
        d = diffs if isinstance(diffs, float) else diffs[s]
        use_cache, _ = policy.should_cache(pol, c, torch.tensor(s), torch.tensor(d))
        c = policy.update_counters(c, use_cache, torch.tensor(s), config.taylorseer_order)
        out.append("0" if use_cache else "1")
    return "".join(out)


@pytest.mark.parametrize("spec", list(GOLDEN))
def test_policy_tensors_match_reference_golden(spec):
    config = CacheConfig.parse("F1B0_" + spec)
    assert _decisions_tensors(config, 28, 0.0) == reference.decision_string(config, 28) == GOLDEN[spec]


@pytest.mark.parametrize("preset", list(SCM_GOLDEN))
@pytest.mark.parametrize("policy_name", ["dynamic", "static"])
def test_policy_tensors_match_reference_on_masks(preset, policy_name):
    config = CacheConfig.parse(f"F1B0_W8_R0.5_SCM{preset}_N28_{policy_name}")
    diffs = [0.1 + 0.5 * (math.sin(s) > 0.3) for s in range(28)]  # some diffs pass the threshold, some do not
    got = _decisions_tensors(config, 28, diffs)
    assert got == reference.decision_string(config, 28, diffs)
    if policy_name == "static":
        assert all(g == "0" for g, m in zip(got, SCM_GOLDEN[preset]) if m == "0")


def test_classify_pending_classifies_only_a_pending_call():
    ts = [t for t in SIGMAS for _ in (0, 1)]
    ctx, twin = StepContext.allocate("cpu"), StepContext.allocate("cpu")
    for i, t in enumerate(ts):
        t = torch.tensor([t])
        ctx.pending.fill_(True)
        step.classify_pending(dict(ctx.flat()), t)
        step.classify_call(twin, step.timestep_value(t))
        assert not ctx.pending
        assert all(torch.equal(a, b) for (n, a), (_, b) in zip(ctx.flat(), twin.flat()) if n != "pending")
        if i == 3:  # not pending: a second graph of the same call leaves the context as it is
            before = [x.clone() for x in ctx.tensors()]
            step.classify_pending(dict(ctx.flat()), t)
            assert all(torch.equal(a, b) for a, b in zip(ctx.tensors(), before))


def test_a_graph_with_the_timestep_classifies_its_calls(monkeypatch):
    """The compiled graph takes the timestep, so it classifies each call itself (the host only marks it
    pending); the host classifies eagerly only the first call at new sizes (it checks them against the step
    before the graph runs) and never compiles its classifier. Steps and branches are the oracle's."""
    import dit_cache_fx

    from helpers import handle, oracle_run
    from tiny_models import MODELS, run_loop

    host_calls = []
    original = step.classify
    monkeypatch.setattr(step, "classify", lambda ctx, t, compiled=None: (host_calls.append(compiled is not None),
                                                                        original(ctx, t, compiled))[1])
    torch._dynamo.reset()
    m = MODELS["flux"]
    model = m.build()
    spec = CacheConfig.parse("F1B0_W2MC2_R1.0")
    _, ora = oracle_run(model, m, spec, steps=6, cfg=True)
    compiled = dit_cache_fx.compile(model, cache=spec, fullgraph=True)
    for _ in range(2):  # a second generation: the graph tells it apart too
        run_loop(compiled, m, steps=6, cfg=True)
    assert host_calls == [False]
    s = dit_cache_fx.summary(compiled)
    assert int(handle(compiled).store.ctx.gen) == 2 and s.num_steps == 6 and s.separate_cfg
    assert [s.branches[b].cached_steps for b in (0, 1)] == [ora.cached_steps(0), ora.cached_steps(1)]
    assert ora.cached_steps(0)
