"""Print cache-dit 1.5.3's own DBPrune decisions on the tiny models, the goldens of tests/test_dbprune.py.

Run with the venv that has cache-dit (never imported by the tests):

    /work/venv-cachedit/bin/python tests/dbprune_golden.py

Per case: the blocks pruned at each call (block indices of the run; the CFG branch's calls after '|'),
cache-dit's cached (pruned) steps, `pruned_blocks` per call and `pruned_ratio`.
"""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

import cache_dit  # noqa: E402
from cache_dit import DBPruneConfig, FoCaCalibratorConfig, TaylorSeerCalibratorConfig  # noqa: E402

from tiny_models import MODELS, run_loop  # noqa: E402

# (name, model, steps, cfg, DBPruneConfig kwargs)
CASES = [
    ("flux_r", "flux", 8, False, dict(Fn_compute_blocks=1, Bn_compute_blocks=0, max_warmup_steps=2,
                                      residual_diff_threshold=0.1185)),
    ("flux_dyn", "flux", 8, False, dict(Fn_compute_blocks=1, Bn_compute_blocks=0, max_warmup_steps=2,
                                        residual_diff_threshold=0.1, enable_dynamic_prune_threshold=True)),
    ("flux_np_mc", "flux", 10, False, dict(Fn_compute_blocks=1, Bn_compute_blocks=1, max_warmup_steps=2,
                                           residual_diff_threshold=0.16, max_continuous_cached_steps=1,
                                           non_prune_block_ids=[3])),
    ("flux_m", "flux", 10, False, dict(Fn_compute_blocks=2, Bn_compute_blocks=0, max_warmup_steps=1,
                                       residual_diff_threshold=0.2, max_cached_steps=3)),
    ("wan_cfg", "wan", 8, True, dict(Fn_compute_blocks=1, Bn_compute_blocks=0, max_warmup_steps=2,
                                     residual_diff_threshold=0.12, enable_separate_cfg=True,
                                     enable_dynamic_prune_threshold=True, max_dynamic_prune_threshold=0.2)),
    # with a calibrator: each pruned block's residuals forecast from that block's own computed steps
    ("flux_foca", "flux", 10, False, dict(Fn_compute_blocks=1, Bn_compute_blocks=0, max_warmup_steps=2,
                                          residual_diff_threshold=0.16, calibrator=FoCaCalibratorConfig())),
    ("flux_taylor", "flux", 10, False, dict(Fn_compute_blocks=1, Bn_compute_blocks=0, max_warmup_steps=2,
                                            residual_diff_threshold=0.16,
                                            calibrator=TaylorSeerCalibratorConfig(taylorseer_order=1))),
]


def run(name, key, steps, cfg, kwargs):
    m = MODELS[key]
    model = m.build()
    blocks = [b for n in m.blocks for b in model.get_submodule(n)]
    called: list[int] = []
    for j, b in enumerate(blocks):
        b.register_forward_pre_hook(lambda mod, a, j=j: called.append(j))
    calls: list[list[int]] = []
    model.register_forward_pre_hook(lambda mod, a: called.clear())
    model.register_forward_hook(lambda mod, a, o: calls.append([j for j in range(len(blocks)) if j not in called]))
    kwargs = dict(kwargs)
    calibrator = kwargs.pop("calibrator", None)
    cache_dit.enable_cache(model, cache_config=DBPruneConfig(**kwargs), calibrator_config=calibrator)
    outs = run_loop(model, m, steps=steps, cfg=cfg)
    stats = cache_dit.summary(model)[0]
    return dict(name=name, pruned=calls, cached_steps=stats.cached_steps, cfg_cached_steps=stats.cfg_cached_steps,
                pruned_blocks=stats.pruned_blocks, cfg_pruned_blocks=stats.cfg_pruned_blocks,
                pruned_ratio=stats.pruned_ratio, sums=[round(o.double().sum().item(), 4) for o in outs],
                diffs={k: [round(x, 5) for x in v] for k, v in stats.residual_diffs.items()})


if __name__ == "__main__":
    torch.set_num_threads(2)
    for case in CASES:
        if len(sys.argv) > 1 and case[0] not in sys.argv[1:]:
            continue
        print(json.dumps(run(*case)))
