"""`dit-cache-fx demo`: DBCache step caching on the shipped digits DiT.

Runs the same seeds and class labels uncached (eager), through plain `torch.compile`, and through
`dit_cache_fx.compile` at a few cache settings; prints speed, cached steps, fidelity to the eager
output (PSNR, max abs error) and the judge's class accuracy, and writes a PNG grid.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import dit_cache_fx
from dit_cache_fx.digits import NUM_CLASSES, DigitsPipeline, accuracy, load_pipeline

SETTINGS = ("F1B0_W4_R0.12", "F2B0_W4MC3_R0.2", "F1B0_W4_R0.12_T1")
QUICK_SETTINGS = ("F1B0_W2_R0.3",)


@dataclass
class Result:
    name: str
    images: torch.Tensor | None = None  # (N, 1, H, W) in [0, 1]
    warmup_s: float = math.nan  # first generation, including compilation
    seconds: float = math.nan  # steady state, one generation (best of repeats)
    cached_steps: int | None = None
    error: str | None = None


def log(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def generate(pipe: DigitsPipeline, labels: Sequence[int], steps: int, guidance: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return pipe(list(labels), num_inference_steps=steps, guidance_scale=guidance, generator=g, output_type="pt").images


def cached_steps(module: torch.nn.Module) -> int | None:
    try:
        return len(dit_cache_fx.summary(module).cached_steps)
    except Exception:  # no stats (plain module) or an older core
        return None


def run_variant(pipe: DigitsPipeline, base: torch.nn.Module, name: str, make: Callable[[torch.nn.Module], torch.nn.Module],
                labels: Sequence[int], steps: int, guidance: float, seed: int, repeats: int, cached: bool) -> Result:
    res = Result(name)
    torch._dynamo.reset()  # every variant compiles from scratch (and no recompile limit is hit)
    try:
        pipe.transformer = make(base)
        compiling = pipe.transformer is not base
        log(f"{name}: first generation" + (" (compiles: up to a minute on CPU)" if compiling else "") + " ...")
        t0 = time.perf_counter()
        generate(pipe, labels, steps, guidance, seed)
        res.warmup_s = time.perf_counter() - t0
        times = []
        for _ in range(repeats):
            if cached:
                dit_cache_fx.reset(pipe.transformer)
            t0 = time.perf_counter()
            res.images = generate(pipe, labels, steps, guidance, seed)
            times.append(time.perf_counter() - t0)
        res.seconds = min(times)
        res.cached_steps = cached_steps(pipe.transformer) if cached else 0
        log(f"{name}: warm-up {res.warmup_s:.1f} s, steady {res.seconds:.3f} s per generation"
            + (f", {res.cached_steps}/{steps} steps cached" if cached and res.cached_steps is not None else ""))
    except Exception as e:  # an unsupported spec or backend: report it, keep going
        res.error = describe_error(e)
        log(f"{name}: skipped ({res.error})")
    finally:
        pipe.transformer = base
    return res


def describe_error(e: BaseException) -> str:
    """One line naming the root cause (Dynamo wraps backend errors in BackendCompilerFailed)."""
    inner = getattr(e, "inner_exception", None) or e.__cause__ or e
    lines = [ln for ln in str(inner).splitlines() if ln.strip()]
    return f"{type(inner).__name__}: {lines[0] if lines else ''}"


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [0, 1], computed in float64."""
    mse = torch.mean((a.double() - b.double()) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def table(results: list[Result], labels: Sequence[int], steps: int, n: int) -> str:
    ref = results[0]
    comp = next((r for r in results if r.name == "torch.compile" and r.error is None), None)
    head = ["setting", "warm-up s", "s/image", "vs eager", "vs compile", "cached steps", "PSNR dB", "max err", "judge acc"]
    rows = []
    for r in results:
        if r.error is not None:
            rows.append([r.name, "skipped"] + [""] * (len(head) - 2))
            continue
        err = (r.images - ref.images).abs().max().item()
        rows.append([
            r.name, f"{r.warmup_s:.1f}", f"{r.seconds / n:.4f}", f"{ref.seconds / r.seconds:.2f}x",
            f"{comp.seconds / r.seconds:.2f}x" if comp else "-",
            "-" if r.cached_steps is None else f"{r.cached_steps}/{steps}",
            f"{psnr(r.images, ref.images):.1f}", f"{err:.4f}", f"{accuracy(r.images, labels):.0%}",
        ])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    fmt = lambda row: "  ".join(str(x).ljust(w) for x, w in zip(row, widths))  # noqa: E731
    notes = [f"{r.name}: skipped, {r.error}" for r in results if r.error is not None]
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(r).rstrip() for r in rows] + notes)


