"""Analysis only: cut a block run into Fn | Mn | Bn and describe the Mn region to rewrite.

The region is every node from the first Mn node to the last one. It reads the streams entering the first
Mn block and hands on the streams leaving the last one, so `out − in` is the Mn residual of each stream
(paired by the run's stream tracing, `blocks.Stream`; equal shapes are only checked). Values computed
inside the span that do not depend on the streams but are read after it (an embedding computed between
blocks, say) are hoisted in front of it, so they exist on cached steps too.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch.fx import GraphModule, Node

from .. import _compat
from ..config import CacheConfig
from ..errors import CachePlanError
from .blocks import BlockRun
from .graph_utils import inputs_of, ordered, same_sig, value_sig


@dataclass(frozen=True)
class StreamPlan:
    """A stream cached by the region: `region_out − region_in` is its Mn residual."""

    name: str
    region_in: Node
    region_out: Node
    order: int  # TaylorSeer order (0: the plain residual)


class Split:
    """Fn | Mn | Bn of a plan over `run` under `config`."""

    run: BlockRun
    config: CacheConfig

    @property
    def Fn(self) -> int:
        return self.config.Fn_compute_blocks

    @property
    def Bn(self) -> int:
        return self.config.Bn_compute_blocks

    @property
    def Mn(self) -> int:
        return len(self.run.blocks) - self.Fn - self.Bn


@dataclass(frozen=True)
class RegionPlan(Split):
    name: str  # the run's (or run part's) name, e.g. "single_transformer_blocks[0:38]"
    run: BlockRun
    config: CacheConfig
    nodes: tuple[Node, ...]  # the Mn region, graph order
    hoist: tuple[Node, ...]  # stream-independent nodes of the span read after it
    streams: tuple[StreamPlan, ...]
    ext_in: tuple[Node, ...]  # everything else the region reads
    fn_entry: Node  # hidden stream entering the run
    fn_out: Node  # hidden stream after the Fn blocks

    def split_text(self) -> str:
        names = [b.path for b in self.run.blocks]
        part = lambda lo, hi: f"[{names[lo]}..{names[hi - 1]}]" if hi > lo else ""  # noqa: E731
        N, Fn, Bn = len(names), self.Fn, self.Bn
        return (f"Fn={Fn} {part(0, Fn)} | Mn={self.Mn} {part(Fn, N - Bn)} | Bn={Bn} {part(N - Bn, N)}".rstrip()
                + f"; streams cached: {', '.join(s.name for s in self.streams)}")


def plan_region(gm: GraphModule, run: BlockRun, config: CacheConfig) -> RegionPlan:
    """The region of `run` under `config`, or `CachePlanError` saying why it cannot be cut."""
    N, Fn, Bn = len(run.blocks), config.Fn_compute_blocks, config.Bn_compute_blocks
    if Fn + Bn >= N:
        raise CachePlanError(f"Fn={Fn} + Bn={Bn} leaves no middle blocks to cache in {run.describe()}: "
                             f"need Fn + Bn < {N}")
    mn = run.blocks[Fn:N - Bn]
    span: list[Node] = []
    n = mn[0].nodes[0]
    while True:
        span.append(n)
        if n is mn[-1].nodes[-1]:
            break
        n = n.next
    span_set = set(span)

    carried = {s.nodes[Fn]: s for s in run.streams if s.nodes[Fn] is not None}
    dep: set[Node] = set(carried)  # nodes of the span that depend on a stream
    for x in span:
        if any(a in dep for a in x.all_input_nodes):
            dep.add(x)
    used_after = [x for x in span if any(u not in span_set for u in x.users)]
    hoist = _with_span_ancestors([x for x in used_after if x not in dep], span_set, gm)
    hoist_set = set(hoist)
    region = [x for x in span if x not in hoist_set]
    region_set = set(region)
    outputs = [x for x in region if any(u not in region_set for u in x.users)]

    exits = {s.nodes[N - Bn]: s for s in run.streams if s.nodes[N - Bn] is not None}
    stray = [o for o in outputs if o not in exits]
    if stray:
        raise CachePlanError(
            f"the middle blocks of {run.describe()} produce {[o.name for o in stray]} for later use, which is not "
            "a carried stream; this run cannot be cached as a residual")
    streams = []
    for s in run.streams:
        x_in, x_out = s.nodes[Fn], s.nodes[N - Bn]
        if x_in is None or x_out is None or x_out not in outputs:
            continue
        if not same_sig(x_in, x_out):
            raise CachePlanError(f"stream {s.name} of {run.describe()} enters the middle blocks as {value_sig(x_in)} "
                                 f"but leaves as {value_sig(x_out)}: no residual to cache")
        unknown = _compat.data_dependent_sizes(value_sig(x_in)[0])
        if unknown:  # the state is sized on the host before the graph runs, when only the data knows these
            raise CachePlanError(
                f"stream {s.name} of {run.describe()} leaves the middle blocks with a data-dependent size "
                f"{value_sig(x_in)[0]} ({', '.join(unknown)}: e.g. tokens kept by boolean-mask indexing), so its "
                "residual cannot be stored across steps; a spec with Bn=0 caches this run when the model reads only "
                "the hidden stream after its last block")
        streams.append(StreamPlan(s.name, x_in, x_out, config.taylor_order_for(s.name)))
    if not streams:
        raise CachePlanError(f"no stream of {run.describe()} passes through its middle blocks")
    hidden = run.hidden
    fn_entry, fn_out = hidden.nodes[0], hidden.nodes[Fn]
    if fn_out is not None and not same_sig(fn_entry, fn_out):
        fn_entry = local_shard(run.blocks[0], fn_entry, fn_out) or fn_entry
    if fn_out is None or not same_sig(fn_entry, fn_out):
        raise CachePlanError(f"the hidden stream of {run.describe()} changes shape in the first {Fn} blocks: "
                             "no Fn residual to compare")
    ext_in = tuple(x for x in inputs_of(region) if x not in {s.region_in for s in streams})
    return RegionPlan(run.name, run, config, tuple(region), tuple(hoist), tuple(streams), ext_in, fn_entry, fn_out)


_SHARD_OPS = {operator.getitem, torch.chunk, torch.split, torch.narrow, "chunk", "split", "narrow", "contiguous",
              "clone", "tensor_split"}


def local_shard(block, entry: Node, like: Node) -> Node | None:
    """Inside `block`, the piece of `entry` shaped like `like`: under context parallelism a hook on the first
    block can split the sequence (Wan), so the Fn residual is taken against this rank's shard of the input."""
    for n in block.nodes:
        if not same_sig(n, like):
            continue
        cur = n
        while cur is not entry and cur.op in ("call_function", "call_method") and cur.target in _SHARD_OPS \
                and cur.args and isinstance(cur.args[0], Node):
            cur = cur.args[0]
        if cur is entry:
            return n
    return None


def _with_span_ancestors(roots: list[Node], span: set[Node], gm: GraphModule) -> list[Node]:
    keep: set[Node] = set()
    todo = list(roots)
    while todo:
        x = todo.pop()
        if x in keep or x not in span:
            continue
        keep.add(x)
        todo.extend(x.all_input_nodes)
    return ordered(keep, gm.graph)
