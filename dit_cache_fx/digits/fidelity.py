"""Fidelity benchmark: DBCache / DBPrune settings vs "just use fewer steps" at equal compute, on the digits DiT.

For each step count, every cache setting gives (fraction of block compute saved, PSNR vs the uncached
output at the same seeds); the baseline is the uncached pipeline run with fewer steps, whose saved
compute is 1 - k/steps. Writes a markdown table and a plot. `dit-cache-fx bench` / bench/bench_fidelity.py.

Block compute saved = cached_steps · (N − Fn − Bn) / (steps · N), N = number of transformer blocks,
cached_steps counted on the conditional CFG branch; DBPrune: pruned blocks / (steps · N), same branch.
"""

from __future__ import annotations

import argparse
import itertools
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dit_cache_fx.digits.judge import accuracy
from dit_cache_fx.digits.metrics import describe_error, generate, psnr
from dit_cache_fx.digits.pipeline import NUM_CLASSES, load_pipeline


@dataclass
class Point:
    steps: int
    name: str  # cache spec, or "k steps" for the baseline
    saved: float  # fraction of block compute saved
    psnr: float
    max_err: float
    acc: float
    cached: int | None = None  # cached steps (cache settings only)
    error: str | None = None


def _point(steps: int, name: str, saved: float, imgs: torch.Tensor, ref: torch.Tensor, labels: list[int],
           cached: int | None = None) -> Point:
    return Point(steps, name, saved, psnr(imgs, ref), (imgs - ref).abs().max().item(), accuracy(imgs, labels), cached)


def specs(fn: list[int], bn: list[int], thresholds: list[float], taylor: list[int], warmup: int,
          mc: list[int] = (0,), foca: bool = False, prune_thresholds: list[float] = ()) -> dict[str, list[str]]:
    """Cache specs grouped by graph structure (technique, Fn, Bn, calibrator): one compile per group; the
    threshold and MC are changed in place with `dit_cache_fx.configure`. `foca` adds DBCache + FoCa groups
    (no MC cap), `prune_thresholds` DBPrune groups (plain and with FoCa)."""
    groups = {}
    for f, b, t in itertools.product(fn, bn, taylor):
        tail = f"_T{t}" if t else ""
        groups[f"F{f}B{b}{tail}"] = [f"F{f}B{b}_W{warmup}" + (f"MC{c}" if c else "") + f"_R{r:g}{tail}"
                                     for c, r in itertools.product(mc, thresholds)]
    for f, b in itertools.product(fn, bn):
        if foca:
            groups[f"F{f}B{b}_FoCa"] = [f"F{f}B{b}_W{warmup}_R{r:g}_FoCa" for r in thresholds]
        for tail in ("", "_FoCa") if foca else ("",):
            if prune_thresholds:
                groups[f"DBPrune_F{f}B{b}{tail}"] = [f"DBPrune_F{f}B{b}_W{warmup}_R{r:g}{tail}" for r in prune_thresholds]
    return groups


def saved_compute(summary, spec: str, steps: int, n_blocks: int) -> tuple[int, float]:
    """(cached steps — DBPrune: steps with a pruned block —, the fraction of block compute saved)."""
    from dit_cache_fx import CacheConfig, DBPruneConfig

    c = CacheConfig.parse(spec)
    cached = len(summary.cached_steps)
    if isinstance(c, DBPruneConfig):
        return cached, sum(summary.pruned_blocks) / (steps * n_blocks)
    return cached, cached * (n_blocks - c.Fn_compute_blocks - c.Bn_compute_blocks) / (steps * n_blocks)


