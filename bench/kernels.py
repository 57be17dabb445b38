"""Kernel benchmark: the fused cache-region ops against unfused torch ops (and a copy, on CUDA).

    python bench/kernels.py [--numel 16777216] [--out bench/kernels_cpu.md]

On CUDA: achieved GB/s of each Triton kernel, of the same math as unfused eager torch ops, and of a
device-to-device copy of the same bytes (the roofline). On CPU there is no Triton: the op runs its torch
branch, so we time that branch compiled by inductor (what a compiled model runs) against eager unfused ops.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dit_cache_fx.kernels import ops


def _time(fn, repeats: int = 20) -> float:
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    fn()
    sync()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def cases(n: int, device: str, dtype: torch.dtype, order: int = 2):
    prev, cur = torch.randn(n, device=device, dtype=dtype), torch.randn(n, device=device, dtype=dtype)
    f = torch.randn(order + 1, n, device=device, dtype=dtype)
    gap, k, nv = (torch.tensor(2.0, device=device), torch.tensor(3.0, device=device),
                  torch.tensor(order, device=device))
    e = prev.element_size()
    return {
        # name: (fused, unfused eager, bytes moved)
        "rel_l1_diff": (lambda: ops.rel_l1_diff(prev, cur), lambda: ops._rel_l1_diff_torch(prev, cur), 2 * n * e),
        "taylor_update": (lambda: ops.taylor_update(f, cur, gap, nv), lambda: ops._taylor_update_torch(f, cur, gap, nv),
                          (2 * order + 3) * n * e),
        "taylor_forecast": (lambda: ops.taylor_forecast(cur, f, k), lambda: ops._taylor_forecast_torch(cur, f, k),
                            (order + 3) * n * e),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--numel", type=int, default=1 << 22)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    lines = [f"# kernels ({device}, numel {a.numel}, torch {torch.__version__})", ""]
    if not cuda:
        lines += ["No GPU here: Triton kernels cannot run, so GB/s of the kernels needs a GPU. Below: the ops' CPU",
                  "branch compiled by inductor vs the same math as eager unfused torch ops.", ""]
    lines += ["| op | dtype | fused ms | fused GB/s | unfused eager ms | speedup | copy GB/s |", "|---|---|---|---|---|---|---|"]
    for dtype in (torch.float32, torch.bfloat16):
        for name, (fused, unfused, nbytes) in cases(a.numel, device, dtype).items():
            run = fused if cuda else torch.compile(fused)
            t_f, t_u = _time(run), _time(unfused)
            src = torch.empty(nbytes // 2, dtype=torch.uint8, device=device)
            t_c = _time(lambda: src.clone())  # noqa: B023 - timed immediately
            lines.append(f"| {name} | {str(dtype).split('.')[-1]} | {t_f * 1e3:.2f} | {nbytes / t_f / 1e9:.1f} | "
                         f"{t_u * 1e3:.2f} | {t_u / t_f:.2f}x | {nbytes / t_c / 1e9:.1f} |")
    report = "\n".join(lines)
    print(report)
    if a.out:
        with open(a.out, "w") as fh:
            fh.write(report + "\n")


if __name__ == "__main__":
    main()
