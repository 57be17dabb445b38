"""`dit-cache-fx demo`: DBCache step caching on the shipped digits DiT (and `dit-cache-fx explain`).

Runs the same seeds and class labels uncached (eager), through plain `torch.compile`, and through
`dit_cache_fx.compile` at a few cache settings; prints speed, cached steps, fidelity to the eager
output (PSNR, max abs error) and the judge's class accuracy, and writes a PNG grid: a row of samples per
setting, and under each cached setting its difference to the reference, amplified.
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
from dit_cache_fx import _compat
from dit_cache_fx.defaults import DEMO_SETTINGS
from dit_cache_fx.digits import NUM_CLASSES, DigitsPipeline, accuracy, load_pipeline
from dit_cache_fx.digits.metrics import describe_error, generate, psnr

DIFF_GAIN = 10  # difference rows show |cached - reference| x 10 (white = a difference of 0.1 or more)


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


def run_variant(pipe: DigitsPipeline, base: torch.nn.Module, name: str, make: Callable[[torch.nn.Module], torch.nn.Module],
                labels: Sequence[int], steps: int, guidance: float, seed: int, repeats: int, cached: bool) -> Result:
    res = Result(name)
    _compat.reset_dynamo()  # every variant compiles from scratch (and no recompile limit is hit)
    try:
        pipe.transformer = make(base)
        compiling = pipe.transformer is not base
        log(f"{name}: first generation" + (" (compiles: up to a minute on CPU)" if compiling else "") + " ...")
        t0 = time.perf_counter()
        generate(pipe, labels, steps, guidance, seed)
        res.warmup_s = time.perf_counter() - t0
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            res.images = generate(pipe, labels, steps, guidance, seed)
            times.append(time.perf_counter() - t0)
        res.seconds = min(times)
        res.cached_steps = len(dit_cache_fx.summary(pipe.transformer).cached_steps) if cached else 0
        log(f"{name}: warm-up {res.warmup_s:.1f} s, steady {res.seconds:.3f} s per generation"
            + (f", {res.cached_steps}/{steps} steps cached" if cached else ""))
    except dit_cache_fx.DitCacheError as e:  # a spec that does not fit the model: report it, keep going
        res.error = describe_error(e)
        log(f"{name}: skipped ({res.error})")
    finally:
        pipe.transformer = base
    return res


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


def save_grid(results: list[Result], labels: Sequence[int], steps: int, path: Path, scale: int = 4) -> Path:
    """Title, a column per sample (labelled with its digit), a row per setting (name, cached steps, PSNR),
    and under each cached setting a difference row |cached − reference| × DIFF_GAIN."""
    from PIL import Image, ImageDraw

    ok = [r for r in results if r.images is not None]
    ref = ok[0].images
    n, _, h, _ = ref.shape
    cell, label_w, pad, top = h * scale, 230, 2, 44
    rows: list[tuple[str, str, np.ndarray]] = []
    for i, r in enumerate(ok):
        note = "reference" if i == 0 else (f"{r.cached_steps}/{steps} cached, PSNR {psnr(r.images, ref):.1f} dB"
                                          if r.cached_steps else f"PSNR {psnr(r.images, ref):.1f} dB")
        rows.append((r.name, note, r.images[:, 0].clamp(0, 1).numpy()))
        if r.cached_steps:
            diff = ((r.images - ref).abs() * DIFF_GAIN).clamp(0, 1)[:, 0].numpy()
            rows.append(("  difference", f"|cached - ref| x {DIFF_GAIN}, max {(r.images - ref).abs().max():.3f}", diff))
    grid = Image.new("L", (label_w + n * (cell + pad), top + len(rows) * (cell + pad)), 255)
    draw = ImageDraw.Draw(grid)
    draw.text((4, 4), f"dit_cache_fx demo: digits DiT, {steps} steps, samples per setting (diff rows: white = "
                      f"difference >= {1 / DIFF_GAIN:g})", fill=0)
    for j, digit in enumerate(labels):
        draw.text((label_w + j * (cell + pad) + cell // 2 - 4, top - 16), str(digit), fill=0)
    for i, (name, note, imgs) in enumerate(rows):
        y = top + i * (cell + pad)
        draw.text((4, y + cell // 2 - 12), name, fill=0)
        draw.text((4, y + cell // 2 + 2), note, fill=0)
        arr = (imgs * 255).round().astype(np.uint8)
        for j in range(n):
            tile = Image.fromarray(arr[j]).resize((cell, cell), Image.NEAREST)
            grid.paste(tile, (label_w + j * (cell + pad), y))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


def run_demo(steps: int = 28, samples: int = 10, guidance: float = 3.0, seed: int = 0,
             settings: Sequence[str] = DEMO_SETTINGS.split(","), compile_baseline: bool = True, repeats: int = 3,
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
    path = save_grid(results, labels, steps, Path(out))
    log(f"wrote {path.resolve()}")
    return results


def main(args: argparse.Namespace) -> None:
    run_demo(steps=args.steps, samples=args.samples, guidance=args.guidance, seed=args.seed,
             settings=[s.strip() for s in args.settings.split(",") if s.strip()],
             compile_baseline=not args.no_compile_baseline, repeats=args.repeats, out=args.out, threads=args.threads)


def explain_main(args: argparse.Namespace) -> None:
    """`dit-cache-fx explain`: compile the digits DiT, run one generation, print the report, draw the regions."""
    pipe = load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    pipe.transformer = dit_cache_fx.compile(pipe.transformer, cache=args.spec)
    generate(pipe, [3, 7], 8, 3.0, 0)
    x = torch.zeros(1, pipe.in_channels, pipe.sample_size, pipe.sample_size)
    report = dit_cache_fx.explain(pipe.transformer, x, timestep=torch.tensor([500.0]), class_labels=torch.tensor([3]))
    print(report.text(verbose=args.verbose))
    print(f"\nwrote {report.save(args.out)}")
