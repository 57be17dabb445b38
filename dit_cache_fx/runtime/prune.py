"""DBPrune's per-block decision, in the graph: twin of `reference.EagerDBPrune` (`_begin_call`,
`_decide_block`, `prune_threshold`, `should_prune`).

    begin_call(ctx, policy, state)                    # once per call, before the region's first block
    per prunable block j (slot p):
        prune, b, gap, n_valid, restart = decide_block(ctx, policy, state, p, h_in)   # rel-L1 vs its stored input
        f_k = pick(state.factors_k, b, p)                     # its residual stacks at its last computed step
        ... cond(prune, h_in + forecast(f_k, gap), block j; both return the new stacks, as DBCache's Mn) ...
        keep = settle_block(state, b, p, restart, [new f_k])  # non-finite: nothing of the block is kept
        store(state.factors_k, b, p, new f_k, keep)

All of it is tensor math on 0-dim tensors and in-place writes of the state (no host sync, nothing Dynamo
could guard on). The diff is always computed (one fused reduction) and recorded only where consulted.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..reference import PRUNE_DYN_DIFFS
from .diff import reduce_sums, residual_sums
from .layout import PRUNE_COUNTERS, PRUNE_LOG_COLUMNS, PrunePolicy, StepContext
from .policy import Decision, at
from .registry import in_graph

_COL = {name: i for i, name in enumerate(PRUNE_LOG_COLUMNS)}


def _slot(x: Tensor, slot: int) -> Tensor:
    return torch.full((1,), slot, dtype=torch.int64, device=x.device)


def _row(state: dict[str, Tensor]) -> Tensor:
    return torch.remainder(state["log_pos"] - 1, state["log"].shape[0]).view(1)


@in_graph
def begin_call(ctx: dict[str, Tensor], policy: dict[str, Tensor], state: dict[str, Tensor]) -> None:
    """cache-dit's `mark_step_begin` for the call's branch: counters of another generation start over (no
    stored block inputs), a step right after one with no pruned block breaks the streak, and the call's
    pruned count starts at 0; branch 0 starts the step's diff statistics; a log row is appended."""
    c = StepContext(**ctx)
    b, step, gen = c.branch, c.step, c.gen
    index = b.view(1)
    live = at(state["gen"], b) == gen
    n_cached = torch.where(live, at(state["n_cached"], b), 0)
    last = torch.where(live, at(state["last_cached"], b), -1)
    n_cont = torch.where(live & (last == step - 1), at(state["n_cont"], b), 0)
    for name, value in (("gen", gen), ("n_cached", n_cached), ("n_cont", n_cont), ("last_cached", last),
                        ("call_pruned", torch.zeros_like(gen))):
        state[name].index_copy_(0, index, value.view(1).to(state[name].dtype))
    has = state["has_input"]
    has.index_copy_(0, index, (at(has, b) & live).unsqueeze(0))
    n_valid = state["n_valid"]
    n_valid.index_copy_(0, index, torch.where(live, at(n_valid, b), 0).unsqueeze(0))
    cond = b == 0
    fresh = cond & ((state["dyn_gen"] != gen) | (state["dyn_step"] != step))
    state["dyn_n"].copy_(torch.where(fresh, 0, state["dyn_n"]))
    state["dyn_cnt"].copy_(torch.where(fresh, 0, state["dyn_cnt"]))
    state["dyn_sum"].copy_(torch.where(fresh, 0.0, state["dyn_sum"]))
    state["dyn_gen"].copy_(torch.where(cond, gen, state["dyn_gen"]))
    state["dyn_step"].copy_(torch.where(cond, step, state["dyn_step"]))
    log, pos = state["log"], state["log_pos"]
    zero = torch.zeros((), dtype=torch.float32, device=log.device)
    row = torch.stack([c.call.float(), gen.float(), step.float(), b.float(), zero, zero, zero])
    where = torch.remainder(pos, log.shape[0]).view(1)
    log.index_copy_(0, where, row.view(1, -1))
    state["log_diffs"].index_fill_(0, where, float("nan"))
    state["log_pruned"].index_fill_(0, where, False)
    pos.add_(1)


