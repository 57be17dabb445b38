"""Separate CFG on a real model: a pipeline-style loop with cond + uncond calls per step keeps two
independent cache states and equals the eager oracle; the compiled module stays a drop-in."""

import torch

import dit_cache_fx

from helpers import handle, max_rel_err, oracle_run, pick_threshold
from tiny_models import MODELS, run_loop


def test_separate_cfg_loop_matches_oracle():
    m = MODELS["wan"]
    model = m.build()
    base = dit_cache_fx.CacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=1, max_warmup_steps=2,
                                    max_continuous_cached_steps=3)
    thr = pick_threshold(model, m, base, cfg=True)
    cfg = base.replace(residual_diff_threshold=thr)
    refs, ora = oracle_run(model, m, cfg, cfg=True)
    assert ora.cached_steps(0) != ora.cached_steps(1) or ora.residual_diffs(0) != ora.residual_diffs(1)

    torch._dynamo.reset()
    compiled = dit_cache_fx.compile(model, cache=cfg, fullgraph=True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        outs = run_loop(compiled, m, steps=28, cfg=True)
    s = dit_cache_fx.summary(compiled)
    assert s.separate_cfg and s.num_steps == 28
    for b in (0, 1):
        assert s.branches[b].cached_steps == ora.cached_steps(b)
        assert s.branches[b].residual_diffs.keys() == ora.residual_diffs(b).keys()
    assert max_rel_err(outs, refs) <= 1e-4
    assert len(handle(compiled).graphs) == 1

    # drop-in: what a pipeline reads still reaches the model
    assert compiled.config is model.config
    assert compiled.dtype == model.dtype and compiled.device == model.device
