"""passes/rewrite.py: the Mn region as a torch.cond-guarded cache region."""

import torch

from dit_cache_fx.passes.blocks import node_block
from dit_cache_fx.passes.graph_utils import placeholders

from graphs import rewritten, toy_inputs
from toy import ToyDiT


def test_rewrite_structure_and_invariants():
    record = rewritten(ToyDiT(num_layers=5), "F1B1", *toy_inputs())
    gm = record.gm
    (region,) = record.regions
    assert region.plan.Mn == 3 and [s.name for s in region.plan.streams] == ["hidden"]
    conds = [n for n in gm.graph.nodes if n.target is torch.ops.higher_order.cond]
    assert len(conds) == 1 and conds[0].meta["val"][0].shape == (1 * 8 * 16,)  # flat; viewed back after the cond
    blocks = {node_block(n)[0] for n in gm.graph.nodes if n.op != "placeholder" and node_block(n)}
    assert blocks == {"transformer_blocks.0", "transformer_blocks.4"}
    assert {node_block(n)[0] for n in gm.r0_compute.graph.nodes if node_block(n)} == {
        f"transformer_blocks.{i}" for i in (1, 2, 3)}
    # state inputs in the declared order, after the model's own
    names = [p.name for p in placeholders(gm) if p.name.startswith("dcf_")]
    assert names[:2] == ["dcf_ctx_cfg_mode", "dcf_ctx_reset"] and names[-1] == "dcf_r0_st_log_pos"
    assert all("val" in p.meta for p in placeholders(gm) if p.name.startswith("dcf_"))
    # the new nodes carry no block's module stack
    decide = next(n for n in gm.graph.nodes if n.op == "call_function" and getattr(n.target, "__name__", "") == "decide")
    assert "nn_module_stack" not in decide.meta and "val" in decide.meta