def prune_threshold(policy: PrunePolicy, state: dict[str, Tensor], gen: Tensor, step: Tensor) -> Tensor:
    """R, or with the dynamic threshold the mean of the step's earlier positive diffs (branch 0, the first 5)
    × relax ratio when that is below the cap (NaN: 2R), never below R (cache-dit's
    `PrunedContext.get_residual_diff_threshold`)."""
    thr = policy.threshold
    count = state["dyn_cnt"]
    valid = policy.dynamic & (state["dyn_gen"] == gen) & (state["dyn_step"] == step) & (count > 0)
    relaxed = state["dyn_sum"] / torch.clamp(count, min=1).float() * policy.relax
    cap = torch.where(torch.isnan(policy.max_dynamic), 2 * thr, policy.max_dynamic)
    return torch.where(valid & (relaxed < cap), torch.maximum(relaxed, thr), thr)


def should_prune(policy: PrunePolicy, counters: dict[str, Tensor], step: Tensor, has_input: Tensor,
                 thr: Tensor) -> tuple[Tensor, Tensor]:
    """(static prune, consulted) in cache-dit's `can_cache` order: warmup → mask → M → MC (the streak of
    earlier steps) → threshold > 0 → stored input present. A consulted block prunes when `thr >= 1` or its
    diff is below `thr`."""
    in_warmup = (step < policy.warmup) & (torch.remainder(step, policy.interval) == 0)
    in_mask = step < policy.mask_len
    must_compute = in_mask & at(policy.mask, torch.clamp(step, max=policy.mask.shape[0] - 1))
    static = ~in_warmup & in_mask & ~must_compute & policy.static & has_input
    before = counters["n_cont"] - (counters["call_pruned"] > 0).to(torch.int64)
    consulted = (~in_warmup & ~must_compute & ~static & has_input
                 & ~((policy.max_cached >= 0) & (counters["n_cached"] >= policy.max_cached))
                 & ~((policy.max_cont >= 0) & (before >= policy.max_cont))
                 & (thr > 0))
    return static, consulted


