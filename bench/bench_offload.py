"""Offloading with the cache on CPU: what diffusers' group offloading costs per pipeline call, eager and compiled.

    python bench/bench_offload.py [--rounds 5] [--out bench/bench_offload.md]

The tiny Flux pipeline of the tests, 10 steps, `F1B0_W2_R0.5` (the same steps cached on every route). Group
offloading onloads to the CPU (`onload_device=cpu`): from memory the hooks move nothing, so that row is their
host overhead; to disk (`offload_to_disk_path`) every onload reads the group's safetensors file, so that row
also shows what a cached step saves by never onloading the blocks it skips. Routes are built once and timed in
interleaved rounds; medians. Onloads per call are counted on diffusers' `ModuleGroup.onload_`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import dit_cache_fx

SPEC, STEPS = "F1B0_W2_R0.5", 10


def tiny_flux():
    """The tests' tiny Flux pipeline recipe (`tests/tiny_pipelines.py`)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from tiny_pipelines import PIPELINES

    return PIPELINES["flux"]


def offloaded(pipe, kind: str | None, disk: bool):
    if kind is not None:
        extra = {"num_blocks_per_group": 1} if kind == "block_level" else {}
        if disk:
            extra["offload_to_disk_path"] = tempfile.mkdtemp(prefix="dcf_offload_")
        pipe.transformer.enable_group_offload(onload_device=torch.device("cpu"), offload_type=kind, **extra)
    return pipe


def routes(P) -> dict:
    out = {}
    for kind, disk in [(None, False), ("block_level", False), ("block_level", True), ("leaf_level", True)]:
        where = "" if kind is None else f" + group {kind}{' to disk' if disk else ''}"
        out[f"eager{where}"] = lambda k=kind, d=disk: offloaded(P.build(), k, d)
        for regional in (False, True):
            name = f"dit_cache_fx{' regional' if regional else ''}{where}"
            out[name] = lambda k=kind, d=disk, r=regional: dit_cache_fx.compile(offloaded(P.build(), k, d), cache=SPEC,
                                                                               regional=r)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    P = tiny_flux()
    from diffusers.hooks.group_offloading import ModuleGroup

    onloads = [0]
    real = ModuleGroup.onload_
    ModuleGroup.onload_ = lambda self: (onloads.__setitem__(0, onloads[0] + 1), real(self))[1]
    import warnings

    warnings.simplefilter("ignore")
    built = {}
    for name, make in routes(P).items():
        pipe = make()
        pipe.set_progress_bar_config(disable=True)
        pipe(**P.call_kwargs(STEPS))  # compile, warm
        built[name] = pipe
    times = {name: [] for name in built}
    counts, cached = {}, {}
    for _ in range(args.rounds):
        for name, pipe in built.items():
            onloads[0] = 0
            t = time.perf_counter()
            pipe(**P.call_kwargs(STEPS))
            times[name].append(time.perf_counter() - t)
            counts[name] = onloads[0]
            if name.startswith("dit_cache_fx"):
                cached[name] = len(dit_cache_fx.summary(pipe.transformer).cached_steps)
    lines = [f"# Offloading on CPU (tiny Flux pipeline, {STEPS} steps, `{SPEC}`, {args.rounds} interleaved rounds, "
             f"medians; torch {torch.__version__})", "",
             "| route | ms per pipeline call | steps cached | group onloads per call |", "|---|---|---|---|"]
    for name in built:
        lines.append(f"| {name} | {1e3 * statistics.median(times[name]):.0f} | {cached.get(name, 0)}/{STEPS} | "
                     f"{counts[name] if 'group' in name else '-'} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
