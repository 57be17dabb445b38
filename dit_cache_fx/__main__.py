"""Command line: `dit-cache-fx demo | bench | explain | metrics` (or `python -m dit_cache_fx ...`).

Arguments are parsed before anything heavy is imported, so `--help` answers at once.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .defaults import DEMO_SETTINGS, QUICK_SETTING


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x.strip()]


def _parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = argparse.ArgumentParser(prog="dit-cache-fx", formatter_class=fmt,
                                description="DiT step caching (DBCache) as a torch.compile pass")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", formatter_class=fmt,
                       help="eager vs torch.compile vs cached compile on the shipped digits DiT")
    d.add_argument("--steps", type=int, default=28, help="denoising steps")
    d.add_argument("--samples", type=int, default=10, help="images per run")
    d.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale (<= 1: off)")
    d.add_argument("--seed", type=int, default=0, help="random seed")
    d.add_argument("--settings", default=DEMO_SETTINGS, help="comma-separated cache specs")
    d.add_argument("--repeats", type=int, default=3, help="timed generations per setting")
    d.add_argument("--no-compile-baseline", action="store_true", help="skip the plain torch.compile row")
    d.add_argument("--quick", action="store_true", help="a reduced run (overrides the options above): 8 steps, "
                   f"4 samples, one setting ({QUICK_SETTING}), one repeat, no torch.compile row")
    d.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    d.add_argument("--out", default="dit-cache-fx-demo.png", help="PNG grid path")
    d.set_defaults(run="dit_cache_fx.demo:main")

    b = sub.add_parser("bench", formatter_class=fmt, help="fidelity benchmark: caching vs fewer steps at equal compute")
    b.add_argument("--quick", action="store_true", help="a few minutes (overrides the options below): 8 steps, Fn 1, "
                   "R 0.2 and 0.5, no TaylorSeer, no MC cap, 4 samples")
    b.add_argument("--steps", type=_ints, default=[28, 50], help="comma-separated step counts")
    b.add_argument("--fn", type=_ints, default=[1, 2, 3], help="Fn values")
    b.add_argument("--bn", type=_ints, default=[0], help="Bn values")
    b.add_argument("--thresholds", type=_floats, default=[0.06, 0.08, 0.1, 0.12, 0.15, 0.2, 0.3, 0.5],
                   help="residual diff thresholds R")
    b.add_argument("--taylor", type=_ints, default=[0, 1], help="TaylorSeer orders (0 = off)")
    b.add_argument("--mc", type=_ints, default=[0, 1], help="max consecutive cached steps (0 = unlimited)")
    b.add_argument("--foca", action=argparse.BooleanOptionalAction, default=True,
                   help="also the FoCa calibrator (DBCache, and DBPrune with --prune-thresholds)")
    b.add_argument("--prune-thresholds", type=_floats, default=[0.04, 0.06, 0.08, 0.1, 0.15],
                   help="DBPrune thresholds R (empty: no DBPrune)")
    b.add_argument("--warmup", type=int, default=4, help="W: always-computed first steps")
    b.add_argument("--samples", type=int, default=20, help="images per setting")
    b.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale")
    b.add_argument("--seed", type=int, default=0, help="random seed")
    b.add_argument("--threads", type=int, default=1, help="torch threads (timing is not measured here)")
    b.add_argument("--out-dir", type=Path, default=Path("."), help="where fidelity.md / fidelity.png go")
    b.set_defaults(run="dit_cache_fx.digits.fidelity:main")

    e = sub.add_parser("explain", formatter_class=fmt,
                       help="what the passes do to the shipped digits DiT: the report and a picture of the regions")
    e.add_argument("--spec", default="F1B0_W4_R0.12", help="cache spec")
    e.add_argument("--out", default="dit-cache-fx-regions.svg", help="picture path (.svg or .png)")
    e.add_argument("--verbose", action="store_true", help="also print the rewritten graph's code")
    e.set_defaults(run="dit_cache_fx.demo:explain_main")

    m = sub.add_parser("metrics", formatter_class=fmt,
                       help="PSNR / SSIM / MSE of TEST images against REF (LPIPS, FID, CLIP when their weights are here)")
    m.add_argument("ref", type=Path, help="reference folder or file: images (.png .jpg .jpeg .webp .bmp) or .pt / .npy")
    m.add_argument("test", type=Path, help="folder or file to compare, matched to REF by relative file name")
    m.add_argument("--metrics", default="psnr,ssim,mse", help="comma-separated, from psnr,ssim,mse,lpips,fid,clip")
    m.add_argument("--per-pair", action="store_true", help="a table row per image pair, not only the mean")
    m.add_argument("--json", action="store_true", help="print JSON: the means, count and the per-pair rows")
    m.add_argument("--data-range", type=float, default=None,
                   help="peak-to-peak value range for PSNR / SSIM (None: from each reference's dtype and values)")
    m.add_argument("--ssim-window", choices=["gaussian", "uniform"], default="gaussian",
                   help="gaussian: Wang et al. 2004 (11x11, sigma 1.5); uniform: scikit-image's default 7x7, "
                   "as cache-dit 1.5.3 reports")
    m.add_argument("--clip-model", default="openai/clip-vit-large-patch14",
                   help="CLIP model for --metrics clip: a Hugging Face id already in the cache, or a local folder")
    m.set_defaults(run="dit_cache_fx.metrics:main")
    return p


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if getattr(args, "quick", False):
        if args.command == "bench":
            args.steps, args.fn, args.thresholds, args.taylor, args.mc, args.samples = [8], [1], [0.2, 0.5], [0], [0], 4
            args.foca, args.prune_thresholds = False, []
        else:
            args.steps, args.samples, args.settings, args.repeats, args.no_compile_baseline = 8, 4, QUICK_SETTING, 1, True
    import importlib

    module, func = args.run.split(":")
    getattr(importlib.import_module(module), func)(args)


if __name__ == "__main__":
    main()
