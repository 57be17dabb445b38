"""Decision sequences: warmup / M / MC golden strings (cache-dit semantics doc §1.8, with our MC fix),
the anchor rule (diff against the last *computed* step), run both in the eager reference and in the
compiled graph, whose policy is changed through `configure` without recompiling."""

import pytest
import torch

import dit_cache_fx
from dit_cache_fx import CacheConfig, reference
from dit_cache_fx.reference import decision_string

from helpers import handle
from toy import ToyDiT

# 1 = computed, 0 = cached; the diff always passes (threshold >= 1), W8 unless given, 28 steps
GOLDEN = {
    "R1.0": "1111111100000000000000000000",
    "MC1_R1.0": "1111111101010101010101010101",  # cache-dit's quirk gives 1111111101001001001001001001
    "MC2_R1.0": "1111111100100100100100100100",
    "MC3_R1.0": "1111111100010001000100010001",
    "MC4_R1.0": "1111111100001000010000100001",
    "W8I2_R1.0": "1010101000000000000000000000",
    "W4M5_R1.0": "1111000001111111111111111111",
    "W4M5MC2_R1.0": "1111001001011111111111111111",
    "R0": "1" * 28,
    "R-1": "1" * 28,
}


def _string(cached: list[int], steps: int) -> str:
    return "".join("0" if s in cached else "1" for s in range(steps))


@pytest.mark.parametrize("spec", list(GOLDEN))
def test_reference_golden(spec):
    assert decision_string(CacheConfig.parse("F1B0_" + spec), 28) == GOLDEN[spec]


@pytest.fixture(scope="module")
def toy_module():
    torch.manual_seed(0)
    model = ToyDiT().eval()
    compiled = dit_cache_fx.compile(model, cache="F1B0_R0", fullgraph=True)
    return model, compiled


@pytest.fixture
def toy(toy_module):
    """The shared compiled toy, starting a new generation (whatever the previous test left)."""
    dit_cache_fx.reset(toy_module[1])
    return toy_module


