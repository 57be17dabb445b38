"""Analysis only: find the runs of repeated transformer blocks in a Dynamo graph and the streams they carry.

A node belongs to block `transformer_blocks.3` when that module is on its `nn_module_stack` (exact
path, outermost indexed entry). Blocks come out contiguous in graph order. A run is a chain of blocks of
one block list where each block's outputs flow straight into the next one; two lists chain into one run
when the streams pass directly from one to the other (Flux: 19 double blocks then 38 single blocks).

Streams are the tensors carried from block to block, followed by wiring (never by shape alone):
- between two blocks of one class and the same code, block i+1 reads the stream at the same input slot as
  block i did;
- elsewhere (a change of block class, the run's exit) a block output continues the input it reaches
  through its residual path: adds, gating products, dtype casts, and slices of concatenations.
`hidden` is the stream that descends from the model's latents input; the others are `encoder` streams.

A candidate is rejected (with the reason) when it is not a transformer-block run: blocks of mixed classes
(an `nn.Sequential(Linear, SiLU, Linear)`), no stream carried from block to block, or streams that do not
depend on the latents (a text refiner, an embedding MLP).

Nothing here edits the graph.
"""

from __future__ import annotations

import operator
from collections.abc import Collection
from dataclasses import dataclass

import torch
from torch.fx import GraphModule, Node

from .. import _compat
from .graph_utils import (
    INDEXED,
    ancestors,
    inputs_of,
    node_block,
    outputs_of,
    same_shape,
    value_of,
    value_sig,
)


@dataclass(frozen=True)
class Block:
    path: str  # e.g. "transformer_blocks.3"
    cls: type | None
    nodes: tuple[Node, ...]  # the block's own nodes, then its glue
    glue: tuple[Node, ...] = ()  # the ops after it that put side inputs into its outputs (`glue_after`)

    @property
    def side_inputs(self) -> list[Node]:
        """Inputs only the glue reads (ControlNet samples): never a stream the block continues."""
        own = set(self.nodes) - set(self.glue)
        return [i for i in self.inputs if not any(u in own for u in i.users)]

    @property
    def container(self) -> str:
        return INDEXED.match(self.path).group(1)

    @property
    def index(self) -> int:
        return int(INDEXED.match(self.path).group(2))

    @property
    def inputs(self) -> list[Node]:
        return inputs_of(self.nodes)

    @property
    def outputs(self) -> list[Node]:
        return outputs_of(self.nodes)


@dataclass(frozen=True)
class Stream:
    """One carried tensor: `nodes[i]` enters block i; `nodes[-1]` leaves the run (None if nothing reads it)."""

    name: str  # "hidden", "encoder", "encoder1", ...
    nodes: tuple[Node | None, ...]


@dataclass(frozen=True)
class BlockRun:
    blocks: tuple[Block, ...]
    streams: tuple[Stream, ...]

    @property
    def lists(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(b.container for b in self.blocks))

    @property
    def hidden(self) -> Stream:
        return next(s for s in self.streams if s.name == "hidden")

    @property
    def name(self) -> str:
        """`transformer_blocks[0:19]+single_transformer_blocks[0:38]`: stable across graphs and shapes."""
        spans = []
        for c in self.lists:
            idx = [b.index for b in self.blocks if b.container == c]
            spans.append(f"{c}[{idx[0]}:{idx[-1] + 1}]")
        return "+".join(spans)

    def describe(self) -> str:
        return f"{self.name} ({len(self.blocks)} blocks, streams={'+'.join(s.name for s in self.streams)})"

    def split(self, lists: Collection[str]) -> BlockRun:
        """The part of the run made of the blocks of `lists` (contiguous), with the same streams."""
        keep = [i for i, b in enumerate(self.blocks) if b.container in lists]
        lo, hi = keep[0], keep[-1] + 1
        return BlockRun(self.blocks[lo:hi], tuple(Stream(s.name, s.nodes[lo:hi + 1]) for s in self.streams))


@dataclass(frozen=True)
class Rejected:
    """A chain of indexed modules that is not a run of transformer blocks."""

    name: str
    reason: str


# ---------------------------------------------------------------------------------------------------------
# blocks


