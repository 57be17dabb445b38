"""Regional mode: every distinct transformer block compiled once, and called from all its instances.

`passes/outline.py` replaces the nodes of each block — in the model's graph (Fn, Bn, uncached runs) and in
every cond's compute branch (Mn) — by one call of the opaque op

    torch.ops.dit_cache_fx.block(inputs: Tensor[], key: int) -> Tensor[]

`key` names the block's code (its graph, up to renaming, and its inputs' shapes, dtypes and strides): the
instances of one block class share one key, so inductor compiles each distinct block once (on its first
call), and the outer graph — embeddings, the cache's decision and cond, the model's tail — stays one small
compiled graph with no graph break. Nothing fuses across a block boundary (the cost regional compilation
always has); the cond still decides in the graph.

`BLOCKS` is the process-wide table of block code, like inductor's own code cache: entries are immutable once
registered and shared by every compiled model with the same blocks.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.fx import GraphModule

from .. import _compat


@dataclass
class BlockCode:
    gm: GraphModule  # the block: its inputs → its outputs (torch IR, as Dynamo traced it)
    outputs: tuple[tuple[tuple[int, ...], torch.dtype], ...]  # (shape, dtype) of each output
    compiled: object = None  # inductor's callable, made on the first call
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, inputs: list[Tensor]) -> list[Tensor]:
        if self.compiled is None:
            with self.lock:
                if self.compiled is None:
                    self.compiled = _compat.compile_function(self.gm, inputs)
        return list(self.compiled(*inputs))


BLOCKS: dict[int, BlockCode] = {}
_KEYS: dict[str, int] = {}


def register(signature: str, gm: GraphModule, outputs: tuple) -> int:
    """The key of the block code with this signature (registered on first sight)."""
    key = _KEYS.get(signature)
    if key is None:
        key = _KEYS[signature] = len(_KEYS)
        BLOCKS[key] = BlockCode(gm, outputs)
    return key


@torch.library.custom_op("dit_cache_fx::block", mutates_args=())
def block(inputs: list[Tensor], key: int) -> list[Tensor]:
    """Run the compiled code of block `key` on `inputs` (compiling it on its first call)."""
    return BLOCKS[key](inputs)


@block.register_fake
def _block_fake(inputs: list[Tensor], key: int) -> list[Tensor]:
    device = inputs[0].device
    return [torch.empty(shape, dtype=dtype, device=device) for shape, dtype in BLOCKS[key].outputs]