def _toy_loop(compiled, steps=28, ratio=0.98, cfg=False):
    x = torch.randn(1, 8, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for s in range(steps):
            t = torch.tensor([1000 * ratio ** s])
            compiled(x, t)
            if cfg:
                compiled(x * 0.5, t)


def test_compiled_golden_no_recompile(toy):
    _, compiled = toy
    with torch._dynamo.config.patch(error_on_recompile=True):
        for spec, want in GOLDEN.items():
            dit_cache_fx.configure(compiled, "F1B0_" + spec)
            _toy_loop(compiled)
            assert _string(dit_cache_fx.summary(compiled).cached_steps, 28) == want, spec
    assert len(handle(compiled).graphs) == 1


def test_anchor_is_last_computed_step(toy):
    """Residual r_s = 0.98^s·w: the diff against the anchor grows 1−0.98^k until it crosses 0.08 and the
    step is recomputed, re-anchoring (cache-dit's 0.019, 0.038, 0.057, 0.076, 0.094→recompute)."""
    _, compiled = toy
    dit_cache_fx.configure(compiled, "F1B0_W1_R0.08")
    _toy_loop(compiled, steps=12)
    s = dit_cache_fx.summary(compiled)
    assert _string(s.cached_steps, 12) == "100001000010"
    expected = {k: 1 - 0.98 ** ((k - 1) % 5 + 1) for k in range(1, 12)}
    assert s.residual_diffs.keys() == expected.keys()
    for k, d in expected.items():
        assert s.residual_diffs[k] == pytest.approx(d, rel=1e-4)


def test_reset_and_new_generation(toy):
    _, compiled = toy
    dit_cache_fx.configure(compiled, "F1B0_W2_R1.0")
    _toy_loop(compiled, steps=6)
    assert dit_cache_fx.summary(compiled).cached_steps == [2, 3, 4, 5]
    # same timesteps again: detected as a new generation, warmup starts over
    _toy_loop(compiled, steps=3)
    s = dit_cache_fx.summary(compiled)
    assert s.num_steps == 3 and s.cached_steps == [2]
    # explicit reset in the middle of a schedule: the next call is step 0
    dit_cache_fx.reset(compiled)
    with torch.no_grad():
        compiled(torch.randn(1, 8, 16), torch.tensor([10.0]))
    s = dit_cache_fx.summary(compiled)
    assert s.num_steps == 1 and s.cached_steps == []


def test_separate_cfg_detected_and_forced(toy):
    _, compiled = toy
    dit_cache_fx.configure(compiled, "F1B0_W2MC2_R1.0")
    _toy_loop(compiled, steps=8, cfg=True)
    s = dit_cache_fx.summary(compiled)
    assert s.separate_cfg and s.num_steps == 8
    assert s.branches[0].cached_steps == s.branches[1].cached_steps == [2, 3, 5, 6]
    dit_cache_fx.configure(compiled, "F1B0_W2MC2_R1.0_CFG0")  # forced off: every call is its own step
    _toy_loop(compiled, steps=8, cfg=True)
    s = dit_cache_fx.summary(compiled)
    # cond and uncond share a timestep, so with CFG forced off each cond call starts a new generation
    assert not s.separate_cfg
    dit_cache_fx.configure(compiled, "F1B0_W2MC2_R1.0_CFG1")
    _toy_loop(compiled, steps=8, cfg=True)
    s = dit_cache_fx.summary(compiled)
    assert s.separate_cfg and s.branches[1].cached_steps == [2, 3, 5, 6]


# steps computation mask (cache-dit semantics §5.2): presets and the drift example
SCM_GOLDEN = {
    "slow": "1111111101110011100110010001",
    "medium": "1111110110001100011000110001",
    "fast": "1111110100010000100000100001",
    "ultra": "1111001000001000000100000001",
}


@pytest.mark.parametrize("preset", list(SCM_GOLDEN))
def test_scm_presets(preset):
    cfg = CacheConfig.parse(f"F1B0_SCM{preset}_N28")
    assert "".join(map(str, cfg.steps_computation_mask)) == SCM_GOLDEN[preset]
    assert CacheConfig.parse(str(cfg)) == cfg


def test_scm_preset_needs_28_steps():
    with pytest.raises(ValueError, match="defined for 28 steps"):
        CacheConfig.parse("F1B0_SCMfast")
    with pytest.raises(ValueError, match="SCM takes 0/1 digits"):
        CacheConfig.parse("F1B0_SCM1102")


def _drift_loop(compiled, steps=28):
    """Fn residual r_s = -(1 + 0.02 s)·w: a 2 %/step linear drift (timesteps still decrease)."""
    x = torch.randn(1, 8, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for s in range(steps):
            compiled(x, torch.tensor([-1000.0 * (1 + 0.02 * s)]))


@pytest.mark.parametrize("policy, want", [
    ("dynamic", "1111110110101101011001110011"),  # cache-dit's verified sequence: some 0 steps recomputed
    ("static", SCM_GOLDEN["medium"]),  # static: exactly the mask
])
def test_scm_compiled_and_reference(toy, policy, want):
    model, compiled = toy
    spec = f"F1B0_W8_R0.03_SCMmedium_N28_{policy}"
    ora = reference.EagerDBCache.single(model, CacheConfig.parse(spec), ["transformer_blocks"], pattern=3)
    _drift_loop(model)
    ora.remove()
    assert _string(ora.cached_steps(), 28) == want
    dit_cache_fx.configure(compiled, spec)
    with torch._dynamo.config.patch(error_on_recompile=True):
        _drift_loop(compiled)
    s = dit_cache_fx.summary(compiled)
    assert _string(s.cached_steps, 28) == want
    if policy == "static":
        assert all(step not in s.residual_diffs for step in s.cached_steps)  # no diff on a fixed schedule
    assert len(handle(compiled).graphs) == 1


def test_counters_are_read_and_written_by_name(monkeypatch):
    """`read_counters` / `write_counters` go by field name: a permuted declaration changes nothing."""
    from dit_cache_fx.runtime import policy

    state = {name: torch.zeros(2, dtype=torch.int64) for name in policy.COUNTERS}
    values = dict(n_cached=3, n_cont=1, has_anchor=1, last_computed=7, n_valid=2)
    branch, gen = torch.tensor(1), torch.tensor(5)
    for order in (policy.COUNTERS, tuple(reversed(policy.COUNTERS))):
        monkeypatch.setattr(policy, "COUNTERS", order)
        c = policy.Counters(**{k: torch.tensor(v) for k, v in values.items()})
        policy.write_counters(state, branch, gen, c)
        back = policy.read_counters(state, branch, gen)
        assert {k: int(getattr(back, k)) for k in values} == values
        assert int(state["n_cached"][1]) == 3 and int(state["n_cont"][1]) == 1
        stale = policy.read_counters(state, branch, torch.tensor(6))  # another generation: all zero
        assert all(int(getattr(stale, k)) == 0 for k in values)