def find_blocks(gm: GraphModule) -> list[Block]:
    """Group graph nodes into blocks; stack-less nodes sandwiched inside one block join it, and so does the
    glue right after a block (`glue_after`)."""
    body = [n for n in gm.graph.nodes if n.op not in ("placeholder", "output", "get_attr")]
    owner = [node_block(n) for n in body]
    for i, o in enumerate(owner):  # e.g. autocast enter/exit inside a block have no module stack
        if o is None:
            prev = next((owner[j] for j in range(i - 1, -1, -1) if owner[j] is not None), None)
            nxt = next((owner[j] for j in range(i + 1, len(owner)) if owner[j] is not None), None)
            if prev is not None and nxt is not None and prev[0] == nxt[0]:
                owner[i] = prev
    blocks: list[Block] = []
    seen: set[str] = set()
    i = 0
    while i < len(body):
        if owner[i] is None:
            i += 1
            continue
        path, cls = owner[i]
        j = i
        while j < len(body) and owner[j] is not None and owner[j][0] == path:
            j += 1
        if path in seen:  # the same block appears twice, not contiguous: not a plain block call
            blocks = [b for b in blocks if b.path != path]
        else:
            blocks.append(Block(path, cls, tuple(body[i:j])))
            seen.add(path)
        i = j
    return [_with_glue(b, blocks[k + 1].nodes[0] if k + 1 < len(blocks) else None) for k, b in enumerate(blocks)]


# ---------------------------------------------------------------------------------------------------------
# glue: ops between two blocks that put a side input into the stream (ControlNet samples, VACE hints)

_ADDS = {operator.add, operator.sub, torch.add, torch.sub, "add", "sub"}
_BY_CONSTANT = {operator.mul, operator.truediv, torch.mul, torch.div, "mul", "div"}
_KEEPS = {"clip", "clamp", torch.clip, torch.clamp, "contiguous", "to", "float", "half", "bfloat16", "type_as"}


def _glue_op(node: Node, stream: Node) -> bool:
    """`node` keeps `stream`'s shape and is a residual injection (stream ± a tensor that does not depend on
    it), a scaling by a constant, or an identity-keeping op (clip, cast)."""
    sig, ssig = value_sig(node), value_sig(stream)
    if node.op not in ("call_function", "call_method") or sig is None or ssig is None \
            or not same_shape(sig[0], ssig[0]):
        return False
    args = node.args
    if node.target in _KEEPS:
        return bool(args) and args[0] is stream
    others = [a for a in args[:2] if a is not stream]
    if node.target in _ADDS:
        return stream in args[:2] and len(others) == 1
    if node.target in _BY_CONSTANT:
        return args[:1] == (stream,) and len(others) == 1 and not isinstance(others[0], Node)
    return False


def glue_after(block_nodes: tuple[Node, ...], stop: Node | None) -> list[Node]:
    """The glue of a block: the ops after it (before `stop`, the next block's first node) that replace one
    of its outputs, each the only reader outside the block of the value it replaces (`_glue_op`); the
    semantics of cache-dit's ControlNet patches, which move the add into the block. Ops inside another
    (non-indexed) module, e.g. `norm_out`, are never glue."""
    inside = set(block_nodes)
    current = set(outputs_of(block_nodes))
    glue: list[Node] = []
    n = block_nodes[-1].next
    while n is not stop and n.op != "output":
        reads = [a for a in n.all_input_nodes if a in current]
        if len(reads) == 1 and node_block(n) is None and not _in_submodule(n) and _glue_op(n, reads[0]) \
                and all(u is n or u in inside for u in reads[0].users):
            glue.append(n)
            inside.add(n)
            current.discard(reads[0])
            current.add(n)
        n = n.next
    return glue


def _in_submodule(node: Node) -> bool:
    stack = node.meta.get("nn_module_stack") or {}
    return any(_compat.module_path(path) for path, _ in stack.values())


def _with_glue(block: Block, stop: Node | None) -> Block:
    glue = glue_after(block.nodes, stop)
    return Block(block.path, block.cls, block.nodes + tuple(glue), tuple(glue)) if glue else block


def flow_break(a: Block, b: Block) -> str | None:
    """Why the outputs of a do not flow straight into b (None when they do): b reads an output of a, every
    output of a is read by b or later, and no node between them reads one."""
    outs = a.outputs
    inside_b = set(b.nodes)
    between: set[Node] = set()
    n = a.nodes[-1].next
    while n is not b.nodes[0]:
        between.add(n)
        n = n.next
    for o in outs:
        for u in o.users:
            if u in between and u not in inside_b:
                return (f"node {u.name} ({_target_name(u)}) between {a.path} and {b.path} reads {a.path}'s output "
                        f"{o.name} and is not glue (an add of a side input, a scaling by a constant, a clip or "
                        "cast that is the output's only reader)")
    if not outs or not set(outs) & set(b.inputs):
        return f"{b.path} reads no output of {a.path}"
    return None


