"""Mutation (regional mode): outline every block into one call of its block code (`runtime.regional`).

Before (block 3 of a run, and a cond whose compute branch holds blocks 4-5; names shortened)::

    h4, e4 = <block 3 nodes>(h3, e3, temb, rope, w3)          # w3: the block's weights (graph inputs)
    r = cond(use_cache, r0_cached, r0_compute, (h4, e4, ..., temb, rope, w4, w5))

After::

    outs = torch.ops.dit_cache_fx.block([h3, e3, temb, rope], key=K, slots=[-1, -1, -1, -1, 17, 18, ...],
                                        path="transformer_blocks.3")
    h4, e4 = outs[0], outs[1]
    r = cond(use_cache, r0_cached, r0_compute, (h4, e4, ..., temb, rope))   # weights no longer operands

All blocks with the same code (up to renaming) and the same input shapes, dtypes and strides get the same
`K`, so one compilation serves them; a block whose code is another's with some outputs unused (the last
block of a list, whose second stream nobody reads) reuses that code and reads the outputs it needs, as
regional compilation of the block class would. Inputs that are graph inputs (the weights) are passed by
slot (`runtime.regional`). Outputs that are views of each other or of an input, or not contiguous (Flux's
single blocks return two slices of one tensor), are cloned inside the block: a custom op's outputs must
not alias, and the next block then sees the same strides as this one did. Blocks with a non-tensor input
or a symbolic size anywhere (`dynamic=True`, data-dependent masks) stay inline. Run after the cache rewrite.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch.fx import Graph, GraphModule, Node

from .. import _compat
from ..runtime import regional
from .blocks import Block, find_blocks, node_block
from .graph_utils import value_of


@dataclass
class _Site:
    """One block to outline: where it is, what it reads, which inputs come by slot."""

    gm: GraphModule
    block: Block
    slots: Mapping[Node, int]
    raw: GraphModule
    values: list
    out_values: list
    inputs: tuple[str, ...]  # shape, dtype, strides and device of each input as the block code will see it


class Outlined(NamedTuple):
    outlined: int  # blocks now calls of their block code
    inline: int  # blocks left as they were (a non-tensor input, symbolic or data-dependent sizes)
    codes: Mapping = {}  # key -> code of the block codes the graph calls (`regional.BLOCKS`; `regional.own` them)


def outline_graph(gm: GraphModule, slots: Mapping[Node, int], options: Mapping | None = None) -> Outlined:
    """Outline the blocks of `gm` and of its conds' branches, then drop the cond operands no branch reads
    any more; `slots` maps the graph inputs to their positions, `options` is the inductor config the block
    code compiles with (part of its key). Returns how many blocks were outlined and how many stayed inline.

    An input the graph mutates in place is not read by slot: the compiled graph applies input mutations
    at its end, so a slot would see the old value."""
    slots = {p: i for p, i in slots.items() if not _mutated(p)}
    conds = [n for n in gm.graph.nodes if n.target is torch.ops.higher_order.cond]
    sites = _sites(gm, slots, set())
    produced = {o for site in sites for o in site.block.outputs}  # become the op's fresh row-major outputs
    graphs = [gm]
    for cond in conds:
        for attr in cond.args[1:3]:
            branch = getattr(gm, attr.target)
            phs = [p for p in branch.graph.nodes if p.op == "placeholder"]
            fed = {p for p, o in zip(phs, cond.args[3]) if o in produced}
            sites += _sites(branch, {p: slots[o] for p, o in zip(phs, cond.args[3]) if o in slots}, fed)
            graphs.append(branch)
    config = tuple(sorted((options or {}).items()))
    codes = {}  # codes with more outputs first, so that blocks with fewer can reuse them
    for site in sorted(sites, key=lambda s: -len(s.out_values)):
        codes[id(site)] = _code_for(site, config)
    for site in sites:
        _replace(site, *codes[id(site)])
    for g in graphs:
        g.graph.lint()
        g.recompile()
    for cond in conds:
        prune_cond_operands(gm, cond)
    if sites:
        gm.graph.lint()
        gm.recompile()
    inline = {b[0] for g in graphs for n in g.graph.nodes if n.op.startswith("call") and (b := node_block(n))}
    return Outlined(len(sites), len(inline), {key: code for key, code, _ in codes.values()})


def _mutated(p: Node) -> bool:
    """Whether the graph writes to `p` or to a view of it in place."""
    v = value_of(p)
    if not isinstance(v, torch.Tensor):
        return False
    key, todo, seen = _compat.storage_key(v), [p], {p}
    while todo:
        n = todo.pop()
        for u in n.users:
            name = u.target if isinstance(u.target, str) else getattr(u.target, "__name__", "")
            if u.args and u.args[0] is n and (name.endswith("_") and not name.endswith("__") or name == "setitem"):
                return True
            v = value_of(u)
            if u not in seen and isinstance(v, torch.Tensor) and _compat.storage_key(v) == key:
                seen.add(u)
                todo.append(u)
    return False


def _sites(gm: GraphModule, slots: Mapping[Node, int], fed: set[Node]) -> list[_Site]:
    """The blocks of `gm` that can be outlined (all inputs tensors); `fed`: inputs another block makes."""
    sites = []
    for block in find_blocks(gm):
        ins, outs = block.inputs, block.outputs
        values = [value_of(n) for n in ins]
        out_values = [value_of(o) for o in outs]
        if not outs or not all(isinstance(v, torch.Tensor) and _static(v) for v in values) \
                or insertion_point(gm.graph, block) is None:
            continue
        if not all(_concrete(value_of(n)) for n in block.nodes):  # symbolic outputs, data-dependent sizes inside
            continue
        produced = fed | {o for s in sites for o in s.block.outputs}
        lines = tuple(_input_line(i, v, n in produced) for i, (n, v) in enumerate(zip(ins, values)))
        sites.append(_Site(gm, block, slots, _extract(block.nodes, ins, outs), values, out_values, lines))
    return sites


def insertion_point(graph: Graph, block: Block) -> Node | None:
    """The block node to put the block's call before: the first one after all its inputs exist (glue may
    read a side input computed after the block's own nodes), provided nothing outside reads an output of the
    block before it; None if there is no such node."""
    order = {n: i for i, n in enumerate(graph.nodes)}
    last_in = max((order[n] for n in block.inputs), default=-1)
    at = next((n for n in block.nodes if order[n] > last_in), None)
    inside = set(block.nodes)
    if at is None or any(order[u] < order[at] for o in block.outputs for u in o.users if u not in inside):
        return None
    return at


def _replace(site: _Site, key: int, code: regional.BlockCode, picks: list[int]) -> None:
    """Replace the block's nodes by one call of `code` (key `key`), reading its outputs `picks`."""
    graph, block, slots = site.gm.graph, site.block, site.slots
    ins, outs = block.inputs, block.outputs
    with _compat.fake_mode_of(site.values):  # what the op returns: fresh row-major tensors
        results = [torch.empty(shape, dtype=dtype, device=device) for shape, dtype, device in code.outputs]
    tensors = [n for n in ins if n not in slots]
    where = [slots.get(n, -1) for n in ins]
    with graph.inserting_before(insertion_point(graph, block)):
        call = graph.call_function(torch.ops.dit_cache_fx.block.default, (tensors, key, where, block.path))
        call.meta["val"] = call.meta["example_value"] = results
        getitems = []
        for i in picks:
            g = graph.call_function(operator.getitem, (call, i))
            g.meta["val"] = g.meta["example_value"] = results[i]
            getitems.append(g)
    inside = set(block.nodes)
    for o, g in zip(outs, getitems):
        o.replace_all_uses_with(g, delete_user_cb=lambda u: u not in inside)
    for n in reversed(block.nodes):
        graph.erase_node(n)


