"""Mutation (regional mode): outline every block into one call of its block code (`runtime.regional`).

Before (block 3 of a run; names shortened)::

    h4, e4 = <block 3 nodes>(h3, e3, temb, rope, params3)

After::

    outs = torch.ops.dit_cache_fx.block([h3, e3, temb, rope, *params3], key=K)
    h4, e4 = outs[0], outs[1]

All blocks with the same code (up to renaming) and the same input shapes, dtypes and strides get the same
`K`, so one compilation serves them. Outputs that are views of each other or of an input, or not contiguous
(Flux's single blocks return two slices of one tensor), are cloned inside the block: a custom op's outputs
must not alias, and the next block then sees the same strides as this one did. Blocks with a non-tensor input (a symbolic size under `dynamic=True`) stay inline. Run after the cache
rewrite, on the model's graph and on every cond compute branch.
"""

from __future__ import annotations

import operator

import torch
from torch.fx import Graph, GraphModule, Node

from .. import _compat
from ..runtime import regional
from .blocks import Block, find_blocks
from .graph_utils import value_of


def outline_blocks(gm: GraphModule) -> int:
    """Outline the blocks of `gm` in place; returns how many were outlined."""
    count = 0
    for block in find_blocks(gm):
        ins, outs = block.inputs, block.outputs
        values = [value_of(n) for n in ins]
        if not outs or not all(isinstance(v, torch.Tensor) for v in values):
            continue
        sub, copied = _extract(block, ins, outs)
        key = regional.register(_signature(sub, values), sub,
                                tuple((tuple(value_of(o).shape), value_of(o).dtype) for o in outs))
        # what the op returns: the outputs, those it copies now contiguous
        results = [torch.empty_like(value_of(o), memory_format=torch.contiguous_format) if c else value_of(o)
                   for o, c in zip(outs, copied)]
        with gm.graph.inserting_before(block.nodes[0]):
            call = gm.graph.call_function(torch.ops.dit_cache_fx.block.default, (list(ins), key))
            call.meta["val"] = call.meta["example_value"] = results
            getitems = []
            for i, v in enumerate(results):
                g = gm.graph.call_function(operator.getitem, (call, i))
                g.meta["val"] = g.meta["example_value"] = v
                getitems.append(g)
        inside = set(block.nodes)
        for o, g in zip(outs, getitems):
            o.replace_all_uses_with(g, delete_user_cb=lambda u, inside=inside: u not in inside)
        for n in reversed(block.nodes):
            gm.graph.erase_node(n)
        count += 1
    if count:
        gm.graph.lint()
        gm.recompile()
    return count


def _extract(block: Block, ins: list[Node], outs: list[Node]) -> tuple[GraphModule, list[bool]]:
    """The block as a GraphModule, and which outputs it copies."""
    g = Graph()
    env = {}
    for i, n in enumerate(ins):
        env[n] = g.placeholder(f"in{i}")
        env[n].meta = {k: v for k, v in n.meta.items() if k in ("val", "example_value", "tensor_meta")}
    for n in block.nodes:
        env[n] = g.node_copy(n, lambda x: env[x])
    seen = {_compat.storage_key(value_of(n)) for n in ins}
    results, copied = [], []
    for o in outs:
        key, v = _compat.storage_key(value_of(o)), value_of(o)
        node = env[o]
        copy = key in seen or not _row_major(v)  # a view: a copy of its own, row-major as the next input
        if copy:
            node = g.call_method("clone", (node,), {"memory_format": torch.contiguous_format})
        seen.add(key)
        results.append(node)
        copied.append(copy)
    g.output(tuple(results))
    return GraphModule(torch.nn.Module(), g), copied


def _row_major(v: torch.Tensor) -> bool:
    """Strides exactly row-major (size-1 dimensions included, which `is_contiguous` ignores)."""
    stride, want = list(v.stride()), 1
    for size, st in zip(reversed(v.shape), reversed(stride)):
        if st != want:
            return False
        want *= size
    return True


def _signature(gm: GraphModule, inputs: list) -> str:
    """The block's code up to renaming, with its inputs' shapes, dtypes and strides."""
    names: dict[str, str] = {}
    lines = [f"in{i}:{tuple(v.shape)}:{v.dtype}:{tuple(v.stride())}" for i, v in enumerate(inputs)]
    for n in gm.graph.nodes:
        names[n.name] = f"%{len(names)}"
        args = torch.fx.node.map_arg((n.args, n.kwargs), lambda a: names[a.name])
        lines.append(f"{names[n.name]}={n.op}:{getattr(n.target, '__qualname__', n.target)}{args}")
    return "\n".join(lines)
