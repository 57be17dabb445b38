"""The residual signal that drives the decision: relative L1 distance, as two partial sums.

    sums = l1_sums(prev, cur)          # [Σ|prev − cur|, Σ|prev|] over this process's elements
    sums = reduce_sums(sums, group)    # + the other ranks' sums (context parallel), in the graph
    diff = sums[0] / sums[1]           # = mean|prev − cur| / mean|prev| of the whole tensor

Summing before dividing gives every rank the diff of the full sequence, with even or uneven shards; the
reduction is the only place a collective enters the cache region.
"""

from __future__ import annotations

from torch import Tensor

from .. import _compat
from ..kernels import l1_sums
from .registry import in_graph


def reduce_sums(sums: Tensor, group: str | None) -> Tensor:
    """All-reduce (sum) `sums` over the process group named `group` (functional collective: traced into
    the graph, no host sync); identity without a group."""
    if group is None:
        return sums
    return _compat.all_reduce_sum(sums, group)


@in_graph
def residual_sums(prev: Tensor, cur: Tensor, group: str | None = None) -> Tensor:
    """[Σ|prev − cur|, Σ|prev|] (fp32) over the whole, possibly sharded, tensor. With `prev` finite (the
    stored anchor always is), the first sum is finite exactly when `cur` is, on every rank alike."""
    return reduce_sums(l1_sums(prev, cur), group)


@in_graph
def residual_diff(prev: Tensor, cur: Tensor, group: str | None = None) -> Tensor:
    """mean|prev − cur| / mean|prev| (0-dim fp32) over the whole, possibly sharded, tensor."""
    sums = residual_sums(prev, cur, group)
    return sums[0] / sums[1]
