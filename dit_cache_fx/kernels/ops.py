"""The kernels as `torch.library.triton_op`s: `torch.ops.dit_cache_fx.<name>` for the three names below.

Each op body checks its inputs, then takes a static device branch: CUDA tensors launch the Triton kernel
(through `wrap_triton`, so inductor sees it as a user kernel); every other device, and every device when
triton is not installed, runs plain torch ops. That torch branch is also what `torch.compile` traces on
CPU: triton_ops are decomposed into their bodies under compile, so a `register_kernel("cpu")` fallback
would be bypassed there.

Private helpers, used by the tests and the benchmark: `_<op>_torch` (the torch branch) and `_<op>_triton`
(launches the Triton kernel on whatever device the tensors are on, e.g. CPU under TRITON_INTERPRET=1).
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from .. import _compat

try:
    import triton
except ImportError:  # e.g. macOS, Windows: the ops then always take the torch branch
    triton = None
if triton is not None:
    from . import _triton
else:
    _triton = None

BLOCK = 1024  # elements per program and loop iteration (4 warps: 8 per thread, 16-byte loads at 16 bits)
MAX_PROGRAMS = 1024  # l1_sums: at most this many partial sums, added up by one program


# ---------------------------------------------------------------------------------------------------------
# input checks (ValueError naming the op and the problem)


def _check_float(op: str, name: str, t: Tensor) -> None:
    if not t.dtype.is_floating_point:
        raise ValueError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")


def _check_scalar(op: str, name: str, t: Tensor, like: Tensor, integer: bool = False) -> None:
    if integer:
        ok = not (t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool)
    else:
        ok = t.dtype.is_floating_point
    if t.dim() != 0 or not ok:
        kind = "integer" if integer else "floating-point"
        raise ValueError(f"{op}: {name} must be a 0-dim {kind} tensor, got shape {tuple(t.shape)} {t.dtype}")
    if t.device != like.device:
        raise ValueError(f"{op}: {name} is on {t.device} but the data is on {like.device}; move it there")


def _check_stack(op: str, factors: Tensor, value: Tensor, value_name: str) -> None:
    _check_float(op, "factors", factors)
    _check_float(op, value_name, value)
    if factors.dim() != value.dim() + 1 or factors.shape[0] < 1 or factors.shape[1:] != value.shape:
        raise ValueError(f"{op}: factors must have shape [K+1, *{value_name}.shape] = [K+1, "
                         f"{', '.join(map(str, value.shape))}] with K >= 0, got {tuple(factors.shape)}")
    if factors.device != value.device:
        raise ValueError(f"{op}: factors is on {factors.device} but {value_name} is on {value.device}")


def _check_l1_sums(prev: Tensor, cur: Tensor) -> None:
    _check_float("l1_sums", "prev", prev)
    _check_float("l1_sums", "cur", cur)
    if prev.shape != cur.shape:
        raise ValueError(f"l1_sums: prev and cur must have the same shape, got {tuple(prev.shape)} "
                         f"and {tuple(cur.shape)}")
    if prev.device != cur.device:
        raise ValueError(f"l1_sums: prev is on {prev.device} but cur is on {cur.device}")


def _check_taylor_update(factors: Tensor, value: Tensor, gap: Tensor, n_valid: Tensor) -> None:
    _check_stack("taylor_update", factors, value, "value")
    _check_scalar("taylor_update", "gap", gap, value)
    _check_scalar("taylor_update", "n_valid", n_valid, value, integer=True)


def _check_taylor_forecast(base: Tensor, factors: Tensor, k: Tensor) -> None:
    _check_stack("taylor_forecast", factors, base, "base")
    _check_scalar("taylor_forecast", "k", k, base)


# ---------------------------------------------------------------------------------------------------------
# torch branch: plain ops that inductor fuses into one kernel each (also the reference for the kernels)


def _l1_sums_torch(prev: Tensor, cur: Tensor) -> Tensor:
    p = prev.float()
    return torch.stack([(p - cur.float()).abs().sum(), p.abs().sum()])


def _taylor_update_torch(factors: Tensor, value: Tensor, gap: Tensor, n_valid: Tensor) -> Tensor:
    new = value.float()
    out = [value.to(factors.dtype)]
    for i in range(factors.shape[0] - 1):
        new = torch.where(n_valid > i, (new - factors[i].float()) / gap.float(), 0.0)
        out.append(new.to(factors.dtype))  # cast before the stack: inductor then writes each slice once
    return torch.stack(out)


def _taylor_forecast_torch(base: Tensor, factors: Tensor, k: Tensor) -> Tensor:
    acc, coef = base.float(), torch.ones_like(k, dtype=torch.float32)
    for i in range(factors.shape[0]):
        acc = acc + coef * factors[i].float()
        coef = coef * k.float() / (i + 1)
    return acc.to(base.dtype)


# ---------------------------------------------------------------------------------------------------------
# Triton launchers. `out=` lets tests pass a NaN-poisoned output; `block`/`max_programs` let them force
# several programs and loop iterations on tiny inputs.


def _require_triton() -> None:
    if _triton is None:
        raise RuntimeError("dit_cache_fx.kernels: the Triton kernels need triton (pip install triton); "
                           "without it the ops run their torch branch on every device")


def _out(out: Tensor | None, like: Tensor, shape: torch.Size, dtype: torch.dtype) -> Tensor:
    if out is None:
        return torch.empty(shape, dtype=dtype, device=like.device)
    if out.shape != shape or out.dtype != dtype or out.device != like.device or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {dtype} tensor of shape {tuple(shape)} on {like.device}")
    return out


def _l1_sums_triton(prev: Tensor, cur: Tensor, out: Tensor | None = None, *, block: int = BLOCK,
                    max_programs: int = MAX_PROGRAMS) -> Tensor:
    _require_triton()
    prev, cur = prev.contiguous(), cur.contiguous()
    n = prev.numel()
    n_programs = min(max(1, triton.cdiv(n, block)), max_programs)
    # per program: partial[0] = Σ|prev - cur|, partial[1] = Σ|prev|
    partial = torch.empty((2, n_programs), dtype=torch.float32, device=prev.device)
    out = _out(out, prev, torch.Size((2,)), torch.float32)
    _compat.wrap_triton(_triton.l1_sums_partial_kernel)[(n_programs,)](
        prev, cur, partial, n, BLOCK=block)
    _compat.wrap_triton(_triton.l1_sums_finish_kernel)[(1,)](
        partial, out, n_programs, BLOCK=triton.next_power_of_2(max_programs))
    return out


def _taylor_update_triton(factors: Tensor, value: Tensor, gap: Tensor, n_valid: Tensor,
                          out: Tensor | None = None, *, block: int = BLOCK) -> Tensor:
    _require_triton()
    factors, value = factors.contiguous(), value.contiguous()
    n = value.numel()
    out = _out(out, factors, factors.shape, factors.dtype)
    _compat.wrap_triton(_triton.taylor_update_kernel)[(max(1, triton.cdiv(n, block)),)](
        factors, value, gap, n_valid, out, n, ORDER=factors.shape[0] - 1, BLOCK=block)
    return out


def _taylor_forecast_triton(base: Tensor, factors: Tensor, k: Tensor, out: Tensor | None = None, *,
                            block: int = BLOCK) -> Tensor:
    _require_triton()
    base, factors = base.contiguous(), factors.contiguous()
    n = base.numel()
    out = _out(out, base, base.shape, base.dtype)
    _compat.wrap_triton(_triton.taylor_forecast_kernel)[(max(1, triton.cdiv(n, block)),)](
        base, factors, k, out, n, ORDER=factors.shape[0] - 1, BLOCK=block)
    return out


# ---------------------------------------------------------------------------------------------------------
# the ops


def _triton_op(name: str):
    """`torch.library.triton_op(name)`, quiet about a missing triton."""
    quiet = _compat.quiet_triton_probe() if triton is None else contextlib.nullcontext()

    def define(fn):
        with quiet:
            return torch.library.triton_op(name, mutates_args=())(fn)

    return define


@_triton_op("dit_cache_fx::l1_sums")
def l1_sums(prev: Tensor, cur: Tensor) -> Tensor:
    """[Σ|prev − cur|, Σ|prev|] over all elements, as a float32 tensor of 2 (no host sync).

    Accumulated in fp32 with a deterministic order. Their ratio is the relative L1 distance
    mean|prev − cur| / mean|prev|; keeping the sums apart lets ranks add theirs before dividing
    (`runtime.signal`).
    """
    _check_l1_sums(prev, cur)
    if _triton is None or prev.device.type != "cuda":
        return _l1_sums_torch(prev, cur)
    return _l1_sums_triton(prev, cur)


@_triton_op("dit_cache_fx::taylor_update")
def taylor_update(factors: Tensor, value: Tensor, gap: Tensor, n_valid: Tensor) -> Tensor:
    """The new TaylorSeer stack after a computed step (divided differences over computed steps).

    Args:
        factors: `[K+1, *value.shape]`, F_0 = value at the last computed step, F_i = i-th divided
            difference; only the first `n_valid` are valid (the rest are zero).
        value: Y, the value at this computed step.
        gap: 0-dim float, steps between this computed step and the previous one.
        n_valid: 0-dim int in 0..K+1. The caller advances it to min(n_valid + 1, K + 1).

    Returns:
        `[K+1, *value.shape]` in factors' dtype: new F_0 = Y, new F_{i+1} = (new F_i − F_i) / gap for
        i < n_valid, else 0. Computed in fp32.
    """
    _check_taylor_update(factors, value, gap, n_valid)
    if _triton is None or value.device.type != "cuda":
        return _taylor_update_torch(factors, value, gap, n_valid)
    return _taylor_update_triton(factors, value, gap, n_valid)


@_triton_op("dit_cache_fx::taylor_forecast")
def taylor_forecast(base: Tensor, factors: Tensor, k: Tensor) -> Tensor:
    """base + Σ_i F_i · kⁱ / i! (the forecast residual added to `base`), accumulated in fp32, in base's dtype.

    `factors`: `[K+1, *base.shape]` as made by `taylor_update` (invalid factors are zero and add nothing);
    `k`: 0-dim float, steps since the last computed step.
    """
    _check_taylor_forecast(base, factors, k)
    if _triton is None or base.device.type != "cuda":
        return _taylor_forecast_torch(base, factors, k)
    return _taylor_forecast_triton(base, factors, k)


# ---------------------------------------------------------------------------------------------------------
# FoCa (cache-dit 1.5.3's `FoCaCalibrator`): plain torch ops, no Triton kernel. Under torch.compile inductor
# fuses each into one elementwise kernel; a hand-written kernel would only save launches where the glue runs
# eagerly (regional=True), so there is none.
#
# A stream's FoCa stack is [4, *stream] = F_k, F_km1 (the two most recent residuals, computed or forecast),
# F_full, F_full_prev (the two most recent computed ones).


def foca_update(stack: Tensor, value: Tensor) -> Tensor:
    """The FoCa stack after a computed step whose residual is `value`: [Y, F_k, Y, F_full].

    Rows that were never written hold stale values; they are read only once two computed steps have
    overwritten them (`foca_forecast` looks at `n_valid`)."""
    y = value.to(stack.dtype)
    return torch.stack([y, stack[0], y, stack[2]])


def foca_forecast(base: Tensor, stack: Tensor, k: Tensor, n_valid: Tensor) -> tuple[Tensor, Tensor]:
    """(base + P, the stack after this cached step) for the FoCa forecast P, `k` steps after the last
    computed step, with `n_valid` computed steps so far (capped at 2).

    n_valid >= 2: P = w·(F_full + h/2·((F_full − F_full_prev) + (F_k − F_km1))) + (1 − w)·F_full with
    h = min(k, 3), w = 3 / max(k, 3) (Heun's trapezoidal rule from the last computed step, damped toward it
    beyond 3 steps), computed in fp32 and rounded to the stack's dtype; P then replaces the rolling pair
    (F_km1 ← F_k, F_k ← P). Else P = F_full and the stack is unchanged."""
    f_k, f_km1, f_full, f_full_prev = (stack[i].float() for i in range(4))
    k = k.float()
    h, w = torch.clamp(k, max=3.0), 3.0 / torch.clamp(k, min=3.0)
    heun = w * (f_full + (h / 2.0) * ((f_full - f_full_prev) + (f_k - f_km1))) + (1.0 - w) * f_full
    ready = n_valid >= 2
    p = torch.where(ready, heun, f_full).to(stack.dtype)
    new = torch.stack([torch.where(ready, p, stack[0]), torch.where(ready, stack[0], stack[1]), stack[2], stack[3]])
    return (base + p.to(base.dtype)).contiguous(), new
