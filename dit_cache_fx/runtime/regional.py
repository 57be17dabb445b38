"""Regional mode: every distinct transformer block compiled once, and called from all its instances.

`passes/outline.py` replaces the nodes of each block — in the model's graph (Fn, Bn, uncached runs) and in
every cond's compute branch (Mn) — by one call of the opaque op

    torch.ops.dit_cache_fx.block(inputs: Tensor[], key: int, slots: int[], path: str) -> Tensor[]

`key` names the block's code (its graph, up to renaming, its inputs' shapes, dtypes and strides, and the
inductor config): the instances of one block class share one key, so inductor compiles each distinct block
once (on its first call). The outer graph — embeddings, the cache's decision and cond, the model's tail —
stays one Dynamo graph with no graph break; with every block outlined it runs as its FX code, uncompiled,
as regional compilation leaves the glue eager (`compile(..., outer="python")`), or compiled by inductor, the
block calls in its code (`outer="inductor"`, and always when a block had to stay inline), or first the one and
then the other, once a child process has compiled it (`outer="auto"`, the default: `background.py`).
Nothing fuses across a block boundary (the cost regional compilation always has); the cond still decides
in the graph.

`slots` says where each input of the code comes from: `-1` the next tensor of `inputs`, `i >= 0` the
outer graph's input `i` of the current call (`frames`). The blocks' weights are graph inputs that
Dynamo passes on every call; fetched by slot, they are not edges of the outer graph, so they are neither
cond operands nor arguments AOTAutograd and inductor trace through, and a model's hundreds of weights
cost the outer graph's compilation nothing. `path` names the block instance ("transformer_blocks.3"): with
diffusers group offloading (`offload.GroupOffload`) its groups are onloaded around the call, so the weights
the slots read are the onloaded ones.

`BLOCKS` is the process-wide table of block code, like inductor's own code cache: entries are immutable once
registered and shared by every compiled model with the same blocks. It is owned: each compiled module's
handle owns the codes its graphs call (`own`); `release(handle)` frees the compiled code only it calls, and
a code leaves the table when its last owner dies.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.fx import GraphModule

from .. import _compat
from ..errors import DitCacheError


@dataclass
class BlockCode:
    gm: GraphModule  # the block: its inputs → its outputs (torch IR, as Dynamo traced it)
    raw: GraphModule  # the same before its outputs were made contiguous (blocks are matched on it)
    inputs: tuple[str, ...]  # shape, dtype and strides of each input
    outputs: tuple[tuple[tuple[int, ...], torch.dtype, torch.device], ...]  # shape, dtype, device of each output
    options: tuple = ()  # the inductor config it compiles with (`mode=`, `options=` of `compile`), sorted items
    compiled: dict = field(default_factory=dict)  # inputs' (shape, strides) -> inductor's callable
    lock: threading.Lock = field(default_factory=threading.Lock)
    signature: str = ""  # its key in the table (set by `register`)

    def __call__(self, inputs: list[Tensor]) -> list[Tensor]:
        layout = tuple((x.shape, x.stride()) for x in inputs)  # compiled code assumes its inputs' strides
        fn = self.compiled.get(layout)
        if fn is None:
            with self.lock:
                fn = self.compiled.get(layout)
                if fn is None:  # no size asserts: the layout is the code's key, checked here
                    fn = _compat.compile_function(self.gm, inputs, {"size_asserts": False, **dict(self.options)})
                    self.compiled[layout] = fn
        return list(fn(*inputs))


BLOCKS: dict[int, BlockCode] = {}
_KEYS: dict[str, int] = {}
_OWNERS: dict[int, set[int]] = {}  # key -> ids of the handles whose graphs call it
_OWNED: dict[int, set[int]] = {}  # handle id -> its keys
_LOCK = threading.RLock()  # re-entrant: a finalizer may run while this thread holds it
_NEXT = itertools.count()
_FRAMES = threading.local()


def register(signature: str, code: BlockCode) -> tuple[int, BlockCode]:
    """The key and code of the block code with this signature (`code` registered on first sight)."""
    with _LOCK:
        key = _KEYS.get(signature)
        if key is None:
            key = _KEYS[signature] = next(_NEXT)
            BLOCKS[key] = code
            code.signature = signature
        return key, BLOCKS[key]


def own(owner: object, codes: Mapping[int, BlockCode]) -> None:
    """`owner` (a compiled module's handle) calls these block codes (key -> code): they live while some owner
    does. A code whose last owner died since the caller found it (the outlining of a new graph while an old
    model is collected) goes back into the table under its key."""
    with _LOCK:
        mine = _OWNED.get(id(owner))
        if mine is None:
            mine = _OWNED[id(owner)] = set()
            weakref.finalize(owner, _disown, id(owner))
        for key, code in codes.items():
            if BLOCKS.setdefault(key, code) is code:
                _KEYS.setdefault(code.signature, key)
            mine.add(key)
            _OWNERS.setdefault(key, set()).add(id(owner))


def release(owner: object) -> None:
    """Free the compiled code of the blocks only `owner` calls (recompiled on their next call)."""
    with _LOCK:
        for key in _OWNED.get(id(owner), ()):
            if _OWNERS.get(key) == {id(owner)} and key in BLOCKS:
                BLOCKS[key].compiled.clear()


def _disown(owner_id: int) -> None:
    """The owner died: drop the block codes no other owner calls."""
    with _LOCK:
        for key in _OWNED.pop(owner_id, ()):
            owners = _OWNERS.get(key, set())
            owners.discard(owner_id)
            if not owners:
                _OWNERS.pop(key, None)
                code = BLOCKS.pop(key, None)
                if code is not None and _KEYS.get(code.signature) == key:
                    del _KEYS[code.signature]


def codes() -> list[tuple[int, BlockCode]]:
    """A snapshot of the table (owners may die while a caller iterates)."""
    with _LOCK:
        return list(BLOCKS.items())


class Frame(NamedTuple):
    args: tuple  # the outer graph's inputs
    offload: Any  # the model's `offload.GroupOffload`, or None


def frames() -> list[Frame]:
    """The calling thread's stack of outer-graph calls in flight: a compiled outer graph runs between
    `frames().append(Frame(args, offload))` and its `pop()` — its inputs, which its block calls read by
    slot, and the model's group offloading, run around each block call."""
    stack = getattr(_FRAMES, "stack", None)
    if stack is None:
        stack = _FRAMES.stack = []
    return stack


def _frame() -> Frame:
    stack = getattr(_FRAMES, "stack", None)
    if not stack:
        raise DitCacheError("dit_cache_fx::block reads graph inputs by slot: call it from a compiled model")
    return stack[-1]


def _gather(args: tuple, inputs: list[Tensor], slots: list[int]) -> list[Tensor]:
    it = iter(inputs)
    return [next(it) if s < 0 else args[s] for s in slots]


def block(inputs: list[Tensor], key: int, slots: list[int], path: str) -> list[Tensor]:
    """Run the compiled code of block `key` on its inputs (compiling it on its first call)."""
    frame = _frame()
    if frame.offload is None:
        return BLOCKS[key](_gather(frame.args, inputs, slots))
    with frame.offload.around(path):  # the weights read by slot are onloaded first
        return BLOCKS[key](_gather(frame.args, inputs, slots))


def block_calls(gm: GraphModule) -> list[int]:
    """The block-code key of every `dit_cache_fx::block` call in `gm` and its subgraphs (cond branches)."""
    op = torch.ops.dit_cache_fx.block.default
    return [n.args[1] for m in gm.modules() if isinstance(m, GraphModule) for n in m.graph.nodes if n.target is op]


def output_specs(keys: Iterable[int]) -> dict[int, tuple]:
    """Each block code's outputs (shape, dtype, device): what a process compiling a graph that calls them needs
    (`background.py`; `adopt_output_specs` there)."""
    with _LOCK:
        return {k: BLOCKS[k].outputs for k in keys}


_ADOPTED: dict[int, tuple] = {}  # key -> outputs, of block codes another process holds


def adopt_output_specs(specs: dict[int, tuple]) -> None:
    """Let graphs that call these block codes (held by another process) trace here: their fake outputs."""
    _ADOPTED.update(specs)


def _block_fake(inputs: list[Tensor], key: int, slots: list[int], path: str) -> list[Tensor]:
    code = BLOCKS.get(key)
    outputs = code.outputs if code is not None else _ADOPTED[key]
    return [torch.empty(shape, dtype=dtype, device=device) for shape, dtype, device in outputs]


# A plain operator (not `torch.library.custom_op`, whose Python autograd and dispatch layers cost ~40 µs
# per block call): one kernel for every backend, no autograd (the graphs run without grad). Exact strides:
# an inductor-compiled outer graph passes each block the strides of its traced values, those its code was
# compiled for, not a layout of inductor's choosing.
_LIB = torch.library.Library("dit_cache_fx", "FRAGMENT")
_LIB.define("block(Tensor[] inputs, int key, int[] slots, str path) -> Tensor[]",
            tags=(torch.Tag.needs_exact_strides,))
_LIB.impl("block", block, "CompositeExplicitAutograd")
torch.library.register_fake("dit_cache_fx::block", _block_fake, lib=_LIB)
