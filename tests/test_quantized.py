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
