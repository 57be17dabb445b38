"""The step context: which denoising step, CFG branch and generation a call is (twin of
`reference.classify_call`).

Computed once per model call, before any region runs, and shared by every region and every graph Dynamo
compiles for the module (other shapes, a cond and an uncond call of different text lengths, the pieces of
a model that graph-breaks), so they never disagree about the step or the branch.

Rules, at any timestep convention (decreasing or increasing, sigmas or integer timesteps):
- separate CFG: the second call of a generation repeats the first one's timestep (detected), or forced by
  `cfg_mode`; then calls alternate cond (branch 0) / uncond (branch 1) and share the step index;
- a call the pipeline named with diffusers' `cache_context("cond" | "uncond")` takes its branch from the
  name (`hint`), not from a guess;
- a new generation starts on the first call, after `reset` (the pipeline form of `compile` resets at every
  pipeline call), or when a branch-0 call's timestep moves against the generation's direction (learned
  from its first move). Repeats of a timestep (Heun-type schedulers call the model twice per timestep) are
  new steps, never new generations; a branch-0 repeat before the timestep ever moved (1-step generations
  served back to back) cannot be told from the next generation: `ambiguous` is set, the host warns.

`classify_call` is plain tensor code. The first graph of a call runs it in the graph (`classify_pending`,
fused with the graph's other bookkeeping; the host only sets `pending`); a graph that does not take the
timestep as an input leaves it to the host, which runs it as one small compiled kernel (`classify`). The
tests run it eagerly against the reference.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from .. import _compat
from .layout import StepContext
from .registry import in_graph

log = logging.getLogger(__name__)


def timestep_value(t: Tensor) -> Tensor:
    """One number per call from a timestep input of any shape ([], [B], [B, tokens]): its maximum, in fp32
    (per-token timesteps such as Wan 2.2 TI2V's are `t` except on conditioning tokens)."""
    return t.detach().reshape(-1).amax().to(torch.float32)


def classify_call(ctx: StepContext, t: Tensor) -> None:
    """Advance the step context for a call at timestep `t` (0-dim fp32), in place."""
    mode, hinted = ctx.cfg_mode, ctx.hint >= 0
    has_last = ctx.call > 0
    repeat = has_last & (t == ctx.last_t)
    cfg_on = (mode == 1) | ((mode < 0) & ctx.cfg_seen)
    expect_uncond = cfg_on & has_last & (ctx.branch == 0)
    detect = (mode < 0) & ~ctx.cfg_seen & repeat & (ctx.calls == 1) & ~hinted
    guessed = torch.where(mode == 1, expect_uncond, (expect_uncond & repeat) | detect)
    uncond = torch.where(hinted, ctx.hint == 1, guessed)
    detect = detect | (hinted & uncond)
    moved = torch.sign(t - ctx.last_cond_t)  # nan before the first branch-0 call
    against = (ctx.direction != 0) & (moved == -ctx.direction)
    new_gen = ctx.reset | ~has_last | (~uncond & against)
    ambiguous = ~new_gen & ~uncond & (moved == 0) & (ctx.direction == 0)

    learn = ~uncond & (ctx.direction == 0) & (moved != 0) & ~torch.isnan(moved)
    direction = torch.where(new_gen, 0.0, torch.where(learn, moved, ctx.direction))
    ctx.direction.copy_(direction)
    ctx.step.copy_(torch.where(new_gen, 0, torch.where(uncond, ctx.step, ctx.step + 1)))
    ctx.calls.copy_(torch.where(new_gen, 1, ctx.calls + 1))
    ctx.cfg_seen.copy_(~new_gen & (ctx.cfg_seen | detect))
    ctx.gen.add_(new_gen.to(torch.int64))
    ctx.call.add_(1)
    ctx.branch.copy_(uncond.to(torch.int64))
    ctx.last_cond_t.copy_(torch.where(uncond, ctx.last_cond_t, t))
    ctx.last_t.copy_(t)
    ctx.reset.fill_(False)
    ctx.ambiguous.copy_(ctx.ambiguous | ambiguous)


@in_graph
def classify_pending(ctx: dict[str, Tensor], t: Tensor) -> None:
    """In the graph: `classify_call(ctx, timestep_value(t))` if the call is pending, then not pending."""
    c = StepContext(**ctx)
    pending = c.pending.clone()
    fields = [x for name, x in ctx.items() if name != "pending"]
    before = [x.clone() for x in fields]
    classify_call(c, timestep_value(t).to(c.call.device))
    for x, old in zip(fields, before):
        x.copy_(torch.where(pending, x, old))
    c.pending.fill_(False)


def _classify_flat(t: Tensor, *ctx_tensors: Tensor) -> None:
    classify_call(StepContext(*ctx_tensors), t)


def classify(ctx: StepContext, t: Tensor, compiled: dict | None = None) -> None:
    """`classify_call(ctx, timestep_value(t))` on the host: compiled into one inductor kernel per device and
    kept in `compiled` (the caller owns the cache: `StateStore.classifiers`, freed by `release()`; eager if
    compilation fails), or eagerly (`compiled=None`)."""
    t = timestep_value(t).to(ctx.call.device)
    if compiled is None:
        return classify_call(ctx, t)
    fn = compiled.get(t.device)
    if fn is None:
        try:
            fn = _compat.compile_function(_classify_flat, [t, *ctx.tensors()])
        except Exception as e:  # noqa: BLE001 - an optimisation only: the eager ops are the same math
            log.warning("dit_cache_fx: the step classifier runs eagerly (%s: %s)", type(e).__name__, e)
            fn = _classify_flat
        compiled[t.device] = fn
    fn(t, *ctx.tensors())