def _flows_into(a: Block, b: Block) -> bool:
    return flow_break(a, b) is None


def _target_name(node: Node) -> str:
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


# ---------------------------------------------------------------------------------------------------------
# streams: which input of a block does an output continue


_ELEMENTWISE = {operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul,
                torch.div, "add", "sub", "mul", "div", "add_", "mul_"}
_PASSTHROUGH = {"contiguous", "clone", "to", "float", "half", "bfloat16", "type_as", "type", torch.clone,
                "clip", "clamp", "clip_", "clamp_", torch.clip, torch.clamp}  # fp16 clipping keeps the value
_RESHAPES = {"view", "reshape", "view_as", "flatten", "unflatten", "squeeze", "unsqueeze", torch.reshape,
             torch.flatten, torch.unflatten, torch.squeeze, torch.unsqueeze}  # round trips keep the value


def _hint(x) -> int | None:
    """A concrete int for a size: an int, a SymInt's example hint, or a Node holding either."""
    return _compat.size_hint(value_of(x) if isinstance(x, Node) else x)


def _interval_size(node: Node, dim: int) -> int | None:
    v = value_of(node)
    return _hint(v.shape[dim]) if isinstance(v, torch.Tensor) and dim < v.dim() else None


def residual_source(out: Node, block_nodes: Collection[Node], candidates: Collection[Node]) -> Node | None:
    """The one `candidates` node (an input of the block) that `out` continues along its residual path
    (see module docstring), or None when the path reaches none or several. A path that reaches an input
    only through a slice of it (a context-parallel shard) counts when nothing else is reached."""
    inside = set(block_nodes)
    found: set[Node] = set()
    partial: set[Node] = set()  # reached through a slice: a shard of the input (a context-parallel split)
    todo: list[tuple[Node, tuple | None]] = [(out, None)]  # (node, (dim, start, stop) slice of it or None)
    seen: set = set()
    while todo:
        node, iv = todo.pop()
        if (node, iv) in seen:
            continue
        seen.add((node, iv))
        if node in candidates:
            size = _interval_size(node, iv[0]) if iv else None
            (found if iv is None or (iv[1] == 0 and iv[2] == size) else partial).add(node)
            continue
        if node not in inside or node.op not in ("call_function", "call_method"):
            continue
        target, args = node.target, node.args
        sig = value_sig(node)
        if target in _ELEMENTWISE and sig is not None:
            todo += [(a, iv) for a in args[:2] if isinstance(a, Node) and value_sig(a) is not None
                     and same_shape(value_sig(a)[0], sig[0])]
        elif target in _PASSTHROUGH and args and isinstance(args[0], Node):
            todo.append((args[0], iv))
        elif target in _RESHAPES and iv is None and args and isinstance(args[0], Node):
            todo.append((args[0], None))
        elif target is operator.getitem and isinstance(args[0], Node):
            todo += _through_getitem(node, args[0], args[1], iv)
        elif target in (torch.cat, torch.concat, "cat") and iv is not None:
            parts, dim = args[0], (args[1] if len(args) > 1 else node.kwargs.get("dim", 0))
            todo += _through_cat(parts, dim, sig, iv)
    if len(found) == 1:
        return next(iter(found))
    return next(iter(partial)) if not found and len(partial) == 1 else None


_SPLITS = {"split", "chunk", "split_with_sizes", torch.split, torch.chunk}


def _through_getitem(node: Node, src: Node, index, iv) -> list[tuple[Node, tuple | None]]:
    src_val = value_of(src)
    if isinstance(src_val, (tuple, list)):  # a piece of split / chunk
        if iv is not None or not isinstance(index, int) or src.target not in _SPLITS:
            return []
        base = src.args[0]
        dim = _norm_dim(src.kwargs.get("dim", src.args[2] if len(src.args) > 2 else 0), base)
        sizes = [_hint(p.shape[dim]) for p in src_val]
        if None in sizes:
            return []
        start = sum(sizes[:index])
        return [(base, (dim, start, start + sizes[index]))]
    if not isinstance(src_val, torch.Tensor) or iv is not None:
        return []
    idx = index if isinstance(index, tuple) else (index,)
    dims = [(d, s) for d, s in enumerate(idx) if not (isinstance(s, slice) and s == slice(None))]
    if any(s is Ellipsis or not isinstance(s, slice) for _, s in dims) or len(dims) > 1:
        return []
    if not dims:
        return [(src, None)]
    d, s = dims[0]
    size = _hint(src_val.shape[d])
    start = _hint(s.start) if s.start is not None else 0
    stop = _hint(s.stop) if s.stop is not None else size
    if None in (start, stop, size) or s.step not in (None, 1):
        return []
    start, stop = (start + size if start < 0 else start), min(stop + size if stop < 0 else stop, size)
    return [(src, (d, start, stop))]


