"""TaylorSeer calibrator: golden numbers (cache-dit semantics §4.2), the compiled region equals the eager
oracle with TaylorSeer on, and it forecasts a smooth residual better than plain caching."""

import pytest
import torch

import dit_cache_fx
from dit_cache_fx import reference

from helpers import handle, max_rel_err, toy_loop
from toy import ToyDiT


def _ladder(order: int, computed: list[int]) -> tuple[torch.Tensor, int, int]:
    """Feed Y(s) = s² at the computed steps; returns (factors, n_valid, last computed step)."""
    f, n_valid, last = torch.zeros(order + 1, 1, dtype=torch.float64), 0, 0
    for s in computed:
        f = reference.taylor_update(f, torch.tensor([float(s * s)], dtype=torch.float64), float(s - last), n_valid)
        n_valid, last = min(n_valid + 1, order + 1), s
    return f, n_valid, last


def _forecast(f, k):
    return reference.taylor_forecast(torch.zeros(1, dtype=torch.float64), f, float(k)).item()


def test_golden_worked_example():
    f, _, _ = _ladder(1, [0, 1, 2, 3, 4])
    assert _forecast(f, 1) == 23  # step 5, true 25
    f, _, _ = _ladder(2, [0, 1, 2, 3, 4])
    assert _forecast(f, 1) == 24
    f, _, last = _ladder(1, [0, 1, 2, 3, 4, 6])  # gap 2: D1 = (36 - 16) / 2 = 10
    assert f[1].item() == 10
    assert (_forecast(f, 7 - last), _forecast(f, 8 - last)) == (46, 56)


def _loop(model, steps=20):
    return toy_loop(model, steps, dt=45)


@pytest.fixture(scope="module")
def toy_taylor():
    torch.manual_seed(0)
    model = ToyDiT(num_layers=5).eval()
    torch._dynamo.reset()
    return model, dit_cache_fx.compile(model, cache="F1B0_W3MC3_R1.0_T2", fullgraph=True)


@pytest.mark.parametrize("order", [1, 2])
def test_compiled_matches_oracle(toy_taylor, order):
    model, compiled2 = toy_taylor
    cfg = dit_cache_fx.CacheConfig.parse(f"F1B0_W3MC3_R1.0_T{order}")
    ora = reference.EagerDBCache.single(model, cfg, ["transformer_blocks"], pattern=3)
    refs = _loop(model)
    ora.remove()
    compiled = compiled2 if order == 2 else dit_cache_fx.compile(model, cache=cfg, fullgraph=True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        outs = _loop(compiled)
        outs2 = _loop(compiled)  # second generation
    s = dit_cache_fx.summary(compiled)
    assert s.cached_steps == ora.cached_steps() == [3, 4, 5, 7, 8, 9, 11, 12, 13, 15, 16, 17, 19]
    assert max_rel_err(outs, refs) <= 1e-4 and max_rel_err(outs2, refs) <= 1e-4
    assert len(handle(compiled).graphs) == 1
    from torch._dynamo.utils import counters
    assert len(counters["graph_break"]) == 0


def test_taylor_beats_plain_cache_on_smooth_residual(toy_taylor):
    model, _ = toy_taylor
    exact = _loop(model)
    errs = {}
    for order in (0, 1, 2):
        cfg = dit_cache_fx.CacheConfig.parse(f"F1B0_W3MC3_R1.0_T{order}")
        ora = reference.EagerDBCache.single(model, cfg, ["transformer_blocks"], pattern=3)
        outs = _loop(model)
        ora.remove()
        errs[order] = max_rel_err(outs, exact)
    assert errs[1] < 0.5 * errs[0] and errs[2] < errs[0]


@pytest.mark.parametrize("spec", ["F1B1_W2MC2_R1.0_T1", "F1B1_W2MC2_R1.0_T2_ET0"])
def test_dual_stream_model_matches_oracle(spec):
    """Flux: hidden and encoder streams both cached; TaylorSeer on both (default) or on hidden only."""
    from helpers import oracle_run
    from tiny_models import MODELS, run_loop

    m = MODELS["flux"]
    model = m.build()
    cfg = dit_cache_fx.CacheConfig.parse(spec)
    assert cfg.taylorseer_encoder == ("ET0" not in spec)
    refs, ora = oracle_run(model, m, cfg, steps=12)
    compiled = dit_cache_fx.compile(model, cache=cfg, fullgraph=True)
    outs = run_loop(compiled, m, steps=12)
    assert dit_cache_fx.summary(compiled).cached_steps == ora.cached_steps() == [2, 3, 5, 6, 8, 9, 11]
    assert max_rel_err(outs, refs) <= 1e-4
    stacks = handle(compiled).store.states()[0].factors
    assert [s.shape[1] for s in stacks] == ([cfg.taylorseer_order + 1] * 2 if cfg.taylorseer_encoder
                                            else [cfg.taylorseer_order + 1, 1])
