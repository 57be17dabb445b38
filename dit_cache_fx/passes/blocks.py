"""Analysis only: find runs of repeated transformer blocks in a Dynamo graph and their streams.

A node belongs to block `transformer_blocks.3` when that module is on its `nn_module_stack` (exact
path, outermost indexed entry). Blocks come out contiguous in graph order; a run is a sequence of
blocks where each block's outputs flow straight into the next block (no top-level node in between
touches them). Two block lists chain into one run when the streams pass directly from one to the
other (Flux: 19 double blocks then 38 single blocks).

Streams are the tensors carried from block to block: `hidden` (the one that descends from the model's
first input, the latents) and, for dual-stream blocks, `encoder`.

Nothing here edits the graph.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch.fx import GraphModule, Node

from .. import _compat

_INDEXED = re.compile(r"^(.*)\.(\d+)$")


@dataclass(frozen=True)
class Block:
    path: str  # e.g. "transformer_blocks.3"
    cls: type | None
    nodes: tuple[Node, ...]

    @property
    def container(self) -> str:
        return _INDEXED.match(self.path).group(1)

    @property
    def index(self) -> int:
        return int(_INDEXED.match(self.path).group(2))


@dataclass
class BlockRun:
    blocks: list[Block]
    streams: list[str] = field(default_factory=list)  # "hidden", "encoder", in slot order of block 0
    pattern: str = "?"

    @property
    def containers(self) -> list[str]:
        return list(dict.fromkeys(b.container for b in self.blocks))

    def describe(self) -> str:
        spans = []
        for c in self.containers:
            idx = [b.index for b in self.blocks if b.container == c]
            spans.append(f"{c}[{idx[0]}:{idx[-1] + 1}]")
        return f"{' + '.join(spans)} ({len(self.blocks)} blocks, streams={'+'.join(self.streams)}, {self.pattern})"


def normalize_path(source_path: str) -> str:
    """`L['self'].__dict__['_modules']['blocks'][3].attn` → `blocks.3.attn` (frame root dropped)."""
    p = re.sub(r"^[LG]\[['\"][^'\"]+['\"]\]", "", source_path)
    p = p.replace(".__dict__['_modules']", "").replace("._modules", "")
    p = re.sub(r"\[['\"]([^'\"]+)['\"]\]", r".\1", p)
    p = re.sub(r"\[(\d+)\]", r".\1", p)
    return p.lstrip(".")


def node_block(node: Node) -> tuple[str, type | None] | None:
    """The outermost indexed module (`<list>.<i>`) on the node's module stack, if any."""
    stack = node.meta.get("nn_module_stack") or {}
    for path, cls in stack.values():
        p = normalize_path(path)
        if _INDEXED.match(p):
            return p, cls
    return None


def find_blocks(gm: GraphModule) -> list[Block]:
    """Group graph nodes into blocks; stack-less nodes sandwiched inside one block join it."""
    body = [n for n in gm.graph.nodes if n.op not in ("placeholder", "output", "get_attr")]
    owner = [node_block(n) for n in body]
    # stack-less nodes (e.g. autocast enter/exit) between two nodes of the same block belong to it
    for i, o in enumerate(owner):
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
    return blocks


def block_inputs(block: Block) -> list[Node]:
    """Nodes outside the block that it reads, in order of first use."""
    inside = set(block.nodes)
    out: dict[Node, None] = {}
    for n in block.nodes:
        for a in n.all_input_nodes:
            if a not in inside:
                out.setdefault(a, None)
    return list(out)


def block_outputs(block: Block) -> list[Node]:
    """Nodes of the block read outside it, in graph order."""
    inside = set(block.nodes)
    return [n for n in block.nodes if any(u not in inside for u in n.users)]


def _flows_into(a: Block, b: Block) -> bool:
    """True when every output of `a` is read by `b` (or later), and no node between them reads one."""
    outs = block_outputs(a)
    b_in = set(block_inputs(b))
    if not outs or not any(o in b_in for o in outs):
        return False
    inside_b = set(b.nodes)
    a_end, b_start = a.nodes[-1], b.nodes[0]
    between: set[Node] = set()
    n = a_end.next
    while n is not b_start:
        between.add(n)
        n = n.next
    return not any(u in between for o in outs for u in o.users if u not in inside_b)


def find_runs(gm: GraphModule) -> list[BlockRun]:
    """Maximal chains of blocks whose streams flow from one block straight into the next.

    First each block list is cut into runs of consecutive blocks; then a run chains onto the previous
    one when every stream entering it comes straight out of the previous run's last block (Flux's
    single blocks continue the double blocks; HunyuanVideo's text refiner feeds only the encoder
    stream of the double blocks, so it stays a run of its own).
    """
    runs: list[list[Block]] = []
    for blk in find_blocks(gm):
        prev = runs[-1][-1] if runs else None
        if prev is not None and prev.container == blk.container and blk.index == prev.index + 1 \
                and _flows_into(prev, blk):
            runs[-1].append(blk)
        else:
            runs.append([blk])
    chained: list[list[Block]] = []
    for r in runs:
        if chained and _chains(chained[-1], r):
            chained[-1].extend(r)
        else:
            chained.append(r)
    result = [BlockRun(r) for r in chained if len(r) >= 2]
    for run in result:
        _annotate_streams(gm, run)
    return result