def _through_cat(parts, dim, sig, iv) -> list[tuple[Node, tuple | None]]:
    d = dim % len(sig[0]) if sig else dim
    if iv[0] != d:
        return []
    offset = 0
    for p in parts:
        size = _interval_size(p, d)
        if size is None:
            return []
        if offset <= iv[1] and iv[2] <= offset + size:
            return [(p, (d, iv[1] - offset, iv[2] - offset))]
        offset += size
    return []


def _norm_dim(dim: int, node: Node) -> int:
    v = value_of(node)
    return dim % v.dim() if isinstance(v, torch.Tensor) else dim


def continued_input(block: Block, nxt: Block | None, out: Node, streams_in: list[Node]) -> Node | None:
    """Which of `streams_in` (inputs of `block`) the output `out` continues."""
    if nxt is not None and nxt.cls is block.cls and len(nxt.nodes) == len(block.nodes):  # the same code
        ins, ins_next = block.inputs, nxt.inputs
        if len(ins) == len(ins_next) and out in ins_next:
            src = ins[ins_next.index(out)]
            return src if src in streams_in else None
    return residual_source(out, block.nodes, streams_in)


def _same_position(prev: Block, prev_out: Node, block: Block) -> Node | None:
    """The node of `block` at the position `prev_out` has in `prev` (same class, same code)."""
    if prev.cls is not block.cls or len(prev.nodes) != len(block.nodes) or prev_out not in prev.nodes:
        return None
    node = block.nodes[prev.nodes.index(prev_out)]
    return node if node.target == prev_out.target and node in set(block.outputs) else None


# ---------------------------------------------------------------------------------------------------------
# runs


def _list_runs(blocks: list[Block]) -> tuple[list[list[Block]], list[Rejected]]:
    """Chains of consecutive blocks of one list; and, where two consecutive ones do not chain, why."""
    runs: list[list[Block]] = []
    breaks: list[Rejected] = []
    alternating: set[tuple[str, str]] = set()
    for blk in blocks:
        prev = runs[-1][-1] if runs else None
        if prev is not None and prev.container == blk.container and blk.index == prev.index + 1:
            why = flow_break(prev, blk)
            if why is None:
                runs[-1].append(blk)
                continue
            breaks.append(Rejected(f"{prev.path} -> {blk.path}", why))
        elif prev is not None and prev.container != blk.container and blk.index > 0 \
                and (prev.container, blk.container) not in alternating:  # A.i -> B.i -> A.i+1 (Latte)
            alternating |= {(prev.container, blk.container), (blk.container, prev.container)}
            breaks.append(Rejected(
                f"{prev.path} -> {blk.path}", f"the blocks of {prev.container} and {blk.container} alternate "
                "(e.g. spatial and temporal attention): a run is consecutive blocks of one list, or whole lists one "
                "after another, so interleaved lists form no run to cache"))
        runs.append([blk])
    return runs, breaks


def _carried(a: Block, b: Block) -> list[Node]:
    """The tensors `a` hands to `b` (a size both read — a SymInt computed once in `a` — is not a stream)."""
    b_in = set(b.inputs)
    return [o for o in a.outputs if o in b_in and isinstance(value_of(o), torch.Tensor)]


