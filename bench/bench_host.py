"""Host time per call, with the compiled graphs stubbed out: what dit_cache_fx adds around a graph call.

    python bench/bench_host.py                 # both modes, the tiny Flux-like model, threshold 0
    python bench/bench_host.py --profile       # and a cProfile of the dit_cache_fx whole-graph calls

Each route is compiled as usual (inductor) and run once; then the compiled callable behind each Dynamo
graph is replaced by one that returns that first call's outputs. What a call still costs is host work
only: Dynamo's guards and frame entry, and (dit_cache_fx) the forward wrapper, the runner's state
binding and the step bookkeeping. The same stub sits behind plain `torch.compile`, so the difference is
our host path per call, free of kernel-time noise. Routes are built once and timed in interleaved
rounds; medians.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time

import torch
from bench_compile import build
from torch._inductor.compile_fx import compile_fx

import dit_cache_fx
from dit_cache_fx.api import handle_of

TINY = dict(hidden_heads=2, head_dim=16, double=1, single=2, side=4, txt=4)


class Stub:
    """Runs `fn` on the first call, then returns those outputs without running anything."""

    def __init__(self, fn):
        self.fn, self.out, self.on = fn, None, False

    def __call__(self, *args):
        if not self.on or self.out is None:
            self.out = self.fn(*args)
        return self.out


def plain(model: torch.nn.Module) -> tuple[torch.nn.Module, list[Stub]]:
    stubs: list[Stub] = []

    def backend(gm, example_inputs):
        stubs.append(Stub(compile_fx(gm, example_inputs)))
        return stubs[-1]

    return torch.compile(model, backend=backend), stubs


def ours(model: torch.nn.Module, **kwargs) -> tuple[torch.nn.Module, list[Stub]]:
    return dit_cache_fx.compile(model, cache="F1B0_R0", **kwargs), []


def stub_ours(compiled: torch.nn.Module, stubs: list[Stub]) -> None:
    for g in handle_of(compiled).graphs:
        g.runner.compiled = Stub(g.runner.compiled)
        stubs.append(g.runner.compiled)


def calls(model, inputs: dict, n: int) -> float:
    """µs per call over `n` calls (timesteps of one generation)."""
    with torch.no_grad():
        t0 = time.perf_counter()
        for i in range(n):
            model(timestep=torch.tensor([1.0 - i / n]), **inputs)
        return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--real", action="store_true", help="the compiled graphs run (no stubs): whole calls")
    a = p.parse_args()
    torch.set_num_threads(1)
    model, inputs = build(TINY)
    routes = {"torch.compile": plain(model), "dit_cache_fx": ours(model),
              "dit_cache_fx regional": ours(model, regional=True)}
    for name, (m, stubs) in routes.items():
        calls(m, inputs, 4)  # compile
        if name.startswith("dit_cache_fx") and not a.real:
            stub_ours(m, stubs)
        for s in stubs:
            s.on = not a.real
        calls(m, inputs, 4)
    times = {k: [] for k in routes}
    for _ in range(a.rounds):
        for name, (m, _) in routes.items():
            dit_cache_fx.reset(m) if name.startswith("dit_cache_fx") else None
            times[name].append(calls(m, inputs, a.calls))
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["torch.compile"]
    what = "whole calls" if a.real else "host µs per call, compiled graphs stubbed"
    print(f"{what} (median of {a.rounds} interleaved rounds of {a.calls} calls):")
    for k, v in med.items():
        print(f"  {k:24s} {v:7.1f} µs   {v - base:+7.1f} µs over torch.compile ({v / base:.2f}x)")
    if a.profile:
        m = routes["dit_cache_fx regional" if a.real else "dit_cache_fx"][0]
        prof = cProfile.Profile()
        prof.enable()
        calls(m, inputs, 2000)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