@in_graph
def decide_block(ctx: dict[str, Tensor], policy: dict[str, Tensor], state: dict[str, Tensor], slot: int,
                 h_in: Tensor, order: int, group: str | None) -> Decision:
    """Whether prunable block `slot` is pruned at this call; updates the counters, its stored input and
    counters, the step's diff statistics and the log in place. `order`: the region's valid calibrator order
    (`CacheConfig.valid_order`). Returns a `policy.Decision` for the block: its gap and valid factors before
    this call; `restart`: the block's input or consulted diff is not finite (it computes and keeps nothing,
    for `settle_block`)."""
    c, pol = StepContext(**ctx), PrunePolicy(**policy)
    b, step, gen = c.branch, c.step, c.gen
    index, p = b.view(1), _slot(b, slot)
    counters = {name: at(state[name], b) for name in PRUNE_COUNTERS}
    has = state["has_input"][index, p].squeeze(0)
    prev = state["inputs"][index, p].squeeze(0)
    thr = prune_threshold(pol, state, gen, step)
    static, consulted = should_prune(pol, counters, step, has, thr)
    sums = residual_sums(prev, h_in, group)
    diff = sums[0] / sums[1]
    always = thr >= 1
    # the stored input is finite, so sums[0] is finite exactly when h_in is (on every rank alike)
    restart = ~torch.isfinite(sums[0]) | (consulted & ~always & ~torch.isfinite(diff))
    prune = (static | (consulted & (always | (diff < thr)))) & ~restart
    value = torch.where(always, -1.0, diff)
    # the step's statistics for the dynamic threshold: branch 0's first 5 recorded diffs
    seen = consulted & (b == 0)
    add = seen & (state["dyn_n"] < PRUNE_DYN_DIFFS) & (value > 0)
    state["dyn_sum"].add_(torch.where(add, value, 0.0))
    state["dyn_cnt"].add_(add.to(torch.int64))
    state["dyn_n"].add_(seen.to(torch.int64))
    first = (prune & (counters["call_pruned"] == 0)).to(torch.int64)
    new = {"n_cached": counters["n_cached"] + first, "n_cont": counters["n_cont"] + first,
           "last_cached": torch.where(prune, step, counters["last_cached"]),
           "call_pruned": counters["call_pruned"] + prune.to(torch.int64)}
    for name, v in new.items():
        state[name].index_copy_(0, index, v.view(1))
    kept = torch.where(restart, torch.zeros_like(prev), h_in.to(prev.dtype))  # always finite
    state["inputs"].index_put_((index, p), torch.where(prune, prev, kept).unsqueeze(0))
    state["has_input"].index_put_((index, p), torch.where(prune, has, ~restart).view(1))
    last = state["last_computed"][index, p].squeeze(0)
    n_valid = state["n_valid"][index, p].squeeze(0)
    state["last_computed"].index_put_((index, p), torch.where(prune, last, step).view(1))
    state["n_valid"].index_put_((index, p), torch.where(prune, n_valid, torch.clamp(n_valid + 1, max=order + 1)).view(1))
    row = _row(state)
    log = state["log"]
    log.index_put_((row, _slot(log, _COL["pruned"])), new["call_pruned"].float().view(1))
    log.index_put_((row, _slot(log, _COL["consulted"])), consulted.float().view(1), accumulate=True)
    state["log_diffs"].index_put_((row, p), torch.where(consulted, value, torch.nan).float().view(1))
    state["log_pruned"].index_put_((row, p), prune.view(1))
    return Decision(prune, b, (step - last).to(torch.float32), n_valid, restart)


@in_graph
def settle_block(state: dict[str, Tensor], branch: Tensor, slot: int, restart: Tensor, stacks: list[Tensor],
                 group: str | None) -> Tensor:
    """After block `slot`'s cond: whether its new residual stacks may be stored — not when `decide_block`
    restarted it, nor when one is not finite (on any rank: a residual, a divided difference, a FoCa forecast).
    Then the block has no stored input and no valid factors (the next call computes it) and the call's log
    row counts it `nonfinite`. Returns keep: bool[]."""
    bad = torch.stack([~torch.isfinite(r).all() for r in stacks]).any()
    if group is not None:
        bad = reduce_sums(bad.float().view(1), group)[0] > 0
    bad = bad | restart
    index, p = branch.view(1), _slot(branch, slot)
    has = state["has_input"]
    has.index_put_((index, p), (has[index, p].squeeze(0) & ~bad).view(1))
    n_valid = state["n_valid"]
    n_valid.index_put_((index, p), torch.where(bad, 0, n_valid[index, p].squeeze(0)).view(1))
    log = state["log"]
    log.index_put_((_row(state), _slot(log, _COL["nonfinite"])), bad.float().view(1), accumulate=True)
    return ~bad


@in_graph
def pick(stack: Tensor, branch: Tensor, slot: int) -> Tensor:
    """Block `slot`'s entry of a per-branch, per-block state tensor (a copy: cond operands must not alias)."""
    return stack[branch.view(1), _slot(branch, slot)].squeeze(0)


@in_graph
def store(stack: Tensor, branch: Tensor, slot: int, value: Tensor, keep: Tensor | None = None) -> None:
    """Write block `slot`'s entry of a per-branch, per-block state tensor, in place (zeros where `keep` is
    False)."""
    if keep is not None:
        value = torch.where(keep, value, torch.zeros_like(value))
    stack.index_put_((branch.view(1), _slot(branch, slot)), value.unsqueeze(0).to(stack.dtype))
