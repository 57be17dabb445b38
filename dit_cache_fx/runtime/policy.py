"""The per-region cache decision, in the graph: twin of `reference.should_cache` / `update_counters`.

    counters = read_counters(state, branch, gen)          # this branch's, zeroed for a new generation
    diff     = diff.residual_diff(anchor, fn_residual)  # relative L1 vs the last computed step
    use_cache, consulted = should_cache(policy, counters, step, diff)
    restart  = restarts(fn sums, consulted, diff)       # non-finite Fn residual or diff: compute, restart
    counters = update_counters(counters, use_cache, step, order)   → written back with the anchor
    append_log(...)
    ... cond ...
    keep = settle(state, branch, restart, new stacks)   # non-finite stacks: restart too; never stored

All of it is tensor math on 0-dim tensors: nothing Dynamo could guard on, no host sync. The diff is
always computed (one fused reduction; a cond around it would cost a host sync of its own) and only
recorded where the policy consulted it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from .diff import reduce_sums, residual_sums
from .layout import COUNTERS, LOG_COLUMNS, RegionPolicy, StepContext
from .registry import in_graph


@dataclass
class Counters:
    """One branch's counters at this call (0-dim tensors)."""

    n_cached: Tensor
    n_cont: Tensor
    has_anchor: Tensor
    last_computed: Tensor
    n_valid: Tensor


class Decision(NamedTuple):
    """What `decide` hands the rest of the region (0-dim tensors)."""

    use_cache: Tensor  # bool: serve Mn from the cache
    branch: Tensor  # int64: the CFG branch whose state this call uses
    gap: Tensor  # fp32: steps since the branch's last computed step
    n_valid: Tensor  # int64: valid Taylor factors before this call
    restart: Tensor  # bool: the call restarts the region's stacks (for `settle`)


def at(x: Tensor, branch: Tensor) -> Tensor:
    """x[branch] for a 0-dim index tensor, without a host read of the index."""
    return x.index_select(0, branch.view(1)).squeeze(0)


def read_counters(state: dict[str, Tensor], branch: Tensor, gen: Tensor) -> Counters:
    """The branch's counters; all zero when they belong to another generation (or were never used)."""
    live = at(state["gen"], branch) == gen
    return Counters(**{name: torch.where(live, at(state[name], branch), torch.zeros_like(at(state[name], branch)))
                       for name in COUNTERS if name != "gen"})  # by name: the declared order is free


def should_cache(policy: RegionPolicy, c: Counters, step: Tensor, diff: Tensor) -> tuple[Tensor, Tensor]:
    """(use_cache, consulted) in cache-dit's order: warmup → mask → M → MC → threshold → anchor present."""
    in_warmup = (step < policy.warmup) & (torch.remainder(step, policy.interval) == 0)
    in_mask = step < policy.mask_len
    must_compute = in_mask & at(policy.mask, torch.clamp(step, max=policy.mask.shape[0] - 1))
    static_cache = ~in_warmup & in_mask & ~must_compute & policy.static & c.has_anchor  # fixed schedule
    consulted = (~in_warmup & ~must_compute & ~static_cache & c.has_anchor
                 & ~((policy.max_cached >= 0) & (c.n_cached >= policy.max_cached))
                 & ~((policy.max_cont >= 0) & (c.n_cont >= policy.max_cont))
                 & (policy.threshold > 0))
    use_cache = static_cache | (consulted & ((diff < policy.threshold) | (policy.threshold >= 1)))
    return use_cache, consulted


def restarts(fn_sum: Tensor, consulted: Tensor, diff: Tensor) -> Tensor:
    """Whether this call restarts the region's stacks: its Fn residual is not finite (`fn_sum` = Σ|anchor −
    residual|, finite exactly when the residual is), or the diff it consulted is not (0/0 of two all-zero
    residuals, x/0 of a zero anchor). Such a call computes and stores nothing it saw."""
    return ~torch.isfinite(fn_sum) | (consulted & ~torch.isfinite(diff))


def update_counters(c: Counters, use_cache: Tensor, step: Tensor, order: int) -> Counters:
    """Counters after this call; a computed step re-anchors and adds one valid Taylor factor."""
    cached = use_cache.to(torch.int64)
    return Counters(
        n_cached=c.n_cached + cached,
        n_cont=(c.n_cont + 1) * cached,
        has_anchor=c.has_anchor | ~use_cache,
        last_computed=torch.where(use_cache, c.last_computed, step),
        n_valid=torch.where(use_cache, c.n_valid, torch.clamp(c.n_valid + 1, max=order + 1)),
    )


