"""Analysis only: cut a block run into Fn | Mn | Bn and describe the Mn region to rewrite.

The region is every node from the first Mn node to the last one. Its carried inputs are the streams
the last Fn block hands over; its outputs are paired with them so that `output - input` is the Mn
residual of each stream. Values computed inside the span that do not depend on the streams but are
read after it (a top-level embedding computed between blocks, say) are hoisted in front of it, so
they exist on cached steps too.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch.fx import GraphModule, Node

from .blocks import BlockRun, _sig, block_inputs, block_outputs, carried_entry, find_placeholder

TIMESTEP_NAMES = ("timestep", "timesteps")


class CachePlanError(ValueError):
    """The graph cannot be cut as asked (bad Fn/Bn for the run, unsupported dataflow)."""


@dataclass
class RegionPlan:
    run: BlockRun
    Fn: int
    Bn: int
    region: list[Node]  # Mn nodes, graph order
    hoist: list[Node]  # stream-independent nodes of the span read after it
    stream_in: list[Node]  # carried inputs with a paired output, stream order
    stream_out: list[Node]  # paired region outputs
    stream_names: list[str]  # "hidden" / "encoder"
    ext_in: list[Node]  # everything else the region reads
    fn_entry: Node  # hidden stream entering the run
    fn_out: Node  # hidden stream after the Fn blocks
    timestep: Node

    @property
    def Mn(self) -> int:
        return len(self.run.blocks) - self.Fn - self.Bn


def plan_region(gm: GraphModule, run: BlockRun, Fn: int, Bn: int, timestep_arg: str | None = None) -> RegionPlan:
    N = len(run.blocks)
    if Fn + Bn >= N:
        raise CachePlanError(
            f"Fn={Fn} + Bn={Bn} leaves no middle blocks to cache in {run.describe()}: need Fn + Bn < {N}")
    names = (timestep_arg,) if timestep_arg else TIMESTEP_NAMES
    timestep = find_placeholder(gm, names)
    if timestep is None:
        raise CachePlanError(
            f"no tensor input named {' or '.join(names)} in the traced graph; the cache needs the timestep to "
            "count steps: pass CacheConfig(timestep_arg=...) naming the model's timestep argument "
            "(and pass it as a tensor)")

    mn = run.blocks[Fn:N - Bn]
    first, last = mn[0].nodes[0], mn[-1].nodes[-1]
    span: list[Node] = []
    n = first
    while True:
        span.append(n)
        if n is last:
            break
        n = n.next
    span_set = set(span)

    last_fn = run.blocks[Fn - 1]
    fn_outs = set(block_outputs(last_fn))
    carried = [x for x in _inputs_of(span) if x in fn_outs]

    # stream dependence inside the span
    dep: set[Node] = set(carried)
    for x in span:
        if any(a in dep for a in x.all_input_nodes):
            dep.add(x)
    used_after = [x for x in span if any(u not in span_set for u in x.users)]
    hoist_roots = [x for x in used_after if x not in dep]
    hoist = _with_span_ancestors(hoist_roots, span_set)
    region = [x for x in span if x not in set(hoist)]
    region_set = set(region)
    outputs = [x for x in region if any(u not in region_set for u in x.users)]

    consumer = run.blocks[N - Bn] if Bn else None
    stream_in, stream_out = _pair(carried, outputs, run.blocks[Fn], consumer)
    unpaired = [o for o in outputs if o not in stream_out]
    if unpaired:
        raise CachePlanError(
            f"the middle blocks of {run.describe()} produce {[o.name for o in unpaired]} for later use, which "
            "is not a carried stream of the same shape as an input; this run cannot be cached as a residual")

    entry = carried_entry(run)
    h = run.streams.index("hidden") if "hidden" in run.streams else 0
    fn_entry = entry[h]
    fn_out = next((c for c in carried if _sig(c) == _sig(fn_entry)), None)
    if fn_out is None:
        raise CachePlanError(f"cannot find the hidden stream after the first {Fn} blocks of {run.describe()}")
    stream_names = ["hidden" if s is fn_out else "encoder" for s in stream_in]
    ext_in = [x for x in _inputs_of(region) if x not in set(stream_in)]
    return RegionPlan(run, Fn, Bn, region, hoist, stream_in, stream_out, stream_names, ext_in, fn_entry, fn_out,
                      timestep)


def _inputs_of(nodes: list[Node]) -> list[Node]:
    inside = set(nodes)
    out: dict[Node, None] = {}
    for n in nodes:
        for a in n.all_input_nodes:
            if a not in inside:
                out.setdefault(a, None)
    return list(out)


def _with_span_ancestors(roots: list[Node], span: set[Node]) -> list[Node]:
    keep: set[Node] = set()
    todo = list(roots)
    while todo:
        x = todo.pop()
        if x in keep or x not in span:
            continue
        keep.add(x)
        todo.extend(x.all_input_nodes)
    return [x for x in _ordered(span) if x in keep]


def _ordered(nodes: set[Node]) -> list[Node]:
    if not nodes:
        return []
    graph = next(iter(nodes)).graph
    return [n for n in graph.nodes if n in nodes]


def _pair(ins: list[Node], outs: list[Node], first_mn, consumer) -> tuple[list[Node], list[Node]]:
    """Pair carried inputs with region outputs by (shape, dtype); ties in slot order."""
    ins_order = block_inputs(first_mn)
    ins = sorted(ins, key=lambda n: ins_order.index(n) if n in ins_order else len(ins_order))
    if consumer is not None:
        c_order = block_inputs(consumer)
        outs = sorted(outs, key=lambda n: c_order.index(n) if n in c_order else len(c_order))
    pairs_in, pairs_out, used = [], [], set()
    for i in ins:
        o = next((o for o in outs if o not in used and _sig(o) == _sig(i)), None)
        if o is not None:
            used.add(o)
            pairs_in.append(i)
            pairs_out.append(o)
    return pairs_in, pairs_out
