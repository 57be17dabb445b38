"""Non-finite values never enter stored state: a NaN/Inf Fn residual, diff or stored stack makes the step
compute and restarts the region's stacks, in the graph and in the eager oracle alike; later steps are
finite and equal the oracle, and `summary()` names the steps."""

import pytest
import torch

import dit_cache_fx
from dit_cache_fx import reference

from helpers import max_rel_err
from toy import ToyDiT

STEPS = 20
SPEC = "F1B0_W3MC3_R1.0_T{order}"  # threshold >= 1: every consulted step would cache


def _loop(model, bad_step=None, value=float("nan"), zero=False, hook=None):
    """A 20-step generation; at `bad_step` one latent element is `value` (or, `hook(step)` is called first)."""
    x = torch.zeros(1, 8, 16) if zero else torch.randn(1, 8, 16, generator=torch.Generator().manual_seed(1))
    outs = []
    with torch.no_grad():
        for s in range(STEPS):
            xs = x
            if s == bad_step:
                xs = x.clone()
                xs[0, 3, 5] = value
            if hook is not None:
                hook(s)
            outs.append(model(xs, torch.tensor([1000.0 - 45 * s])))
    return outs


def _oracle(model, cfg, **kw):
    ora = reference.EagerDBCache.single(model, cfg, ["transformer_blocks"], pattern=3)
    try:
        return _loop(model, **kw), ora
    finally:
        ora.remove()


def _check(outs, refs, skip=()):
    keep = [i for i in range(STEPS) if i not in skip]
    assert all(torch.isfinite(outs[i]).all() for i in keep)
    assert max_rel_err([outs[i] for i in keep], [refs[i] for i in keep]) <= 1e-4


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    torch._dynamo.reset()
    return ToyDiT(num_layers=5).eval()


@pytest.fixture(scope="module")
def compiled(toy):
    """One compiled module per order, reused across the tests (a new generation per loop)."""
    return {order: dit_cache_fx.compile(toy, cache=SPEC.format(order=order), fullgraph=True) for order in (0, 1, 2)}


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("order", [0, 1, 2])
def test_nonfinite_input_restarts(toy, compiled, order, value):
    cfg = dit_cache_fx.CacheConfig.parse(SPEC.format(order=order))
    refs, ora = _oracle(toy, cfg, bad_step=3, value=value)
    with torch._dynamo.config.patch(error_on_recompile=True):
        outs = _loop(compiled[order], bad_step=3, value=value)
    s = dit_cache_fx.summary(compiled[order])
    # step 3 computes (it would have cached) and restarts; 4 computes (no anchor); then MC3 as usual
    assert s.cached_steps == ora.cached_steps() == [5, 6, 7, 9, 10, 11, 13, 14, 15, 17, 18, 19]
    assert s.nonfinite_steps == ora.nonfinite_steps() == [3]
    assert not torch.isfinite(outs[3]).all()  # the step itself is what the model gives
    _check(outs, refs, skip=(3,))
    assert "non-finite values or an undefined diff at steps [3]" in str(s)
    # the next generation starts clean
    outs2 = _loop(compiled[order])
    clean, _ = _oracle(toy, cfg)
    _check(outs2, clean)
    assert dit_cache_fx.summary(compiled[order]).nonfinite_steps == []


def test_nonfinite_at_warmup_step(toy, compiled):
    """A NaN during warmup (the diff is not consulted) must not become the anchor either."""
    cfg = dit_cache_fx.CacheConfig.parse(SPEC.format(order=1))
    refs, ora = _oracle(toy, cfg, bad_step=1)
    outs = _loop(compiled[1], bad_step=1)
    s = dit_cache_fx.summary(compiled[1])
    assert s.cached_steps == ora.cached_steps() == [3, 4, 5, 7, 8, 9, 11, 12, 13, 15, 16, 17, 19]
    assert s.nonfinite_steps == ora.nonfinite_steps() == [1]
    _check(outs, refs, skip=(1,))


def test_nonfinite_mn_residual(toy, compiled):
    """The Fn residual is finite but an Mn block overflows at a computed step: the stacks restart."""
    cfg = dit_cache_fx.CacheConfig.parse(SPEC.format(order=2))
    mix = toy.transformer_blocks[3].mix

    def hook(step):
        with torch.no_grad():
            mix.fill_(float("inf") if step == 6 else 0.5)

    refs, ora = _oracle(toy, cfg, hook=hook)
    outs = _loop(compiled[2], hook=hook)
    s = dit_cache_fx.summary(compiled[2])
    assert s.nonfinite_steps == ora.nonfinite_steps() == [6]
    assert s.cached_steps == ora.cached_steps() == [3, 4, 5, 8, 9, 10, 12, 13, 14, 16, 17, 18]
    _check(outs, refs, skip=(6,))


def test_zero_residual_diff_is_0_over_0(compiled):
    """A block whose residual is identically zero: every consulted diff is 0/0, so every step computes
    (as cache-dit, whose NaN diff never passes) and nothing non-finite is stored."""
    torch.manual_seed(0)
    model = ToyDiT(num_layers=5).eval()
    torch.nn.init.zeros_(model.transformer_blocks[0].w)  # block 0 (Fn): residual temb * w = 0
    cfg = dit_cache_fx.CacheConfig.parse(SPEC.format(order=1))
    refs, ora = _oracle(model, cfg)
    cm = dit_cache_fx.compile(model, cache=cfg, fullgraph=True)
    outs = _loop(cm)
    with torch.no_grad():
        plain = [model(torch.randn(1, 8, 16, generator=torch.Generator().manual_seed(1)),
                       torch.tensor([1000.0 - 45 * s])) for s in range(STEPS)]
    s = dit_cache_fx.summary(cm)
    assert s.cached_steps == ora.cached_steps() == []
    # consulted once an anchor is there: 3 (after warmup), then every other step (the restart drops it)
    assert s.nonfinite_steps == ora.nonfinite_steps() == list(range(3, STEPS, 2))
    _check(outs, refs)
    _check(outs, plain)


@pytest.mark.parametrize("order", [0, 1])
def test_all_zero_latents(toy, compiled, order):
    """All-zero latents are finite values: the cache runs as usual and equals the oracle."""
    cfg = dit_cache_fx.CacheConfig.parse(SPEC.format(order=order))
    refs, ora = _oracle(toy, cfg, zero=True)
    outs = _loop(compiled[order], zero=True)
    s = dit_cache_fx.summary(compiled[order])
    assert s.cached_steps == ora.cached_steps() == [3, 4, 5, 7, 8, 9, 11, 12, 13, 15, 16, 17, 19]
    assert s.nonfinite_steps == []
    _check(outs, refs)
