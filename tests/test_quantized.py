"""torchao-quantized weights (tensor subclasses) in the default whole-graph mode: the cond carries their plain
inner tensors and each branch rebuilds them, so threshold 0 equals the quantized uncompiled model, a caching
threshold equals the eager oracle on the same quantized model, with 0 graph breaks and one graph."""

import pytest
import torch

import dit_cache_fx
from dit_cache_fx.passes.rewrite import subclass_spec

from helpers import handle, max_rel_err, oracle_run, pick_threshold
from tiny_models import MODELS, run_loop

torchao = pytest.importorskip("torchao")
from torchao.quantization import quantize_  # noqa: E402

STEPS = 8


def _configs() -> dict:
    import torchao.quantization as q

    out = {
        "int8_weight_only": q.Int8WeightOnlyConfig(set_inductor_config=False),
        "int8_dynamic_activation": q.Int8DynamicActivationInt8WeightConfig(set_inductor_config=False),
        # torchao's Int4WeightOnlyConfig needs CUDA kernels (mslk) for every packing format; on CPU int4
        # weights are IntxWeightOnlyConfig's (int4 values, per-group scales, unpacked to int8)
        "int4_weight_only": q.IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=q.PerGroup(16)),
        "float8_weight_only": q.Float8WeightOnlyConfig(set_inductor_config=False),
    }
    return out


CONFIGS = _configs()
# dynamic activation quantization rounds the activations to int8 bins, and inductor's fused rounding flips a
# few of them: plain torch.compile is ~1e-2 off the eager model too. There threshold 0 must equal plain
# torch.compile, and the eager oracle is matched at that tolerance.
TOL = {"int8_dynamic_activation": 3e-2}


def _quantized(name: str) -> torch.nn.Module:
    model = MODELS["flux"].build()
    quantize_(model, CONFIGS[name])
    return model


@pytest.mark.parametrize("name", list(CONFIGS))
def test_quantized_matches_eager_and_oracle(name):
    m = MODELS["flux"]
    model = _quantized(name)
    weight = model.single_transformer_blocks[1].attn.to_q.weight
    assert subclass_spec(weight) is not None  # really a tensor subclass
    base = dit_cache_fx.CacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=1, max_warmup_steps=2,
                                    residual_diff_threshold=0.0)
    eager = run_loop(model, m, steps=STEPS)
    thr = pick_threshold(model, m, base, steps=STEPS)
    cached_cfg = base.replace(residual_diff_threshold=thr)
    oracle_outs, ora = oracle_run(model, m, cached_cfg, steps=STEPS)

    compiled = dit_cache_fx.compile(model, cache=base, fullgraph=True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        outs = run_loop(compiled, m, steps=STEPS)
        assert max_rel_err(outs, eager) <= TOL.get(name, 1e-5)
        if name in TOL:
            plain = run_loop(torch.compile(model), m, steps=STEPS)
            assert max_rel_err(outs, plain) <= 1e-5
        assert dit_cache_fx.summary(compiled).cached_steps == []

        dit_cache_fx.configure(compiled, cached_cfg)
        outs = run_loop(compiled, m, steps=STEPS)
        s = dit_cache_fx.summary(compiled)
        assert s.cached_steps == ora.cached_steps(0) and 0 < len(s.cached_steps) < STEPS
        for k, d in ora.residual_diffs().items():
            assert s.residual_diffs[k] == pytest.approx(d, rel=TOL.get(name, 1e-4))
        assert max_rel_err(outs, oracle_outs) <= TOL.get(name, 1e-4)

    from torch._dynamo.utils import counters
    assert len(counters["graph_break"]) == 0
    assert len(handle(compiled).graphs) == 1
    assert len(handle(compiled).regions) == 1


class _Opaque(torch.Tensor):
    """A dispatch subclass without `__tensor_flatten__`: Dynamo cannot take it apart."""

    @staticmethod
    def __new__(cls, data):
        return torch.Tensor._make_wrapper_subclass(cls, data.shape, dtype=data.dtype, device=data.device)

    def __init__(self, data):
        self.inner = data

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        unwrap = lambda x: x.inner if isinstance(x, _Opaque) else x  # noqa: E731
        return func(*torch.utils._pytree.tree_map(unwrap, args), **torch.utils._pytree.tree_map(unwrap, kwargs or {}))


@pytest.mark.parametrize("regional", [False, True])
def test_untraceable_subclass_fails_in_compile(regional):
    model = MODELS["flux"].build()
    for block in model.single_transformer_blocks:
        w = block.attn.to_q.weight.detach()
        del block.attn.to_q.weight
        block.attn.to_q.weight = _Opaque(w)
    with pytest.raises(dit_cache_fx.UnsupportedWeightsError, match=r"regional=True.*__tensor_flatten__|"
                       r"__tensor_flatten__.*regional=True") as e:
        dit_cache_fx.compile(model, cache="F1B0", regional=regional)
    assert "single_transformer_blocks.0.attn.to_q.weight (_Opaque)" in str(e.value)
    assert isinstance(e.value, dit_cache_fx.DitCacheError)


def test_subclass_spec_round_trip():
    """The spec's leaves rebuild an equal subclass (what each cond branch does)."""
    from dit_cache_fx.passes.rewrite import _rebuilder

    lin = torch.nn.Sequential(torch.nn.Linear(32, 16))
    quantize_(lin, CONFIGS["int8_weight_only"])
    w = lin[0].weight
    spec = subclass_spec(w)
    leaves = []
    for path in spec.leaves():
        v = w
        for name in path:
            v = getattr(v, name)
        leaves.append(v)
    assert all(type(x) is torch.Tensor for x in leaves)
    rebuilt = _rebuilder(spec)(*leaves)
    assert type(rebuilt) is type(w)
    x = torch.randn(4, 32)
    assert torch.equal(torch.nn.functional.linear(x, rebuilt), torch.nn.functional.linear(x, w))


@pytest.mark.parametrize("mode", [{"regional": True}, {"dynamic": True}])
def test_quantized_regional_and_dynamic(mode):
    """The other compile modes with int8 weights: threshold 0 equals the quantized uncompiled model, and caches."""
    m = MODELS["flux"]
    model = _quantized("int8_weight_only")
    eager = run_loop(model, m, steps=STEPS)
    compiled = dit_cache_fx.compile(model, cache="F1B1_W2_R0", **mode)
    assert max_rel_err(run_loop(compiled, m, steps=STEPS), eager) <= 1e-5
    dit_cache_fx.configure(compiled, residual_diff_threshold=1.0)
    run_loop(compiled, m, steps=STEPS)
    assert dit_cache_fx.summary(compiled).cached_steps


def test_regional_code_of_quantized_blocks_is_not_reused_for_plain_ones():
    """Block code is keyed by its inputs' tensor subclass: the same model, quantized then plain, in one process."""
    m = MODELS["flux"]
    quantized = dit_cache_fx.compile(_quantized("int8_weight_only"), cache="F1B1_W2_R0", regional=True)
    run_loop(quantized, m, steps=2)
    plain = m.build()
    eager = run_loop(plain, m, steps=2)
    compiled = dit_cache_fx.compile(plain, cache="F1B1_W2_R0", regional=True)
    assert max_rel_err(run_loop(compiled, m, steps=2), eager) <= 1e-5