def drop_unused_inputs(gm: GraphModule, n: int) -> list[int]:
    """Erase the unused tensor placeholders among the first `n` (the weights only the block code reads now);
    returns the positions of the placeholders kept. AOTAutograd reads each placeholder's own Dynamo source
    and static-input mark, so a graph with fewer inputs stays a Dynamo graph (as DDPOptimizer's pieces do)."""
    kept = []
    for i, p in enumerate([p for p in gm.graph.nodes if p.op == "placeholder"]):
        if i < n and not p.users and isinstance(value_of(p), torch.Tensor):
            gm.graph.erase_node(p)
        else:
            kept.append(i)
    gm.graph.lint()
    gm.recompile()
    return kept


def prune_cond_operands(gm: GraphModule, cond: Node) -> None:
    """Drop the operands of `cond` that neither branch reads (with their placeholders)."""
    branches = [getattr(gm, a.target) for a in cond.args[1:3]]
    phs = [[p for p in b.graph.nodes if p.op == "placeholder"] for b in branches]
    dead = [i for i in range(len(cond.args[3])) if all(not ps[i].users for ps in phs)]
    if not dead:
        return
    for b, ps in zip(branches, phs):
        for i in dead:
            b.graph.erase_node(ps[i])
        b.graph.lint()
        b.recompile()
    dead_set = set(dead)
    cond.args = (*cond.args[:3], tuple(o for i, o in enumerate(cond.args[3]) if i not in dead_set))


# ---------------------------------------------------------------------------------------------------------
# block code