def _chains(a: list[Block], b: list[Block]) -> bool:
    if b[0].index != 0 or not _flows_into(a[-1], b[0]):
        return False
    outs = set(block_outputs(a[-1]))
    entry = carried_entry(BlockRun(b)) if len(b) >= 2 else [n for n in block_inputs(b[0]) if n in outs]
    return bool(entry) and all(n in outs for n in entry)


def main_run(runs: list[BlockRun]) -> BlockRun:
    """The run with the most blocks (first one on ties): the denoising trunk."""
    return max(runs, key=lambda r: len(r.blocks))


# ---------------------------------------------------------------------------------------------
# streams


def _val(n: Node):
    return n.meta.get("example_value", n.meta.get("val"))


def _sig(n: Node) -> tuple | None:
    v = _val(n)
    if not isinstance(v, torch.Tensor):
        return None
    return tuple(v.shape), v.dtype


def carried_entry(run: BlockRun) -> list[Node]:
    """Stream values entering the run's first block, in its input-slot order.

    Block 1 reads block 0's outputs at some input slots (order of first use); block 0 read its own
    streams at the same slots. This pairs by wiring, not by shape (LTX's RoPE has the hidden shape).
    """
    b0, b1 = run.blocks[0], run.blocks[1]
    ins0, ins1 = block_inputs(b0), block_inputs(b1)
    outs0 = set(block_outputs(b0))
    slots = [k for k, n in enumerate(ins1) if n in outs0]
    if len(ins0) == len(ins1) and b0.cls is b1.cls:
        return [ins0[k] for k in slots]
    # different block types: fall back to shape matching
    out_sigs = [_sig(ins1[k]) for k in slots]
    return [next(n for n in ins0 if _sig(n) == s) for s in out_sigs if any(_sig(n) == s for n in ins0)]


def _ancestors(n: Node) -> set[Node]:
    seen: set[Node] = set()
    todo = [n]
    while todo:
        x = todo.pop()
        for a in x.all_input_nodes:
            if a not in seen:
                seen.add(a)
                todo.append(a)
    return seen


def hidden_slot(gm: GraphModule, entry: list[Node], hidden_input: str | None) -> int:
    """Which entry stream is `hidden`: the one descending from the model's first input (the latents);
    failing that, the largest."""
    if hidden_input is not None:
        roots = [p for p in gm.graph.nodes if p.op == "placeholder" and _source_key(p) == hidden_input]
        hits = [k for k, n in enumerate(entry) if roots and roots[0] in _ancestors(n) | {n}]
        if len(hits) == 1:
            return hits[0]
    sizes = [(_val(n).numel() if isinstance(_val(n), torch.Tensor) else 0) for n in entry]
    return max(range(len(entry)), key=lambda k: (sizes[k], -k))


def _source_key(p: Node) -> str | None:
    name = _compat.dynamo_source_name(p)
    if name is None:
        return None
    keys = re.findall(r"\[['\"]([^'\"]+)['\"]\]", name)
    return keys[-1] if keys else name


def find_placeholder(gm: GraphModule, names: tuple[str, ...]) -> Node | None:
    for p in gm.graph.nodes:
        if p.op == "placeholder" and _source_key(p) in names:
            return p
    return None


def _annotate_streams(gm: GraphModule, run: BlockRun) -> None:
    entry = carried_entry(run)
    hidden_input = gm.meta.get("dit_cache_fx_hidden_input")
    h = hidden_slot(gm, entry, hidden_input) if entry else 0
    run.streams = ["hidden" if k == h else "encoder" for k in range(len(entry))]
    run.pattern = infer_pattern(run)


def infer_pattern(run: BlockRun) -> str:
    """cache-dit's ForwardPattern vocabulary, from the dataflow between blocks.

    1 carried stream → P3 (block(h) → h) or P2 when the blocks also read a constant encoder input;
    2 carried streams → P0 (returns h, e) or P1 (returns e, h), the order read from the block's
    `return` statement when its source is available (the graph itself has no tuple order).
    """
    if len(run.streams) <= 1:
        return "P2" if _reads_encoder_constant(run) else "P3"
    order = _return_order(run.blocks[0].cls)
    return {"he": "P0", "eh": "P1"}.get(order, "P0|P1")


def _reads_encoder_constant(run: BlockRun) -> bool:
    """Does a block read a constant (non-carried) value computed from the `encoder_hidden_states` input?"""
    b = run.blocks[len(run.blocks) // 2]
    carried = {o for blk in run.blocks for o in block_outputs(blk)}
    for n in block_inputs(b):
        if n in carried:
            continue
        if any(a.op == "placeholder" and _source_key(a) == "encoder_hidden_states" for a in _ancestors(n) | {n}):
            return True
    return False


def _return_order(cls: type | None) -> str:
    import inspect

    try:
        src = inspect.getsource(cls.forward)
    except (TypeError, OSError, AttributeError):
        return "?"
    rets = re.findall(r"return\s+\(?\s*(\w+)\s*,\s*(\w+)", src)
    if not rets:
        return "?"
    first = rets[-1][0]
    return "eh" if "encoder" in first or "context" in first or first.startswith(("txt", "text")) else "he"
