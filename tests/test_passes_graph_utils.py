"""passes/graph_utils.py: the invariant check run after every mutating pass, and shape helpers."""

import pytest
import torch

from dit_cache_fx import _compat
from dit_cache_fx.passes.graph_utils import GraphCheckError, check_graph

from graphs import rewritten, toy_inputs
from toy import ToyDiT


def test_check_graph_catches_a_broken_rewrite():
    record = rewritten(ToyDiT(num_layers=5), "F1B1", *toy_inputs())
    gm = record.gm
    check_graph(gm, {"r0_compute": {"transformer_blocks.2"}})
    with pytest.raises(GraphCheckError, match="blocks .*transformer_blocks.0.* of region r0_compute have nodes outside"):
        check_graph(gm, {"r0_compute": {"transformer_blocks.0"}})
    with pytest.raises(GraphCheckError, match="expected one cond with compute branch r1_compute"):
        check_graph(gm, {"r1_compute": set()})
    cond = next(n for n in gm.graph.nodes if n.target is torch.ops.higher_order.cond)
    first = next(o for o in cond.args[3] if o.op != "placeholder")
    operands = list(cond.args[3])
    operands[operands.index(next(o for o in operands[1:] if o.op != "placeholder" and o is not first))] = first
    cond.args = (*cond.args[:3], tuple(operands))  # the same non-input value twice: aliasing operands
    with pytest.raises(GraphCheckError, match="share storage"):
        check_graph(gm)
    new = gm.graph.call_function(torch.relu, (first,))
    with pytest.raises(GraphCheckError, match="has no value meta"):
        check_graph(gm, new=[new])


def test_shapes_with_data_dependent_sizes_compare_without_guards():
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    from dit_cache_fx.passes.graph_utils import same_shape

    env = ShapeEnv()
    u0, u1 = env.create_unbacked_symint(), env.create_unbacked_symint()
    assert same_shape((1, u0, 4), (1, u0, 4)) and same_shape((2, 3), (2, 3))
    assert not same_shape((1, u0, 4), (1, u1, 4))  # not known equal: no guard, no error
    assert not same_shape((1, u0 + 1), (1, u0)) and not same_shape((1, 2), (1, 2, 3))
    assert env.guards == [] and _compat.data_dependent_sizes((1, u0 + u1, 4)) == sorted([str(u0), str(u1)])
