"""FoCa calibrator: golden numbers from cache-dit 1.5.3's own `FoCaCalibrator` (a scalar series, and
DBCache+FoCa on a tiny random Flux), the in-graph ops equal the oracle's, and the compiled region equals the
eager oracle with 0 graph breaks and no recompiles — also with `dynamic=True` and `regional=True`.

The goldens were printed by cache-dit itself (`/work/notes/scripts/foca_golden.py`, `foca_flux_golden2.py`).
"""

import diffusers
import pytest
import torch

import dit_cache_fx
from dit_cache_fx import kernels, reference
from dit_cache_fx.config import FOCA, CacheConfig

from helpers import handle, max_rel_err, rel_err

COMPUTED = {0, 1, 2, 3, 4, 6}  # then 5, 7, 8, 9, 10 forecast (gaps 1, 1, 2, 3, 4 after the last computed step)


def _series(y, computed=COMPUTED, steps=11, ops="reference"):
    """Values of Y(s) at the computed steps, FoCa's forecast at the others (the stack and counters as the
    region keeps them); `ops`: the oracle's functions or the in-graph kernels (fp32)."""
    dtype = torch.float64 if ops == "reference" else torch.float32
    stack, n_valid, last, out = torch.zeros(4, 1, dtype=dtype), 0, 0, []
    zero = torch.zeros(1, dtype=dtype)
    for s in range(steps):
        if s in computed:
            value = torch.tensor([float(y(s))], dtype=dtype)
            stack = reference.foca_update(stack, value) if ops == "reference" else kernels.foca_update(stack, value)
            n_valid, last = min(n_valid + 1, 2), s
            out.append(value.item())
        else:
            if ops == "reference":
                value, stack = reference.foca_forecast(zero, stack, float(s - last), n_valid)
            else:
                value, stack = kernels.foca_forecast(zero, stack, torch.tensor(float(s - last)), torch.tensor(n_valid))
            out.append(value.item())
    return out


@pytest.mark.parametrize("ops", ["reference", "kernels"])
def test_golden_scalar_series(ops):
    """cache-dit 1.5.3 `FoCaState` (out_foca_standalone.txt): steps 5, 7, 8, 9, 10 forecast."""
    lin = _series(lambda s: s, ops=ops)
    sq = _series(lambda s: s * s, ops=ops)
    assert [lin[s] for s in (5, 7, 8, 9, 10)] == [5, 7.5, 9.5, 12, 11.0625]
    assert [sq[s] for s in (5, 7, 8, 9, 10)] == [23, 52.5, 72.5, 96, 84.9375]
    # fewer than two computed steps: the last computed value, reused (nothing moves)
    assert _series(lambda s: s * s, computed={0}, steps=4, ops=ops)[1:] == [0, 0, 0]
    # computed {0, 1}, then 2..7 forecast: beyond 3 steps damped toward the anchor
    assert _series(lambda s: s * s, computed={0, 1}, steps=8, ops=ops)[2:] == pytest.approx(
        [2, 3, 4, 3.25, 1.225, 0.23125], rel=1e-6)
    # computed {0, 2, 4}: the forecast at 1 did not move the rolling pair
    assert _series(lambda s: s * s, computed={0, 2, 4}, steps=7, ops=ops) == [0, 0, 4, 8, 16, 26, 38]


def test_kernels_equal_oracle_on_tensors():
    g = torch.Generator().manual_seed(0)
    stack, base = torch.randn(4, 3, 5, generator=g), torch.randn(3, 5, generator=g)
    value = torch.randn(3, 5, generator=g)
    assert torch.equal(kernels.foca_update(stack, value), reference.foca_update(stack, value))
    for k in (1.0, 2.0, 3.0, 4.0, 7.0):
        for n_valid in (1, 2):
            out, new = kernels.foca_forecast(base, stack, torch.tensor(k), torch.tensor(n_valid))
            ref_out, ref_new = reference.foca_forecast(base.double(), stack.double(), k, n_valid)
            assert torch.allclose(out.double(), ref_out, rtol=1e-6, atol=1e-6)
            assert torch.allclose(new.double(), ref_new, rtol=1e-6, atol=1e-6)
    # a bf16 stack stays bf16; the forecast is computed in fp32
    out, new = kernels.foca_forecast(base.bfloat16(), stack.bfloat16(), torch.tensor(2.0), torch.tensor(2))
    assert out.dtype == new.dtype == torch.bfloat16 and new.shape == stack.shape