def _code_for(site: _Site, options: tuple) -> tuple[int, regional.BlockCode, list[int]]:
    """The key and code that compute this block, and which of its outputs are the block's. The caller holds
    the code itself: its last owner may die (and the table drop it) before the new graph owns it."""
    raw, values, out_values, inputs = site.raw, site.values, site.out_values, site.inputs
    signature = "\n".join([*inputs, *_code_lines(raw)])
    for key, code in regional.codes():  # an existing code that computes these outputs and more
        if code.inputs == inputs and code.options == options and len(code.outputs) > len(out_values):
            picks = _subset_matching(code.raw, len(out_values), signature, inputs)
            if picks is not None:
                return key, code, picks
    gm = _contiguous_outputs(raw, values, out_values)
    outputs = tuple((tuple(v.shape), v.dtype, v.device) for v in out_values)
    code = regional.BlockCode(gm, raw, inputs, outputs, options)
    key, code = regional.register(f"{options}\n{signature}", code)
    return key, code, list(range(len(out_values)))


def _subset_matching(raw: GraphModule, k: int, signature: str, inputs: tuple[str, ...]) -> list[int] | None:
    """Indices of `k` outputs of `raw` whose dead-code-free graph has `signature` (all inputs still read)."""
    n_out = len(next(n for n in raw.graph.nodes if n.op == "output").args[0])
    for picks in itertools.combinations(range(n_out), k):
        g = Graph()
        out = g.graph_copy(raw.graph, {})
        g.output(tuple(out[i] for i in picks))
        g.eliminate_dead_code()
        if any(p.op == "placeholder" and not p.users for p in g.nodes):
            continue
        if "\n".join([*inputs, *_code_lines(GraphModule(torch.nn.Module(), g))]) == signature:
            return list(picks)
    return None


def _extract(nodes: tuple[Node, ...], ins: list[Node], outs: list[Node]) -> GraphModule:
    """The block's nodes as a GraphModule: `ins` → `outs`."""
    g = Graph()
    env = {}
    for i, n in enumerate(ins):
        env[n] = g.placeholder(f"in{i}")
        env[n].meta = {k: v for k, v in n.meta.items() if k in ("val", "example_value", "tensor_meta")}
    for n in nodes:
        env[n] = g.node_copy(n, lambda x: env[x])
    g.output(tuple(env[o] for o in outs))
    return GraphModule(torch.nn.Module(), g)


def _contiguous_outputs(raw: GraphModule, values: list, out_values: list) -> GraphModule:
    """`raw` with each output that is a view (of an input or of another output) or not row-major copied
    to a row-major tensor of its own."""
    g = Graph()
    outs = g.graph_copy(raw.graph, {})
    seen = {_compat.storage_key(v) for v in values}
    results = []
    for node, v in zip(outs, out_values):
        key = _compat.storage_key(v)
        if key in seen or not _row_major(v):
            node = g.call_method("clone", (node,), {"memory_format": torch.contiguous_format})
        seen.add(key)
        results.append(node)
    g.output(tuple(results))
    return GraphModule(torch.nn.Module(), g)


def _concrete(value) -> bool:
    """No symbolic size or scalar anywhere in a node's value (tensors, SymInts, tuples of them)."""
    for v in _compat.tree_leaves(value):
        if isinstance(v, (torch.SymInt, torch.SymFloat, torch.SymBool)) or (isinstance(v, torch.Tensor) and not _static(v)):
            return False
    return True


def _static(v: torch.Tensor) -> bool:
    return all(_compat.sym_expr(d) is None for d in (*v.shape, *v.stride()))


def _row_major(v: torch.Tensor) -> bool:
    """Strides exactly row-major (size-1 dimensions included, which `is_contiguous` ignores)."""
    stride, want = list(v.stride()), 1
    for size, st in zip(reversed(v.shape), reversed(stride)):
        if st != want:
            return False
        want *= size
    return True


def _input_line(i: int, v: torch.Tensor, row_major: bool) -> str:
    """An input's part of the code key: a quantized weight (a tensor subclass) is other code than a plain one."""
    stride = torch.empty(v.shape, device="meta").stride() if row_major else v.stride()
    kind = f":{type(v).__module__}.{type(v).__qualname__}" if _compat.is_traceable_subclass(v) else ""
    return f"in{i}:{tuple(v.shape)}:{v.dtype}:{tuple(stride)}:{v.device}{kind}"


def _code_lines(gm: GraphModule) -> list[str]:
    """The code up to renaming."""
    names: dict[str, str] = {}
    lines = []
    for n in gm.graph.nodes:
        names[n.name] = f"%{len(names)}"
        args = torch.fx.node.map_arg((n.args, n.kwargs), lambda a: names[a.name])
        lines.append(f"{names[n.name]}={n.op}:{getattr(n.target, '__qualname__', n.target)}{args}")
    return lines
