"""Triton kernel bodies (imported only where triton is installed).

All three are memory-bound single passes: they read each input element once and accumulate in fp32.
"""

import triton
import triton.language as tl


@triton.jit
def rel_l1_partial_kernel(prev_ptr, cur_ptr, partial_ptr, n, BLOCK: tl.constexpr):
    # program p reduces elements [p*BLOCK, (p+1)*BLOCK) into partial[0, p] = Σ|prev-cur|, partial[1, p] = Σ|prev|
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    p = tl.load(prev_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    c = tl.load(cur_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(partial_ptr + pid, tl.sum(tl.abs(p - c), axis=0))
    tl.store(partial_ptr + tl.num_programs(0) + pid, tl.sum(tl.abs(p), axis=0))


@triton.jit
def rel_l1_finish_kernel(partial_ptr, out_ptr, n_partial, BLOCK: tl.constexpr):
    # one program: fixed-order sum of the partials (deterministic), then the ratio of the two means
    num = tl.zeros([BLOCK], dtype=tl.float32)
    den = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, n_partial, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < n_partial
        num += tl.load(partial_ptr + offs, mask=mask, other=0.0)
        den += tl.load(partial_ptr + n_partial + offs, mask=mask, other=0.0)
    tl.store(out_ptr, tl.sum(num, axis=0) / tl.sum(den, axis=0))


@triton.jit
def taylor_update_kernel(f_ptr, y_ptr, gap_ptr, n_valid_ptr, out_ptr, n, ORDER: tl.constexpr, BLOCK: tl.constexpr):
    # out[0] = y; out[i+1] = (out[i] - f[i]) / gap if i < n_valid else 0   (divided differences)
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    gap = tl.load(gap_ptr).to(tl.float32)
    n_valid = tl.load(n_valid_ptr)
    cur = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, cur.to(out_ptr.dtype.element_ty), mask=mask)
    for i in tl.static_range(ORDER):
        old = tl.load(f_ptr + i * n + offs, mask=mask, other=0.0).to(tl.float32)
        nxt = tl.where(n_valid > i, (cur - old) / gap, 0.0)
        tl.store(out_ptr + (i + 1) * n + offs, nxt.to(out_ptr.dtype.element_ty), mask=mask)
        cur = nxt


@triton.jit
def taylor_forecast_kernel(base_ptr, f_ptr, k_ptr, out_ptr, n, ORDER: tl.constexpr, BLOCK: tl.constexpr):
    # out = base + Σ_i f[i] · k^i / i!
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    k = tl.load(k_ptr).to(tl.float32)
    acc = tl.load(base_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    coef = 1.0
    for i in tl.static_range(ORDER + 1):
        acc += tl.load(f_ptr + i * n + offs, mask=mask, other=0.0).to(tl.float32) * coef
        coef = coef * k / (i + 1)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)