def test_spec_token():
    c = CacheConfig.parse("DBCache_F1B0_W2I1M0MC0_R0.6_CFG0_FoCa_S5")  # cache-dit's printed name
    assert c.foca and c.taylorseer_order == 0 and c.Fn_compute_blocks == 1 and c.max_warmup_steps == 2
    assert str(c) == "F1B0_W2I1M0MC0_R0.6_FoCa_CFG0" and CacheConfig.parse(str(c)) == c
    assert CacheConfig.parse("F1B0_foca").foca and not CacheConfig.parse("F1B0").foca
    assert (c.taylor_order_for("hidden"), c.taylor_order_for("encoder")) == (FOCA, FOCA)
    assert CacheConfig.parse("F1B0_FoCa_ET0").taylor_order_for("encoder") == 0
    assert "foca" in CacheConfig.structural_fields()
    with pytest.raises(ValueError, match="one calibrator"):
        CacheConfig.parse("F1B0_T1_FoCa")


# ---------------------------------------------------------------------------------------------------------
# the tiny random Flux of the notes (`foca_flux_golden2.py`): DBCache F1B0 W2 over the chained 6 blocks


def _flux():
    torch.manual_seed(0)
    return diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=4, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 6, 6]).eval()


def _flux_loop(model, steps, drift):
    g = torch.Generator().manual_seed(1)
    hs0, direction = torch.randn(1, 64, 16, generator=g), torch.randn(1, 64, 16, generator=g)
    ehs = torch.randn(1, 8, 32, generator=g)
    torch.randn(1, 8, 32, generator=g)
    pp, img_ids = torch.randn(1, 32, generator=g), torch.rand(64, 3, generator=g)
    outs = []
    with torch.no_grad():
        for k in range(steps):
            outs.append(model(hidden_states=hs0 + drift * k * direction, encoder_hidden_states=ehs,
                              pooled_projections=pp, timestep=torch.tensor([1.0 - k / steps]), img_ids=img_ids,
                              txt_ids=torch.zeros(8, 3), guidance=None, return_dict=False)[0])
    return outs


# (steps, drift, R): cache-dit's cached steps, per-step output sums and rel. errors vs no cache
GOLDEN = {
    (8, 0.1, 0.6): ([2, 3, 4, 6, 7],
                    [24.32987, 29.87833, 34.0674, 34.27858, 42.44067, 28.32614, 21.12648, 19.61265],
                    [0.0, 0.0, 0.040679, 0.066698, 0.092233, 0.0, 0.08459, 0.11282]),
    (12, 0.02, 0.9): ([2, 3, 4, 5, 6, 7, 8, 9, 10, 11],  # computed 0, 1 only: gaps up to 10 (damped)
                      [24.32987, 27.3154, 32.77688, 29.6829, 26.52624, 30.57007, 34.93237, 34.01607, 35.00917,
                       27.80296, 37.00586, 38.98901],
                      [0.0, 0.0, 0.048947, 0.065979, 0.10529, 0.080605, 0.045619, 0.033889, 0.03843, 0.040829,
                       0.046603, 0.04269]),
}
BLOCKS = ("transformer_blocks", "single_transformer_blocks")


def _check_golden(outs, exact, key):
    cached, sums, errs = GOLDEN[key]
    assert [o.double().sum().item() for o in outs] == pytest.approx(sums, rel=2e-5, abs=2e-4)
    assert [rel_err(o, r) for o, r in zip(outs, exact)] == pytest.approx(errs, rel=1e-3, abs=2e-5)


