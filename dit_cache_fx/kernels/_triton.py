"""Triton kernel bodies (this module is imported only when triton is installed).

All three are single memory-bound passes: every input element is read once, the math is fp32 and the
result is cast to the output's dtype on store. Offsets are int64 (meant for tensors past 2**31 elements;
not tested at that size).
Factor stacks are flat `[ORDER+1, n]` (a contiguous `[K+1, *shape]` tensor), walked by pointer increments.
"""

import triton
import triton.language as tl


@triton.jit
def l1_sums_partial_kernel(prev_ptr, cur_ptr, partial_ptr, n, BLOCK: tl.constexpr):
    # program p of P visits the tiles p, p + P, p + 2P, ... and writes partial[0, p] = Σ|prev - cur|,
    # partial[1, p] = Σ|prev|; the order of the additions depends only on (n, P, BLOCK): deterministic
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    acc_diff = tl.zeros([BLOCK], dtype=tl.float32)
    acc_prev = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(pid.to(tl.int64) * BLOCK, n, n_programs * BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < n
        p = tl.load(prev_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        c = tl.load(cur_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        acc_diff += tl.abs(p - c)
        acc_prev += tl.abs(p)
    tl.store(partial_ptr + pid, tl.sum(acc_diff, axis=0))
    tl.store(partial_ptr + n_programs + pid, tl.sum(acc_prev, axis=0))


@triton.jit
def l1_sums_finish_kernel(partial_ptr, out_ptr, n_partial, BLOCK: tl.constexpr):
    # a single program: fixed-order sums of the partials -> out[0] = Σ|prev - cur|, out[1] = Σ|prev|
    offs = tl.arange(0, BLOCK)
    mask = offs < n_partial
    tl.store(out_ptr, tl.sum(tl.load(partial_ptr + offs, mask=mask, other=0.0), axis=0))
    tl.store(out_ptr + 1, tl.sum(tl.load(partial_ptr + n_partial + offs, mask=mask, other=0.0), axis=0))


@triton.jit
def taylor_update_kernel(f_ptr, y_ptr, gap_ptr, n_valid_ptr, out_ptr, n, ORDER: tl.constexpr,
                         BLOCK: tl.constexpr):
    # out[0] = y;  out[i+1] = (out[i] - f[i]) / gap if i < n_valid else 0    (divided differences)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    gap = tl.load(gap_ptr).to(tl.float32)
    n_valid = tl.load(n_valid_ptr)
    new = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, new.to(out_ptr.dtype.element_ty), mask=mask)
    for i in tl.static_range(ORDER):  # f[ORDER] is never needed
        valid = n_valid > i
        # an invalid factor is not read at all (written as a limit: the interpreter mishandles mask & valid)
        old = tl.load(f_ptr + offs, mask=offs < tl.where(valid, n, 0), other=0.0).to(tl.float32)
        new = tl.where(valid, (new - old) / gap, 0.0)
        f_ptr += n
        out_ptr += n
        tl.store(out_ptr + offs, new.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def taylor_forecast_kernel(base_ptr, f_ptr, k_ptr, out_ptr, n, ORDER: tl.constexpr, BLOCK: tl.constexpr):
    # out = base + Σ_i f[i] · k^i / i!   with the coefficient built as a running product (k/1)(k/2)...
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    k = tl.load(k_ptr).to(tl.float32)
    acc = tl.load(base_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    coef = tl.full([], 1.0, tl.float32)
    for i in tl.static_range(ORDER + 1):
        acc += coef * tl.load(f_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        coef = coef * k / (i + 1)
        f_ptr += n
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)
