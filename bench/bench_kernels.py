"""Kernel benchmark: the cache-region ops against unfused torch ops and a copy of the same bytes.

    python bench/bench_kernels.py [--numel N] [--order K] [--repeats R] [--threads T] [--out bench/kernels_cpu.md]

On CUDA: achieved GB/s of each Triton kernel (the op, eager), of the same math compiled by inductor, of
the unfused eager torch ops, and of a device-to-device copy of the same number of bytes (the roofline).
On CPU there is no Triton: the ops run their torch branch, and under torch.compile that branch is what
inductor fuses, so we time it compiled against the same math as eager unfused ops.
Timings are medians over interleaved repeats (variants take turns, so drifting machine load hits all alike).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch

from dit_cache_fx.kernels import ops

COLUMNS = ("kernel", "inductor", "eager", "copy")


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_interleaved(fns: dict[str, Callable], device: str, repeats: int, inner: int) -> dict[str, float]:
    """Median seconds per call of each fn; one sample = `inner` back-to-back calls, the fns take turns."""
    for fn in fns.values():  # warm-up (and compile)
        fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            _sync(device)
            samples[name].append((time.perf_counter() - t0) / inner)
    return {name: statistics.median(s) for name, s in samples.items()}


def cases(n: int, order: int, device: str, dtype: torch.dtype) -> dict[str, tuple]:
    """name -> (op, its torch branch, args, bytes one fused pass moves)."""
    prev, cur = torch.randn(n, device=device, dtype=dtype), torch.randn(n, device=device, dtype=dtype)
    factors = torch.randn(order + 1, n, device=device, dtype=dtype)
    gap, k = torch.tensor(2.0, device=device), torch.tensor(3.0, device=device)
    n_valid = torch.tensor(order + 1, device=device)  # steady state: every factor valid
    e = prev.element_size()
    return {
        "l1_sums": (ops.l1_sums, ops._l1_sums_torch, (prev, cur), 2 * n * e),
        # reads y and the first K factors (F_K is not needed), writes K+1
        "taylor_update": (ops.taylor_update, ops._taylor_update_torch, (factors, cur, gap, n_valid),
                          (2 * order + 2) * n * e),
        # reads base and K+1 factors, writes the output
        "taylor_forecast": (ops.taylor_forecast, ops._taylor_forecast_torch, (cur, factors, k),
                            (order + 3) * n * e),
    }


def header(cuda: bool, n: int, a: argparse.Namespace) -> list[str]:
    if cuda:
        where = torch.cuda.get_device_name()
    else:
        where = f"CPU, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} at start"
    title = f"# dit_cache_fx kernels: {where}, numel {n}, Taylor order {a.order}, torch {torch.__version__}"
    lines = [title, ""]
    if not cuda:
        lines += ["**No GPU here, so the Triton kernels did not run: their GB/s (against a copy of the",
                  "same bytes and against the unfused ops) needs a GPU; run `python bench/bench_kernels.py` on a",
                  "CUDA machine.** Below, on CPU: each op's torch branch compiled by inductor (what a",
                  "compiled model runs on CPU) against the same math as eager unfused torch ops, and a copy",
                  "of the same bytes.", ""]
    return lines + ["| op | dtype | MB moved | Triton kernel µs (GB/s) | inductor µs (GB/s) | "
                    "eager unfused µs (GB/s) | copy µs (GB/s) | fused vs eager |",
                    "|---|---|---|---|---|---|---|---|"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--numel", type=int, default=None, help="elements per tensor (2^24 CUDA, 2^22 CPU)")
    p.add_argument("--order", type=int, default=2, help="Taylor order K")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--out", default=None, help="also write the markdown report here")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    n = a.numel or (1 << 24 if cuda else 1 << 22)
    inner = 10 if cuda else 1
    lines = header(cuda, n, a)
    for dtype in (torch.float32, torch.bfloat16):
        for name, (op, torch_branch, args, nbytes) in cases(n, a.order, device, dtype).items():
            src = torch.ones(nbytes // 2, dtype=torch.uint8, device=device)  # copying it moves nbytes
            dst = torch.empty_like(src)
            fns = {"inductor": partial(torch.compile(torch_branch), *args),
                   "eager": partial(torch_branch, *args),
                   "copy": partial(dst.copy_, src)}
            if cuda:
                fns["kernel"] = partial(op, *args)
            t = time_interleaved(fns, device, a.repeats, inner)
            cells = [f"{t[c] * 1e6:.0f} ({nbytes / t[c] / 1e9:.1f})" if c in t else "needs a GPU"
                     for c in COLUMNS]
            speedup = t["eager"] / t.get("kernel", t["inductor"])
            dt = str(dtype).removeprefix("torch.")
            lines.append(f"| {name} | {dt} | {nbytes / 1e6:.1f} | {' | '.join(cells)} | {speedup:.2f}x |")
    lines += ["", "MB moved: what one fused pass must read and write. GB/s = MB moved / time in every",
              "column, so the unfused ops, which move more, show a lower effective rate. Medians of",
              f"{a.repeats} interleaved repeats of {inner} call(s)."]
    report = "\n".join(lines)
    print(report)
    if a.out:
        with open(a.out, "w") as fh:
            fh.write(report + "\n")


if __name__ == "__main__":
    main()
