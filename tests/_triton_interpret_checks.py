"""Run with TRITON_INTERPRET=1 (by tests/test_kernels.py, in a subprocess): every Triton kernel on CPU
tensors against a float64 reference, fresh random inputs per case, odd sizes, poisoned outputs."""

import math
import os
import sys

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"

import torch  # noqa: E402

from dit_cache_fx.kernels import ops  # noqa: E402

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}
SHAPES = [(1,), (7,), (1000,), (4099,), (2, 17, 33)]


def close(out, ref, dtype, what):
    err = ((out.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()
    assert torch.isfinite(out.double()).all(), f"{what}: unwritten (NaN) elements"
    assert err <= TOL[dtype], f"{what}: rel err {err:.3g} > {TOL[dtype]}"


def main() -> None:
    g = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    for dtype in TOL:
        for shape in SHAPES:
            what = f"{dtype} {shape}"
            prev = torch.randn(shape, generator=g).to(dtype)
            cur = (prev.float() + 0.1 * torch.randn(shape, generator=g)).to(dtype)
            out = torch.full((), float("nan"))
            ops._rel_l1_diff_triton(prev, cur, out=out)
            p, c = prev.double(), cur.double()
            close(out, (p - c).abs().mean() / p.abs().mean(), dtype, "rel_l1_diff " + what)

            for order in (1, 2, 3):
                for n_valid in range(order + 2):
                    f = torch.randn((order + 1, *shape), generator=g).to(dtype)
                    y = torch.randn(shape, generator=g).to(dtype)
                    gap = torch.tensor(float(torch.randint(1, 4, (), generator=g)))
                    out = torch.full_like(f, float("nan"))
                    ops._taylor_update_triton(f, y, gap, torch.tensor(n_valid), out=out)
                    ref = [y.double()]
                    for i in range(order):
                        ref.append((ref[-1] - f[i].double()) / gap.double() if i < n_valid else torch.zeros_like(ref[-1]))
                    close(out, torch.stack(ref), dtype, f"taylor_update K={order} n_valid={n_valid} {what}")
                    # the torch branch agrees with the kernel
                    close(ops._taylor_update_torch(f, y, gap, torch.tensor(n_valid)), out.double(), dtype, "cpu branch")

                k = torch.tensor(float(torch.randint(1, 5, (), generator=g)))
                base = torch.randn(shape, generator=g).to(dtype)
                f = (0.5 * torch.randn((order + 1, *shape), generator=g)).to(dtype)
                out = torch.full_like(base, float("nan"))
                ops._taylor_forecast_triton(base, f, k, out=out)
                ref = base.double() + sum(f[i].double() * k.double() ** i / math.factorial(i) for i in range(order + 1))
                close(out, ref, dtype, f"taylor_forecast K={order} {what}")
                close(ops._taylor_forecast_torch(base, f, k), out.double(), dtype, "cpu branch")
    print("interpreter checks passed")


if __name__ == "__main__":
    sys.exit(main())
