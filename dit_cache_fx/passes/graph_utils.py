"""Small read-only helpers over FX graphs, and the invariant check run after every rewrite."""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch.fx import GraphModule, Node

from .. import _compat

INDEXED = re.compile(r"^(.*)\.(\d+)$")  # `<list>.<i>`: a module of a block list


def node_block(node: Node) -> tuple[str, type | None] | None:
    """The outermost indexed module (`<list>.<i>`) on the node's module stack, if any."""
    stack = node.meta.get("nn_module_stack") or {}
    for path, cls in stack.values():
        p = _compat.module_path(path)
        if INDEXED.match(p):
            return p, cls
    return None


def value_of(node: Node):
    """The node's value meta (FakeTensor, SymInt, tuple, ...): Dynamo's `example_value`, else `val`."""
    meta = node.meta
    return meta["example_value"] if "example_value" in meta else meta.get("val")


def value_sig(node: Node) -> tuple | None:
    """(shape, dtype) of a tensor-valued node, else None."""
    v = value_of(node)
    if not isinstance(v, torch.Tensor):
        return None
    return tuple(v.shape), v.dtype


def same_shape(a: tuple, b: tuple) -> bool:
    """Two shapes known equal without adding a guard (see `_compat.known_equal`)."""
    return len(a) == len(b) and all(_compat.known_equal(x, y) for x, y in zip(a, b))


def same_sig(a: Node, b: Node) -> bool:
    """Both nodes are tensors of one dtype and of shapes known equal without a guard."""
    sa, sb = value_sig(a), value_sig(b)
    return sa is not None and sb is not None and sa[1] == sb[1] and same_shape(sa[0], sb[0])


def inputs_of(nodes: Iterable[Node]) -> list[Node]:
    """Nodes outside `nodes` that they read, in order of first use."""
    nodes = list(nodes)
    inside = set(nodes)
    out: dict[Node, None] = {}
    for n in nodes:
        for a in n.all_input_nodes:
            if a not in inside:
                out.setdefault(a, None)
    return list(out)


def outputs_of(nodes: Iterable[Node]) -> list[Node]:
    """Nodes of `nodes` read outside them, in graph order."""
    nodes = list(nodes)
    inside = set(nodes)
    return [n for n in nodes if any(u not in inside for u in n.users)]


def ancestors(node: Node) -> set[Node]:
    seen: set[Node] = set()
    todo = [node]
    while todo:
        x = todo.pop()
        for a in x.all_input_nodes:
            if a not in seen:
                seen.add(a)
                todo.append(a)
    return seen


def ordered(nodes: set[Node], graph: torch.fx.Graph) -> list[Node]:
    return [n for n in graph.nodes if n in nodes]


def placeholders(gm: GraphModule) -> list[Node]:
    return [n for n in gm.graph.nodes if n.op == "placeholder"]


def is_cond(node: Node) -> bool:
    return node.op == "call_function" and node.target is torch.ops.higher_order.cond


def branch_modules(gm: GraphModule, cond: Node) -> tuple[GraphModule, GraphModule]:
    """(true, false) branch GraphModules of a cond node."""
    return getattr(gm, cond.args[1].target), getattr(gm, cond.args[2].target)


class GraphCheckError(AssertionError):
    """A rewritten graph breaks one of the invariants of passes/README.md (a bug in the rewrite)."""


def check_graph(gm: GraphModule, regions: dict[str, set[str]] | None = None, new: Iterable[Node] = ()) -> None:
    """The rewrite's invariants (passes/README.md), raised as `GraphCheckError`:

    - `graph.lint()` passes, in the graph and in every cond branch;
    - every node of `new` (the nodes a pass created) has a value meta (`val`; None for a store);
    - cond operands are pairwise distinct in storage (no aliasing);
    - `regions` (cond branch attribute → the block paths of its Mn): each such cond exists exactly once,
      and no node outside its compute branch belongs to one of those blocks.
    """
    gm.graph.lint()
    for n in new:
        if n.op not in ("output", "get_attr") and not ({"val", "example_value"} & n.meta.keys()):
            raise GraphCheckError(f"node {n.name} ({n.target}) has no value meta")
    conds = [n for n in gm.graph.nodes if is_cond(n)]
    for c in conds:
        operands = [o for o in c.args[3] if isinstance(value_of(o), torch.Tensor)]
        seen: dict = {}
        for o in operands:
            if o.op == "placeholder":
                continue
            key = _compat.storage_key(value_of(o))
            if key in seen:
                raise GraphCheckError(f"operands {seen[key].name} and {o.name} of {c.name} share storage")
            seen[key] = o
        for branch in branch_modules(gm, c):
            branch.graph.lint()
    for attr, blocks in (regions or {}).items():
        mine = [c for c in conds if c.args[2].target == attr]
        if len(mine) != 1:
            raise GraphCheckError(f"expected one cond with compute branch {attr}, found {len(mine)}")
        stray = {node_block(n)[0] for n in gm.graph.nodes if n.op != "placeholder" and node_block(n)} & blocks
        if stray:
            raise GraphCheckError(f"blocks {sorted(stray)} of region {attr} have nodes outside its cond")

