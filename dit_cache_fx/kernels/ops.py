"""The kernels as `torch.library.triton_op`s: `torch.ops.dit_cache_fx.{rel_l1_diff,taylor_update,taylor_forecast}`.

Each op body starts with a static device branch: CUDA tensors launch the Triton kernel (inductor sees it
through `wrap_triton` and schedules it as a user kernel); every other device runs plain torch ops, which
is also what `torch.compile` traces on CPU (a `register_kernel("cpu")` fallback would be bypassed there,
because triton_ops are decomposed into their bodies under compile).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

try:
    import triton

    from . import _triton
except ImportError:  # pragma: no cover - triton is a Linux x86_64 dependency
    triton = None
    _triton = None

BLOCK = 1024


def _need_triton() -> None:
    if _triton is None:
        raise RuntimeError("dit_cache_fx kernels on CUDA need triton: pip install triton")


def _check_same(a: Tensor, b: Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.device != b.device:
        raise ValueError(f"{what}: devices differ, {a.device} vs {b.device}")


def _check_stack(factors: Tensor, value: Tensor, what: str) -> None:
    if factors.dim() != value.dim() + 1 or factors.shape[1:] != value.shape:
        raise ValueError(f"{what}: factors must have shape [K+1, *{tuple(value.shape)}], got {tuple(factors.shape)}")


# ---------------------------------------------------------------------------------------------
# torch implementations (CPU branch, and the reference the Triton kernels are tested against)


def _rel_l1_diff_torch(prev: Tensor, cur: Tensor) -> Tensor:
    p = prev.float()
    return (p - cur.float()).abs().mean() / p.abs().mean()


def _taylor_update_torch(factors: Tensor, value: Tensor, gap: Tensor, n_valid: Tensor) -> Tensor:
    cur = value.float()
    out = [cur]
    for i in range(factors.shape[0] - 1):
        cur = torch.where(n_valid > i, (cur - factors[i].float()) / gap.float(), 0.0)
        out.append(cur)
    return torch.stack(out).to(factors.dtype)


def _taylor_forecast_torch(base: Tensor, factors: Tensor, k: Tensor) -> Tensor:
    acc = base.float()
    for i in range(factors.shape[0]):
        acc = acc + factors[i].float() * (k.float() ** i / math.factorial(i))
    return acc.to(base.dtype)


# ---------------------------------------------------------------------------------------------
# Triton launchers (any device triton can run on; CPU tensors under TRITON_INTERPRET=1)


def _launch(kernel):
    return torch.library.wrap_triton(kernel) if torch.compiler.is_compiling() else kernel


def _rel_l1_diff_triton(prev: Tensor, cur: Tensor, out: Tensor | None = None) -> Tensor:
    _need_triton()
    prev, cur = prev.contiguous(), cur.contiguous()
    n = prev.numel()
    grid = max(1, triton.cdiv(n, BLOCK))
    partial = torch.empty(2 * grid, dtype=torch.float32, device=prev.device)
    out = torch.empty((), dtype=torch.float32, device=prev.device) if out is None else out
    _launch(_triton.rel_l1_partial_kernel)[(grid,)](prev, cur, partial, n, BLOCK=BLOCK)
    _launch(_triton.rel_l1_finish_kernel)[(1,)](partial, out, grid, BLOCK=BLOCK)
    return out


def _taylor_update_triton(factors: Tensor, value: Tensor, gap: Tensor, n_valid: Tensor,
                          out: Tensor | None = None) -> Tensor:
    _need_triton()
    factors, value = factors.contiguous(), value.contiguous()
    n = value.numel()
    out = torch.empty_like(factors) if out is None else out
    grid = (max(1, triton.cdiv(n, BLOCK)),)
    _launch(_triton.taylor_update_kernel)[grid](factors, value, gap, n_valid, out, n,
                                                ORDER=factors.shape[0] - 1, BLOCK=BLOCK)
    return out


def _taylor_forecast_triton(base: Tensor, factors: Tensor, k: Tensor, out: Tensor | None = None) -> Tensor:
    _need_triton()
    base, factors = base.contiguous(), factors.contiguous()
    n = base.numel()
    out = torch.empty_like(base) if out is None else out
    grid = (max(1, triton.cdiv(n, BLOCK)),)
    _launch(_triton.taylor_forecast_kernel)[grid](base, factors, k, out, n, ORDER=factors.shape[0] - 1, BLOCK=BLOCK)
    return out


# ---------------------------------------------------------------------------------------------
# the ops


@torch.library.triton_op("dit_cache_fx::rel_l1_diff", mutates_args=())
def rel_l1_diff(prev: Tensor, cur: Tensor) -> Tensor:
    """mean|prev − cur| / mean|prev| over all elements, as a 0-dim float32 tensor (no host sync).
    A zero `prev` gives inf or nan (x/0), as torch would."""
    _check_same(prev, cur, "rel_l1_diff")
    if prev.device.type != "cuda":
        return _rel_l1_diff_torch(prev, cur)
    return _rel_l1_diff_triton(prev, cur)


@torch.library.triton_op("dit_cache_fx::taylor_update", mutates_args=())
def taylor_update(factors: Tensor, value: Tensor, gap: Tensor, n_valid: Tensor) -> Tensor:
    """New TaylorSeer factor stack [K+1, *value.shape]: F0 = value, F(i+1) = (F_i new − F_i old) / gap for the
    `n_valid` valid old factors, 0 beyond. `gap`: float 0-dim (steps since the previous computed step)."""
    _check_stack(factors, value, "taylor_update")
    if value.device.type != "cuda":
        return _taylor_update_torch(factors, value, gap, n_valid)
    return _taylor_update_triton(factors, value, gap, n_valid)


@torch.library.triton_op("dit_cache_fx::taylor_forecast", mutates_args=())
def taylor_forecast(base: Tensor, factors: Tensor, k: Tensor) -> Tensor:
    """base + Σ_i F_i · kⁱ / i!  (the forecast residual added to the current stream), in base's dtype."""
    _check_stack(factors, base, "taylor_forecast")
    if base.device.type != "cuda":
        return _taylor_forecast_torch(base, factors, k)
    return _taylor_forecast_triton(base, factors, k)