def write_counters(state: dict[str, Tensor], branch: Tensor, gen: Tensor, c: Counters) -> None:
    index = branch.view(1)
    state["gen"].index_copy_(0, index, gen.view(1))
    for name in COUNTERS:
        if name != "gen":
            state[name].index_copy_(0, index, getattr(c, name).view(1).to(state[name].dtype))


def append_log(log: Tensor, log_pos: Tensor, ctx: StepContext, use_cache: Tensor, consulted: Tensor,
               diff: Tensor) -> None:
    """One row (`layout.LOG_COLUMNS`) into the ring buffer."""
    row = torch.stack([ctx.call.float(), ctx.gen.float(), ctx.step.float(), ctx.branch.float(), use_cache.float(),
                       consulted.float(), torch.where(consulted, diff.float(), torch.nan),
                       torch.zeros_like(diff, dtype=torch.float32)])  # nonfinite: written by `settle`
    log.index_copy_(0, torch.remainder(log_pos, log.shape[0]).view(1), row.view(1, -1))
    log_pos.add_(1)


@in_graph
def decide(ctx: dict[str, Tensor], policy: dict[str, Tensor], state: dict[str, Tensor], fn_entry: Tensor,
           fn_out: Tensor, order: int, group: str | None) -> Decision:
    """One region's bookkeeping for this call: whether Mn is served from the cache.

    Args:
        ctx, policy: the step context and the region's policy tensors (`layout`), read only.
        state: the region's counters, `anchor`, `log`, `log_pos` (updated in place).
        fn_entry, fn_out: the hidden stream before and after the Fn blocks.
        order: the hidden stream's TaylorSeer order. group: process group to sum the diff over, or None.

    Returns a `Decision`.
    """
    ctx_, policy_ = StepContext(**ctx), RegionPolicy(**policy)
    branch, step = ctx_.branch, ctx_.step
    c = read_counters(state, branch, ctx_.gen)
    fn_res = fn_out - fn_entry
    prev = at(state["anchor"], branch)
    sums = residual_sums(prev, fn_res, group)
    diff = sums[0] / sums[1]
    use_cache, consulted = should_cache(policy_, c, step, diff)
    restart = restarts(sums[0], consulted, diff)
    use_cache = use_cache & ~restart
    new = update_counters(c, use_cache, step, order)
    anchor = torch.where(use_cache, prev, torch.where(restart, torch.zeros_like(fn_res), fn_res))  # always finite
    state["anchor"].index_copy_(0, branch.view(1), anchor.unsqueeze(0).to(state["anchor"].dtype))
    write_counters(state, branch, ctx_.gen, new)
    append_log(state["log"], state["log_pos"], ctx_, use_cache, consulted, diff)
    return Decision(use_cache, branch, (step - c.last_computed).to(torch.float32), c.n_valid, restart)


@in_graph
def settle(state: dict[str, Tensor], branch: Tensor, restart: Tensor, stacks: list[Tensor],
           group: str | None) -> Tensor:
    """After the cond: whether the branch's new stacks (`stacks`, one per cached stream) may be stored.

    Not when `decide` restarted the region, nor when a stack is not finite (on any rank: a non-finite Mn
    residual, or an overflowing divided difference). Then the branch restarts: no anchor, no valid factors
    (`has_anchor`, `n_valid` in `state`, updated in place; the caller stores zeros), and the call's log row
    is marked `nonfinite`. Returns keep: bool[]."""
    bad = torch.stack([~torch.isfinite(s).all() for s in stacks]).any() if stacks else torch.zeros_like(restart)
    if group is not None:
        bad = reduce_sums(bad.float().view(1), group)[0] > 0
    bad = bad | restart
    keep = ~bad
    index = branch.view(1)
    state["has_anchor"].index_copy_(0, index, (at(state["has_anchor"], branch) & keep).view(1))
    state["n_valid"].index_copy_(0, index, torch.where(keep, at(state["n_valid"], branch), 0).view(1))
    row = torch.remainder(state["log_pos"] - 1, state["log"].shape[0]).view(1)
    state["log"].select(1, LOG_COLUMNS.index("nonfinite")).index_copy_(0, row, bad.float().view(1))
    return keep