def run(step_counts: list[int], groups: dict[str, list[str]], samples: int, guidance: float, seed: int,
        min_fraction: float = 0.25) -> list[Point]:
    import dit_cache_fx
    from dit_cache_fx import _compat

    pipe = load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    base = pipe.transformer
    n_blocks = len(base.transformer_blocks)
    labels = [i % NUM_CLASSES for i in range(samples)]
    points: list[Point] = []
    refs = {}
    for steps in step_counts:
        t0 = time.time()
        refs[steps] = ref = generate(pipe, labels, steps, guidance, seed)
        points.append(_point(steps, f"{steps} steps", 0.0, ref, ref, labels))
        fewer = range(steps - 1, max(1, int(steps * min_fraction)) - 1, -1)
        for k in fewer:
            points.append(_point(steps, f"{k} steps", 1 - k / steps, generate(pipe, labels, k, guidance, seed),
                                 ref, labels))
        print(f"[bench] {steps} steps: uncached eager reference + {len(fewer)} fewer-step runs "
              f"({time.time() - t0:.0f} s)", flush=True)
    for g, (group, group_specs) in enumerate(groups.items()):
        _compat.reset_dynamo()  # every group compiles from scratch (no recompile limit is hit)
        t0 = time.time()
        try:
            pipe.transformer = dit_cache_fx.compile(base, cache=group_specs[0])
            generate(pipe, labels, 2, guidance, seed)  # compile now
            print(f"[bench] [{g + 1}/{len(groups)}] compiled {group} ({time.time() - t0:.0f} s)", flush=True)
        except Exception as e:  # e.g. an unsupported setting: keep the rows, mark them
            err = describe_error(e)
            print(f"[bench] [{g + 1}/{len(groups)}] {group}: skipped ({err})", flush=True)
            points += [Point(st, s, math.nan, math.nan, math.nan, math.nan, error=err)
                       for st in step_counts for s in group_specs]
            pipe.transformer = base
            continue
        for steps, spec in itertools.product(step_counts, group_specs):
            dit_cache_fx.configure(pipe.transformer, spec)
            dit_cache_fx.reset(pipe.transformer)
            imgs = generate(pipe, labels, steps, guidance, seed)
            cached, saved = saved_compute(dit_cache_fx.summary(pipe.transformer), spec, steps, n_blocks)
            p = _point(steps, spec, saved, imgs, refs[steps], labels, cached)
            points.append(p)
            print(f"[bench]   {steps} steps {spec}: {cached} cached, saved {p.saved:.0%}, PSNR {p.psnr:.1f} dB, "
                  f"acc {p.acc:.0%}", flush=True)
        pipe.transformer = base
    return points


def baseline_psnr_at(points: list[Point], steps: int, saved: float) -> float:
    """PSNR of the fewer-steps baseline at equal saved compute (linear interpolation between step counts)."""
    base = sorted((p.saved, p.psnr) for p in points if p.steps == steps and p.cached is None and p.saved > 0)
    xs, ys = np.array([s for s, _ in base]), np.array([q for _, q in base])
    if not len(xs) or saved < xs[0] or saved > xs[-1]:
        return math.nan
    return float(np.interp(saved, xs, ys))


def write_markdown(points: list[Point], path: Path, header: str) -> str:
    lines = [header, ""]
    for steps in sorted({p.steps for p in points}):
        lines += [f"### {steps} steps", "",
                  "| setting | cached steps | block compute saved | PSNR dB | max err | judge acc | "
                  "fewer steps, same compute: PSNR dB | caching gain dB |",
                  "|---|---|---|---|---|---|---|---|"]
        cache = [p for p in points if p.steps == steps and p.cached is not None]
        for p in sorted(cache, key=lambda p: (p.saved, -p.psnr)):
            b = baseline_psnr_at(points, steps, p.saved)
            gain = p.psnr - b if math.isfinite(b) and math.isfinite(p.psnr) else math.nan
            lines.append(f"| {p.name} | {p.cached}/{steps} | {p.saved:.1%} | {p.psnr:.1f} | {p.max_err:.3f} | "
                         f"{p.acc:.0%} | {_fmt(b)} | {_fmt(gain, sign=True)} |")
        skipped: dict[str, list[str]] = {}
        for p in points:
            if p.steps == steps and p.error:
                skipped.setdefault(p.error, []).append(p.name)
        for err, names in skipped.items():
            groups = sorted({re.sub(r"_W[0-9A-Z]*_R[-0-9.e]+", "", n) for n in names})
            lines += ["", f"Skipped {len(names)} settings (groups {', '.join(groups)}): {err}"]
        lines += ["", f"Fewer-steps baseline ({steps}-step uncached output as reference):", "",
                  "| steps | compute saved | PSNR dB | max err | judge acc |", "|---|---|---|---|---|"]
        for p in sorted((p for p in points if p.steps == steps and p.cached is None and not p.error),
                        key=lambda p: p.saved):
            lines.append(f"| {p.name.split()[0]} | {p.saved:.1%} | {_fmt(p.psnr)} | {p.max_err:.3f} | {p.acc:.0%} |")
        lines.append("")
    text = "\n".join(lines)
    path.write_text(text)
    return text


