"""passes/outline.py: regional mode's outline of the blocks into shared block code."""

import torch

from dit_cache_fx import _compat
from dit_cache_fx.passes.graph_utils import check_graph, placeholders

from graphs import dynamo_graph, rewritten, toy_inputs
from toy import ToyDiT


def test_outline_keys_block_code_by_inductor_options():
    """Block code compiles with the model's inductor config (`mode=`, `options=`): the same block under other
    options is other code."""
    from dit_cache_fx.passes.outline import outline_graph
    from dit_cache_fx.runtime import regional

    keys = []
    for options in ({}, {"max_autotune": True}):
        gm = rewritten(ToyDiT(num_layers=4), "F1B1", *toy_inputs()).gm
        inputs = [p for p in placeholders(gm) if not p.name.startswith("dcf_")]
        assert outline_graph(gm, {p: i for i, p in enumerate(inputs)}, options)[:2] == (4, 0)
        keys.append({n.args[1] for g in (gm, gm.r0_compute) for n in g.graph.nodes
                     if n.target is torch.ops.dit_cache_fx.block.default})
    assert len(keys[0]) == len(keys[1]) == 1 and keys[0] != keys[1]
    assert regional.BLOCKS[keys[1].pop()].options == (("max_autotune", True),)


def test_outline_shares_code_and_takes_weights_by_slot():
    """Regional mode's outline on the rewritten toy graph: every block one `dit_cache_fx::block` call of one
    shared code, the weights passed by slot (not cond operands, then not graph inputs at all)."""
    from dit_cache_fx.passes.outline import drop_unused_inputs, outline_graph
    from dit_cache_fx.runtime import regional

    record = rewritten(ToyDiT(num_layers=5), "F1B1", *toy_inputs())
    gm = record.gm
    inputs = [p for p in placeholders(gm) if not p.name.startswith("dcf_")]
    weights = {p for p in inputs if "transformer_blocks" in (_compat.dynamo_source_name(p) or "")}
    assert weights and outline_graph(gm, {p: i for i, p in enumerate(inputs)})[:2] == (5, 0)  # outlined, inline
    calls = [n for g in (gm, gm.r0_compute) for n in g.graph.nodes if n.target is torch.ops.dit_cache_fx.block.default]
    assert len(calls) == 5 and len({n.args[1] for n in calls}) == 1
    code = regional.BLOCKS[calls[0].args[1]]
    for n in calls:  # each call: the stream and temb as tensors, the block's 4 weights by slot
        tensors, slots = n.args[0], n.args[2]
        assert len(tensors) == 2 and sorted(slots)[2:] == sorted(s for s in slots if s >= 0) and len(slots) == 6
        assert len(code.inputs) == len(slots)
    cond = next(n for n in gm.graph.nodes if n.target is torch.ops.higher_order.cond)
    assert not weights & set(cond.args[3])
    assert all(len([p for p in b.graph.nodes if p.op == "placeholder"]) == len(cond.args[3])
               for b in (gm.r0_compute, gm.r0_cached))
    kept = drop_unused_inputs(gm, len(inputs))
    assert not weights & set(placeholders(gm)) and len(kept) == len(placeholders(gm))
    check_graph(gm)


def test_an_input_written_in_place_is_not_read_by_slot():
    """The compiled graph applies input mutations at its end: such an input must reach a block as a tensor."""
    from dit_cache_fx.passes.outline import _mutated

    def f(x, w, b):
        w[0].add_(1.0)  # through a view
        return x * w + b

    gm = dynamo_graph(f, torch.ones(2, 2), torch.ones(2, 2), torch.ones(2))
    x, w, b = (next(p for p in placeholders(gm) if _compat.dynamo_source_name(p) == f"L['{k}']") for k in "xwb")
    assert _mutated(w) and not _mutated(x) and not _mutated(b)
