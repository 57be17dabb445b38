"""The eight required diffusers DiTs: threshold 0 equals the uncompiled model, a caching threshold
equals the eager oracle, and one compilation serves every generation and threshold."""

import pytest
import torch

import dit_cache_fx

from helpers import handle, max_rel_err, n_states, oracle_run, pick_threshold
from tiny_models import MODELS, run_loop

# (Fn, Bn) per model: both Bn = 0 (region feeds the output code) and Bn > 0 (region feeds a block)
SPLITS = {"flux": (1, 1), "sd3": (1, 0), "pixart": (1, 1), "dit": (2, 0), "qwenimage": (1, 0), "wan": (1, 1),
          "cogvideox": (1, 0), "hunyuanvideo": (1, 1)}
STEPS = 28


@pytest.mark.parametrize("name", list(MODELS))
def test_model_matches_eager_and_oracle(name):
    m = MODELS[name]
    model = m.build()
    Fn, Bn = SPLITS[name]
    base = dit_cache_fx.CacheConfig(Fn_compute_blocks=Fn, Bn_compute_blocks=Bn, max_warmup_steps=2,
                                    residual_diff_threshold=0.0)
    eager = run_loop(model, m, steps=STEPS)
    thr = pick_threshold(model, m, base)
    cached_cfg = base.replace(residual_diff_threshold=thr)
    oracle_outs, ora = oracle_run(model, m, cached_cfg)

    compiled = dit_cache_fx.compile(model, cache=base, fullgraph=True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        # generation 1: threshold 0 never caches and equals the uncompiled model
        outs = run_loop(compiled, m, steps=STEPS)
        assert max_rel_err(outs, eager) <= 1e-5
        s = dit_cache_fx.summary(compiled)
        assert s.num_steps == STEPS and s.cached_steps == [] and s.residual_diffs == {}

        # generations 2 and 3 at a caching threshold: same cached steps and outputs as the oracle
        dit_cache_fx.configure(compiled, cached_cfg)
        for _ in range(2):
            outs = run_loop(compiled, m, steps=STEPS)
            s = dit_cache_fx.summary(compiled)
            assert s.cached_steps == ora.cached_steps(0)
            assert 0 < len(s.cached_steps) < STEPS
            assert s.residual_diffs.keys() == ora.residual_diffs().keys()
            for k, d in ora.residual_diffs().items():
                assert s.residual_diffs[k] == pytest.approx(d, rel=1e-4)
            assert max_rel_err(outs, oracle_outs) <= 1e-4
        assert max_rel_err(outs, eager) > 1e-4  # caching really changed the output

    from torch._dynamo.utils import counters
    assert len(counters["graph_break"]) == 0
    assert counters["stats"]["unique_graphs"] == 1
    assert len(handle(compiled).graphs) == 1  # one backend compilation for everything above
    assert n_states(compiled) == 1