def save_grid(results: list[Result], path: Path, scale: int = 4) -> Path:
    """One row per setting (label on the left), one column per sample."""
    from PIL import Image, ImageDraw

    ok = [r for r in results if r.images is not None]
    ref = ok[0].images
    n, _, h, w = ref.shape
    cell, label_w, pad = h * scale, 200, 2
    grid = Image.new("L", (label_w + n * (cell + pad), len(ok) * (cell + pad)), 255)
    draw = ImageDraw.Draw(grid)
    for i, r in enumerate(ok):
        y = i * (cell + pad)
        draw.text((4, y + cell // 2 - 12), r.name, fill=0)
        draw.text((4, y + cell // 2 + 2), "reference" if i == 0 else f"PSNR {psnr(r.images, ref):.1f} dB", fill=0)
        arr = (r.images[:, 0].clamp(0, 1).numpy() * 255).round().astype(np.uint8)
        for j in range(n):
            tile = Image.fromarray(arr[j]).resize((cell, cell), Image.NEAREST)
            grid.paste(tile, (label_w + j * (cell + pad), y))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


def run_demo(steps: int = 28, samples: int = 10, guidance: float = 3.0, seed: int = 0,
             settings: Sequence[str] = SETTINGS, compile_baseline: bool = True, repeats: int = 3,
             out: str | Path = "dit-cache-fx-demo.png", threads: int | None = None) -> list[Result]:
    """Run the demo, print its table, write the grid PNG to `out`; returns one `Result` per row."""
    if threads:
        torch.set_num_threads(threads)
    labels = [i % NUM_CLASSES for i in range(samples)]
    log(f"loading the shipped digits DiT; {samples} samples (digits {labels[0]}..{labels[-1]}), {steps} steps, "
        f"guidance {guidance} (2 transformer calls per step), seed {seed}, {torch.get_num_threads()} threads")
    pipe = load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    base = pipe.transformer
    variants: list[tuple[str, Callable, bool]] = [("eager (uncached)", lambda m: m, False)]
    if compile_baseline:
        variants.append(("torch.compile", torch.compile, False))
    for spec in settings:
        variants.append((spec, lambda m, s=spec: dit_cache_fx.compile(m, cache=s), True))
    results = [run_variant(pipe, base, name, make, labels, steps, guidance, seed, repeats, cached)
               for name, make, cached in variants]
    if results[0].error is not None:
        raise RuntimeError(f"the uncached eager run failed: {results[0].error}")
    log("fitting the judge (an SVM on scikit-learn's digits) ...")
    print()
    print(f"{samples} images, {steps} steps, guidance {guidance}; PSNR / max err vs the eager uncached output; "
          f"timings exclude warm-up (best of {repeats})")
    print(table(results, labels, steps, samples))
    print()
    path = save_grid(results, Path(out))
    log(f"wrote {path.resolve()}")
    return results


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default 28; 8 with --quick)")
    p.add_argument("--samples", type=int, default=None, help="images per run (default 10; 4 with --quick)")
    p.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale (<=1: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--settings", default=None, help=f"comma-separated cache specs (default {','.join(SETTINGS)})")
    p.add_argument("--repeats", type=int, default=None, help="timed generations per setting (default 3)")
    p.add_argument("--no-compile-baseline", action="store_true", help="skip the plain torch.compile row")
    p.add_argument("--quick", action="store_true", help="a fast reduced run: 8 steps, 4 samples, one cache setting")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--out", default="dit-cache-fx-demo.png", help="PNG grid path")


def main(args: argparse.Namespace) -> None:
    q = args.quick
    settings = args.settings.split(",") if args.settings else (QUICK_SETTINGS if q else SETTINGS)
    run_demo(steps=args.steps or (8 if q else 28), samples=args.samples or (4 if q else 10), guidance=args.guidance,
             seed=args.seed, settings=[s.strip() for s in settings if s.strip()],
             compile_baseline=not (args.no_compile_baseline or q), repeats=args.repeats or (1 if q else 3),
             out=args.out, threads=args.threads)
