"""Regional mode: each distinct block compiled once and called from every instance — in Fn, inside the cond's
Mn branch, in Bn — with the decision and the cond still in the graph: same outputs and cached steps as the
whole-graph mode and the oracle, 0 graph breaks, no recompiles."""

import collections

import pytest
import torch

import dit_cache_fx

from helpers import handle, max_rel_err, oracle_run
from tiny_models import MODELS, run_loop

STEPS = 8


def _block_calls(compiled) -> collections.Counter:
    """Outlined block calls per block-code key, over the graph and its cond compute branches."""
    calls = collections.Counter()
    for info in handle(compiled).graphs:
        gm = info.record.gm
        for g in [gm, *(getattr(gm, f"{r.rid}_compute") for r in info.record.regions)]:
            calls.update(n.args[1] for n in g.graph.nodes if n.target is torch.ops.dit_cache_fx.block.default)
    return calls


@pytest.mark.parametrize("name, distinct", [
    ("flux", 3),  # double blocks, single blocks, and the last single block (its encoder output is dead code)
    ("wan", 1),
])
def test_regional_matches_whole_graph_and_oracle(name, distinct):
    torch._dynamo.reset()
    m = MODELS[name]
    model = m.build()
    cfg = name == "wan"
    eager = run_loop(model, m, steps=STEPS, cfg=cfg)
    spec = dit_cache_fx.CacheConfig.parse("F1B1_W2MC2_R1.0")
    refs, ora = oracle_run(model, m, spec, steps=STEPS, cfg=cfg)

    compiled = dit_cache_fx.compile(model, cache=spec.replace(residual_diff_threshold=0.0), regional=True,
                                    fullgraph=True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        assert max_rel_err(run_loop(compiled, m, steps=STEPS, cfg=cfg), eager) <= 1e-5
        dit_cache_fx.configure(compiled, residual_diff_threshold=1.0)
        outs = run_loop(compiled, m, steps=STEPS, cfg=cfg)
    s = dit_cache_fx.summary(compiled)
    assert s.cached_steps == ora.cached_steps() and s.cached_steps
    assert max_rel_err(outs, refs) <= 1e-4
    calls = _block_calls(compiled)
    n_blocks = sum(len(model.get_submodule(lst)) for lst in m.blocks)
    assert sum(calls.values()) == n_blocks and len(calls) == distinct  # every block outlined, few compilations
    from torch._dynamo.utils import counters
    assert len(counters["graph_break"]) == 0 and len(handle(compiled).graphs) == 1