def _trace_streams(blocks: list[Block]) -> list[list[Node | None]] | str:
    """Per stream, the node entering each block and the one leaving the run; or why it cannot be done."""
    if len(blocks) < 2:
        return "a single block"
    entry_out = _carried(blocks[0], blocks[1])
    if not entry_out:
        return "no tensor is carried from block to block"
    side = set(blocks[0].side_inputs)
    ins0 = [i for i in blocks[0].inputs if i not in side]
    entries = [continued_input(blocks[0], blocks[1], o, ins0) for o in entry_out]
    if None in entries or len(set(entries)) != len(entries):
        return f"cannot tell which input of {blocks[0].path} each carried output continues"
    paths = [[e, o] for e, o in zip(entries, entry_out)]
    for i in range(1, len(blocks)):
        blk, nxt = blocks[i], blocks[i + 1] if i + 1 < len(blocks) else None
        current = [p[-1] for p in paths]
        step: dict[Node, Node] = {}
        if nxt is None:  # the run's exit: by the previous block of the same code, else by residual path
            for p in paths:
                out = _same_position(blocks[i - 1], p[-1], blk) if p[-1] is not None else None
                if out is not None:
                    step[p[-1]] = out
        for o in (_carried(blk, nxt) if nxt is not None else blk.outputs):
            if o in step.values():
                continue
            src = continued_input(blk, nxt, o, current)
            if src is None and nxt is None:
                continue  # an output of the last block that continues no stream (read by the model's tail)
            if src is None or src in step:
                return f"cannot tell which stream {blk.path} output {o.name} continues"
            step[src] = o
        if nxt is not None and len(step) != len(current):
            return f"{blk.path} does not hand every stream on to {nxt.path}"
        for p in paths:
            p.append(step.get(p[-1]))
    return paths


def _chains(a: list[Block], b: list[Block]) -> bool:
    """b continues a: b is a list starting at index 0 and every stream entering it comes straight out of
    a's last block."""
    if b[0].index != 0 or not _flows_into(a[-1], b[0]):
        return False
    outs = set(a[-1].outputs)
    entry = [n for n in b[0].inputs if n in outs]
    if len(b) >= 2:
        traced = _trace_streams(b)
        if isinstance(traced, str):
            return False
        entry = [p[0] for p in traced]
    return bool(entry) and all(n in outs for n in entry)


def _name_streams(paths: list[list[Node | None]], hidden_inputs: Collection[Node]) -> list[str] | None:
    """"hidden" for the stream that descends from the latents (or the largest, if the latents input is
    unknown), "encoder"... for the rest; None if no stream depends on the latents."""
    if hidden_inputs:
        hits = [k for k, p in enumerate(paths) if set(hidden_inputs) & (ancestors(p[0]) | {p[0]})]
        if not hits:
            return None
    else:
        hits = list(range(len(paths)))
    sizes = {k: (value_of(paths[k][0]).numel() if isinstance(value_of(paths[k][0]), torch.Tensor) else 0)
             for k in hits}
    h = max(hits, key=lambda k: (_hint(sizes[k]) or 0, -k))
    names, n_enc = [], 0
    for k in range(len(paths)):
        if k == h:
            names.append("hidden")
        else:
            names.append("encoder" if n_enc == 0 else f"encoder{n_enc}")
            n_enc += 1
    return names


def find_runs(gm: GraphModule, hidden_inputs: Collection[Node] = ()) -> tuple[list[BlockRun], list[Rejected]]:
    """The graph's runs of transformer blocks, and the chains of indexed modules that are not.

    Args:
        hidden_inputs: the placeholders of the model's latents input (its first argument); the stream
            descending from them is `hidden`. Empty: the largest carried stream is `hidden`.
    """
    chained: list[list[Block]] = []
    lists, breaks = _list_runs(find_blocks(gm))
    for r in lists:
        if chained and _chains(chained[-1], r):
            chained[-1].extend(r)
        else:
            chained.append(r)
    runs, rejected = [], list(breaks)
    for blocks in chained:
        name = BlockRun(tuple(blocks), ()).name
        if len(blocks) < 2:
            continue
        classes = {c: {b.cls for b in blocks if b.container == c} for c in dict.fromkeys(b.container for b in blocks)}
        mixed = [c for c, cls in classes.items() if len(cls) > 1]
        if mixed:
            rejected.append(Rejected(name, f"{mixed[0]} holds modules of several classes, not repeated blocks"))
            continue
        paths = _trace_streams(blocks)
        if isinstance(paths, str):
            rejected.append(Rejected(name, paths))
            continue
        names = _name_streams(paths, hidden_inputs)
        if names is None:
            rejected.append(Rejected(name, "its streams do not depend on the latents input (not the denoiser)"))
            continue
        runs.append(BlockRun(tuple(blocks), tuple(Stream(n, tuple(p)) for n, p in zip(names, paths))))
    return runs, rejected