@pytest.fixture(scope="module")
def flux():
    model = _flux()
    exact = {k[:2]: _flux_loop(model, *k[:2]) for k in GOLDEN}
    return model, exact


@pytest.mark.parametrize("key", list(GOLDEN))
def test_golden_flux_oracle(flux, key):
    model, exact = flux
    steps, drift, thr = key
    cfg = CacheConfig.parse(f"F1B0_W2_R{thr}_FoCa")
    ora = reference.EagerDBCache.single(model, cfg, BLOCKS, pattern=1)
    outs = _flux_loop(model, steps, drift)
    ora.remove()
    assert ora.cached_steps() == GOLDEN[key][0]
    _check_golden(outs, exact[(steps, drift)], key)


@pytest.mark.parametrize("key", list(GOLDEN))
def test_golden_flux_compiled(flux, key):
    """Compiled: equal to cache-dit and the oracle; one graph for both lengths and a second generation,
    0 graph breaks, no recompiles."""
    from torch._dynamo.utils import counters

    model, exact = flux
    steps, drift, thr = key
    torch._dynamo.reset()
    counters.clear()
    compiled = dit_cache_fx.compile(model, cache=f"F1B0_W2_R{thr}_FoCa", fullgraph=True)
    first = _flux_loop(compiled, steps, drift)
    with torch._dynamo.config.patch(error_on_recompile=True):
        second = _flux_loop(compiled, steps, drift)  # a second generation: the stale stacks are not read
    assert dit_cache_fx.summary(compiled).cached_steps == GOLDEN[key][0]
    _check_golden(first, exact[(steps, drift)], key)
    assert max_rel_err(second, first) <= 1e-5
    assert len(handle(compiled).graphs) == 1 and len(counters["graph_break"]) == 0
    stacks = handle(compiled).store.states()[0].factors
    # [branch, F_k F_km1 F_full F_full_prev, *stream]; hidden only: the encoder's output is dead after the run
    assert [s.shape[:2] for s in stacks] == [(2, 4)]


@pytest.mark.parametrize("mode", ["dynamic", "regional"])
def test_dynamic_and_regional_match_oracle(flux, mode):
    model, exact = flux
    key = (12, 0.02, 0.9)
    torch._dynamo.reset()
    kwargs = dict(dynamic=True) if mode == "dynamic" else dict(regional=True)
    compiled = dit_cache_fx.compile(model, cache="F1B0_W2_R0.9_FoCa_ET0", fullgraph=True, **kwargs)
    with torch._dynamo.config.patch(error_on_recompile=mode == "regional"):
        outs = _flux_loop(compiled, 12, 0.02)
    assert dit_cache_fx.summary(compiled).cached_steps == GOLDEN[key][0]
    _check_golden(outs, exact[(12, 0.02)], key)  # ET0 = cache-dit's FoCa_ET0 here (the same numbers)
    assert handle(compiled).store.states()[0].factors[0].shape[1] == 4


def test_foca_with_separate_cfg_matches_oracle():
    """Two CFG branches, each with its own FoCa stack (the tiny models' loop with cond + uncond calls)."""
    from helpers import oracle_run
    from tiny_models import MODELS, run_loop

    m = MODELS["flux"]
    model = m.build()
    cfg = CacheConfig.parse("F1B0_W2MC3_R1.0_FoCa")
    refs, ora = oracle_run(model, m, cfg, steps=12, cfg=True)
    torch._dynamo.reset()
    compiled = dit_cache_fx.compile(model, cache=cfg, fullgraph=True)
    outs = run_loop(compiled, m, steps=12, cfg=True)
    s = dit_cache_fx.summary(compiled)
    assert s.cached_steps == ora.cached_steps() == [2, 3, 4, 6, 7, 8, 10, 11]
    assert max_rel_err(outs, refs) <= 1e-4
