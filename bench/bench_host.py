"""Host time per call, with the compiled graphs stubbed out: what dit_cache_fx adds around a graph call.

    python bench/bench_host.py                 # both modes, the peer bench's tiny model, threshold 0
    python bench/bench_host.py --real          # the same calls with the graphs running (both modes, and
                                               #   regional mode with outer="auto" after its background
                                               #   compile, and outer="inductor")
    python bench/bench_host.py --cached        # a cached step on the medium model against its bound
    python bench/bench_host.py --profile       # and a cProfile of our calls (whole graph; with --real, regional)

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
from bench_peer import SIZES

import dit_cache_fx
from dit_cache_fx._compat import compile_fx
from dit_cache_fx.api import handle_of

LISTS = ("transformer_blocks", "single_transformer_blocks")  # one region per list, as in the peer bench


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


def ours(model: torch.nn.Module, spec: str = "F1B0_R0", **kwargs) -> tuple[torch.nn.Module, list[Stub]]:
    return dit_cache_fx.compile(model, cache=dict.fromkeys(LISTS, spec), **kwargs), []


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


def interleaved(routes: dict, inputs: dict, rounds: int, n: int, before=None) -> dict[str, float]:
    """Median µs per call of each route over `rounds` interleaved rounds of `n` calls (`before(name, m)` runs
    untimed ahead of each route's round)."""
    times: dict[str, list] = {k: [] for k in routes}
    for _ in range(rounds):
        for name, m in routes.items():
            if before is not None:
                before(name, m)
            times[name].append(calls(m, inputs, n))
    return {k: statistics.median(v) for k, v in times.items()}


def host(a) -> None:
    """Item 1 / 3: per call, stubbed (host path) or real, on the peer bench's tiny model at threshold 0."""
    torch.set_num_threads(1)
    model, inputs = build(SIZES["tiny"])
    routes = {"torch.compile": plain(model), "dit_cache_fx": ours(model),
              "dit_cache_fx regional": ours(model, regional=True, outer="python")}
    if a.real:  # the default outer="auto" once its background compile is in (`wait_compiled`)
        routes["dit_cache_fx regional, outer=auto"] = ours(model, regional=True)
        routes["dit_cache_fx regional, outer=inductor"] = ours(model, regional=True, outer="inductor")
    for name, (m, stubs) in routes.items():
        calls(m, inputs, 4)  # compile
        if name.endswith("outer=auto"):
            assert dit_cache_fx.wait_compiled(m, timeout=600), "the background compile failed"
        if name.startswith("dit_cache_fx") and not a.real:
            stub_ours(m, stubs)
        for s in stubs:
            s.on = not a.real
        calls(m, inputs, 4)
    reset = lambda name, m: dit_cache_fx.reset(m) if name.startswith("dit_cache_fx") else None  # noqa: E731
    med = interleaved({k: m for k, (m, _) in routes.items()}, inputs, a.rounds, a.calls, reset)
    base, whole = med["torch.compile"], med["dit_cache_fx"]
    what = "µs per call, the graphs running" if a.real else "host µs per call, compiled graphs stubbed"
    print(f"{what} (tiny model, threshold 0; median of {a.rounds} interleaved rounds of {a.calls} calls):")
    for k, v in med.items():
        print(f"  {k:38s} {v:8.1f} µs  {v - base:+7.1f} µs over torch.compile  {v / whole:.2f}x the whole graph")
    if a.profile:
        m = routes["dit_cache_fx regional" if a.real else "dit_cache_fx"][0]
        prof = cProfile.Profile()
        prof.enable()
        calls(m, inputs, 2000)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)


def cached(a) -> None:
    """Item 2: a cached call of the medium model against its bound, the same model holding only the blocks
    a cached step computes (Fn of each list: one double and one single block) under torch.compile."""
    torch.set_num_threads(2)
    cfg = SIZES["medium"]
    model, inputs = build(cfg)
    kept, _ = build(dict(cfg, double=1, single=1))
    always = ours(model, spec="F1B0_W1_R1000")[0]  # after the first (computed) step, every step cached
    routes = {"torch.compile, all blocks": torch.compile(model), "torch.compile, kept blocks only (the bound)":
              torch.compile(kept), "dit_cache_fx, cached steps": always}
    for m in routes.values():
        calls(m, inputs, 3)

    def first_computed(name, m):  # each round's calls are the cached steps of one generation (timesteps 1 → 0)
        if m is always:
            dit_cache_fx.reset(m)
            with torch.no_grad():
                m(timestep=torch.tensor([2.0]), **inputs)

    n = max(a.calls // 20, 5)
    med = interleaved(routes, inputs, a.rounds, n, first_computed)
    s = dit_cache_fx.summary(always)
    assert len(s.cached_steps) == s.num_steps - 1, f"the cached route cached only steps {s.cached_steps}"
    bound = med["torch.compile, kept blocks only (the bound)"]
    print(f"ms per call (medium model, 2 threads; median of {a.rounds} interleaved rounds of {n} calls):")
    for k, v in med.items():
        print(f"  {k:44s} {v / 1e3:8.2f} ms")
    print(f"  a cached step at {bound / med['dit_cache_fx, cached steps']:.1%} of the block bound")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--real", action="store_true", help="the compiled graphs run (no stubs): whole calls")
    p.add_argument("--cached", action="store_true", help="a cached step of the medium model against its bound")
    a = p.parse_args()
    cached(a) if a.cached else host(a)


if __name__ == "__main__":
    main()