def _fmt(x: float, sign: bool = False) -> str:
    if math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "inf"
    return f"{x:+.1f}" if sign else f"{x:.1f}"


def plot(points: list[Point], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    step_counts = sorted({p.steps for p in points})
    fig, axes = plt.subplots(1, len(step_counts), figsize=(6 * len(step_counts) + 4, 5), squeeze=False)
    for ax, steps in zip(axes[0], step_counts):
        base = sorted((p for p in points if p.steps == steps and p.cached is None and p.saved > 0),
                      key=lambda p: p.saved)
        ax.plot([p.saved for p in base], [p.psnr for p in base], "k.-", label="fewer steps (uncached)")
        cache = [p for p in points if p.steps == steps and p.cached is not None and math.isfinite(p.psnr)]
        curve = lambda p: re.sub(r"_R[-0-9.e]+", "", p.name)  # noqa: E731  (one curve per setting but R)
        for name in sorted({curve(p) for p in cache}):
            sel = sorted((p for p in cache if curve(p) == name), key=lambda p: p.saved)
            style = ("d:" if "_FoCa" in name else "v:") if "DBPrune" in name else (
                "s-." if "_FoCa" in name else "^--" if "_T" in name else "o-")
            label = name.replace("_W", " W") if "DBPrune" in name else f"DBCache {name}"
            ax.plot([p.saved for p in sel], [p.psnr for p in sel], style, alpha=0.8, label=f"{label}, R varies")
        ax.set(title=f"{steps} steps", xlabel="fraction of transformer-block compute saved",
               ylabel="PSNR vs uncached full-step output (dB)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # one legend, beside the plots
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(args: argparse.Namespace) -> list[Point]:
    torch.set_num_threads(args.threads)
    groups = specs(args.fn, args.bn, args.thresholds, args.taylor, args.warmup, args.mc, args.foca,
                   args.prune_thresholds)
    print(f"[bench] {sum(map(len, groups.values()))} cache settings in {len(groups)} compiled graphs × steps "
          f"{args.steps}, {args.samples} samples, guidance {args.guidance}", flush=True)
    points = run(args.steps, groups, args.samples, args.guidance, args.seed)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    header = (f"# Fidelity: DBCache and DBPrune vs fewer steps (digits DiT, {args.samples} samples, guidance {args.guidance}, "
              f"seed {args.seed}; cached runs through dit_cache_fx.compile, references uncached eager)\n\n"
              "PSNR is against the uncached output with the same seeds and step count; block compute saved = "
              "cached_steps·(N−Fn−Bn)/(steps·N) (DBPrune: pruned blocks/(steps·N)), N = 6 blocks. 'fewer steps, same compute' interpolates the "
              "uncached run with fewer steps at the same saved fraction; a positive gain means caching wins.")
    md = write_markdown(points, args.out_dir / "fidelity.md", header)
    plot(points, args.out_dir / "fidelity.png")
    print(md)
    print(f"[bench] wrote {args.out_dir / 'fidelity.md'} and {args.out_dir / 'fidelity.png'}", flush=True)
    return points
