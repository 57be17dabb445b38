"""The cached residual of a stream: stored after a computed step, served (or forecast) on a cached one.

Per stream the region keeps a stack `[K+1, *stream]`: the Mn residual and its K divided differences over
computed steps (TaylorSeer; K = 0 is plain DBCache, the stack is just the residual). With FoCa the stack is
`[4, *stream]` (`layout.FOCA_ROWS`), and a cached step updates it too (its forecast joins the rolling pair).
`order` is the stream's calibrator code (`CacheConfig.taylor_order_for`: a Taylor order or `FOCA`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..config import FOCA
from ..kernels import foca_forecast, foca_update, taylor_forecast, taylor_update
from .registry import in_graph


@in_graph
def update_factors(factors: Tensor, residual: Tensor, gap: Tensor, n_valid: Tensor, order: int) -> Tensor:
    """The stack after a computed step whose Mn residual is `residual` (`gap` steps after the last one)."""
    if order == FOCA:
        return foca_update(factors, residual)
    if order == 0:
        return residual.unsqueeze(0).to(factors.dtype)
    return taylor_update(factors, residual, gap, n_valid)


@in_graph
def apply_factors(base: Tensor, factors: Tensor, gap: Tensor, order: int) -> Tensor:
    """`base` + the residual `gap` steps after the last computed step (its Taylor forecast for order > 0)."""
    if order == 0:
        return (base + factors[0]).contiguous()
    return taylor_forecast(base, factors, gap)


@in_graph
def apply_foca(base: Tensor, factors: Tensor, gap: Tensor, n_valid: Tensor) -> tuple[Tensor, Tensor]:
    """(`base` + the FoCa forecast residual `gap` steps after the last computed step, the FoCa stack after
    this cached step)."""
    return foca_forecast(base, factors, gap, n_valid)


@in_graph
def pick(stack: Tensor, branch: Tensor) -> Tensor:
    """The branch's slice of a per-branch state tensor (a copy: cond operands must not alias)."""
    return stack.index_select(0, branch.view(1)).squeeze(0)


@in_graph
def store(stack: Tensor, branch: Tensor, value: Tensor, keep: Tensor | None = None) -> None:
    """Write the branch's slice of a per-branch state tensor, in place (zeros where `keep` is False: a
    restarted stack, `policy.settle`)."""
    if keep is not None:
        value = torch.where(keep, value, torch.zeros_like(value))
    stack.index_copy_(0, branch.view(1), value.unsqueeze(0).to(stack.dtype))


__all__ = ["apply_factors", "apply_foca", "pick", "store", "update_factors"]
