"""Side by side with cache-dit on a Flux-like transformer: DBCache and DBPrune, eager and compiled.

    python bench/bench_peer.py --out bench/bench_peer.md       # needs cache-dit 1.5.3 installed beside us
    python bench/bench_peer.py --sizes tiny --rounds 3          # a shorter run

Every route is built once (its own copy of one random-weight model, compiled by its first generation) and
then timed in interleaved rounds (each round runs one generation of every route), medians per route:

    eager, torch.compile                                     no cache (the baselines)
    dit_cache_fx, + regional [, outer=python|inductor]        `dit_cache_fx.compile(m, cache=SPEC[, regional=True[, outer=...]])`
                                                             (regional's default outer="auto" timed after
                                                             `wait_compiled`: its glue compiled in a child)
    cache-dit, + regional compile, + torch.compile           `cache_dit.enable_cache(...)`, then nothing /
                                                             `m.compile_repeated_blocks()` / `torch.compile(m)`

for DBCache and DBPrune at the same config: cache-dit's `BlockAdapter` over the double and the single blocks
makes one cache context per list, so ours gets the same spec per list (`{list: spec}`: one region each) and
both decide alike (equal cached steps and pruned blocks per list on a first generation; in later ones
cache-dit's refresh without a pipeline shifts by a step, README deviation 2). A row gives ms per generation,
its ratio to the best cache-dit route of the same technique, cached steps (DBCache) or the pruned ratio
(DBPrune, over all blocks), and the relative error of the last output against the uncached eager generation.
The DBCache table also gives the block bound: the computed steps at `torch.compile`'s cost per step and the
cached ones at the share of blocks they still compute (Fn + Bn of each list).
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from bench_compile import build

import dit_cache_fx
from dit_cache_fx import CacheConfig

# hidden = heads × head_dim; 2 double + 6 single blocks (`bench_compile.build`)
SIZES = {
    "tiny": dict(hidden_heads=2, head_dim=32, double=2, single=6, img=64, txt=8),
    "medium": dict(hidden_heads=4, head_dim=64, double=2, single=6, img=512, txt=32),
}
STEPS = 28
CHILD_MARK = "bench_peer rows: "
SPECS = {"DBCache": "F1B0_W4_R0.6", "DBPrune": "DBPrune_F1B0_W4_R0.2"}


def generation(model: Callable, inputs: dict) -> torch.Tensor:
    """A simulated 28-step Euler loop; returns the last output."""
    x, rest = inputs["hidden_states"], {k: v for k, v in inputs.items() if k != "hidden_states"}
    with torch.no_grad():
        for i in range(STEPS):
            out = model(hidden_states=x, timestep=torch.tensor([1.0 - i / STEPS]), **rest)[0]
            x = x - out / STEPS
    return out


# ---- the routes ----------------------------------------------------------------------------------------


@dataclass
class Route:
    name: str
    technique: str  # "" (uncached), "DBCache" or "DBPrune"
    fn: Callable
    stats: Callable[[], str] = lambda: ""


LISTS = ("transformer_blocks", "single_transformer_blocks")


def pruned_ratio(per_list: list[list[int]], n_blocks: int) -> float:
    """Pruned blocks over all the blocks the calls ran (`per_list`: pruned blocks per call, one list each)."""
    return sum(map(sum, per_list)) / (len(per_list[0]) * n_blocks)


def ours(base: torch.nn.Module, technique: str, regional: bool, outer: str | None = None) -> Route:
    m = dit_cache_fx.compile(copy.deepcopy(base), cache=dict.fromkeys(LISTS, SPECS[technique]), regional=regional,
                             outer=outer)
    n_blocks = sum(len(getattr(base, name)) for name in LISTS)

    def stats() -> str:
        s = dit_cache_fx.summary(m)
        if technique == "DBPrune":
            return f"{pruned_ratio([r.pruned_blocks for r in s.regions.values()], n_blocks):.0%} pruned"
        return f"{len(s.cached_steps)} cached"

    name = "dit_cache_fx" + (" regional" if regional else "") + (f", outer={outer}" if outer else "")
    return Route(name, technique, m, stats)


def cache_dit_route(base: torch.nn.Module, technique: str, how: str) -> Route:
    import cache_dit

    c = CacheConfig.parse(SPECS[technique])
    # num_inference_steps: cache-dit starts a new generation every 28 calls (no pipeline around the transformer)
    kwargs = dict(num_inference_steps=STEPS, Fn_compute_blocks=c.Fn_compute_blocks, Bn_compute_blocks=c.Bn_compute_blocks,
                  max_warmup_steps=c.max_warmup_steps, residual_diff_threshold=c.residual_diff_threshold)
    config = cache_dit.DBPruneConfig(**kwargs) if technique == "DBPrune" else cache_dit.DBCacheConfig(**kwargs)
    m = copy.deepcopy(base)
    n_blocks = sum(len(getattr(base, name)) for name in LISTS)
    cache_dit.enable_cache(
        cache_dit.BlockAdapter(transformer=m, blocks=[m.transformer_blocks, m.single_transformer_blocks],
                               forward_pattern=[cache_dit.ForwardPattern.Pattern_1,
                                                cache_dit.ForwardPattern.Pattern_1]),
        cache_config=config)
    fn: Callable = m
    if how == "compile":
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        fn = torch.compile(m)
    elif how == "regional":
        m.compile_repeated_blocks()

    def stats() -> str:
        per_list = cache_dit.summary(m)[:-1]  # one entry per block list, then the transformer's
        if technique == "DBPrune":
            return f"{pruned_ratio([s.pruned_blocks for s in per_list], n_blocks):.0%} pruned"
        return f"{len(per_list[0].cached_steps)} cached"

    name = {"eager": "cache-dit", "regional": "cache-dit + regional compile", "compile": "cache-dit + torch.compile"}
    return Route(name[how], technique, fn, stats)


def routes(base: torch.nn.Module, with_cache_dit: bool) -> list[Route]:
    out = [Route("eager", "", base), Route("torch.compile", "", torch.compile(copy.deepcopy(base)))]
    for technique in SPECS:
        out += [ours(base, technique, False), ours(base, technique, True),  # regional: outer="auto", the default
                ours(base, technique, True, "python"), ours(base, technique, True, "inductor")]
        if with_cache_dit:
            out += [cache_dit_route(base, technique, how) for how in ("eager", "regional", "compile")]
    return out


# ---- measuring -----------------------------------------------------------------------------------------


def measure(size_name: str, rounds: int, with_cache_dit: bool) -> list[str]:
    base, inputs = build(SIZES[size_name])
    rs = routes(base, with_cache_dit)
    first, ref = {}, None
    # first generations (compiles, and the output every row is judged by); cache-dit + torch.compile last: its
    # graph breaks inside the blocks leave Dynamo skip marks on the blocks' code that a later trace of another
    # copy would inherit
    order = sorted(rs, key=lambda r: (r.name == "cache-dit + torch.compile", r.name.startswith("cache-dit")))
    for r in order:
        print(f"{size_name}: first generation of {r.name} {r.technique}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        out = generation(r.fn, inputs)
        first[r.name, r.technique] = time.perf_counter() - t0
        ref = out if r.name == "eager" else ref
    for r in rs:  # outer="auto": timed once the graph around the blocks runs as the code its child compiled
        if r.name == "dit_cache_fx regional":
            assert dit_cache_fx.wait_compiled(r.fn, timeout=600), "the background compile failed"
    times: dict[tuple[str, str], list[float]] = {(r.name, r.technique): [] for r in rs}
    errs: dict[tuple[str, str], float] = {}
    for _ in range(rounds):
        for r in rs:
            t0 = time.perf_counter()
            out = generation(r.fn, inputs)
            times[r.name, r.technique].append(time.perf_counter() - t0)
            errs[r.name, r.technique] = float((out - ref).norm() / ref.norm())
    ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    size = SIZES[size_name]
    n_blocks = size["double"] + size["single"]
    lines = [f"### {size_name}: hidden {size['hidden_heads'] * size['head_dim']}, {size['double']}+{size['single']} blocks, "
             f"{size['img']}+{size['txt']} tokens, {STEPS} steps, {rounds} rounds", ""]
    for tech in ("", *SPECS):
        rows = [r for r in rs if r.technique == tech]
        peer = [ms[r.name, tech] for r in rows if r.name.startswith("cache-dit")]
        best = min(peer) if peer else None
        head = "no cache" if not tech else f"{tech} `{SPECS[tech]}`"
        lines += [f"{head}:", "", "| route | ms / generation | best cache-dit / this | caching | rel. err vs eager "
                  "| first generation s |", "|---|---|---|---|---|---|"]
        for r in rows:
            k = (r.name, tech)
            vs = f"{best / ms[k]:.2f}×" if best and tech else ""
            lines.append(f"| {r.name} | {ms[k]:.1f} | {vs} | {r.stats()} | {errs[k]:.1e} | {first[k]:.1f} |")
        if tech == "DBCache":
            c = CacheConfig.parse(SPECS[tech])
            cached = len(dit_cache_fx.summary(next(r.fn for r in rows if r.name == "dit_cache_fx")).cached_steps)
            per_step = ms["torch.compile", ""] / STEPS
            kept = len(LISTS) * (c.Fn_compute_blocks + c.Bn_compute_blocks)
            bound = per_step * ((STEPS - cached) + cached * kept / n_blocks)
            lines.append(f"\nblock bound ({STEPS - cached} computed steps at torch.compile's {per_step:.2f} ms, "
                         f"{cached} cached at {kept}/{n_blocks} of it): {bound:.1f} ms; dit_cache_fx at "
                         f"{bound / ms['dit_cache_fx', tech]:.0%} of it")
        lines.append("")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="tiny,medium")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # one size, rows as JSON
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with_cd = importlib.util.find_spec("cache_dit") is not None
    if not with_cd and not args.child:
        print("cache-dit is not installed: its rows are left out", file=sys.stderr)
    import diffusers

    lines = ["# dit_cache_fx next to cache-dit", "",
             f"`python bench/bench_peer.py --sizes {args.sizes} --rounds {args.rounds}`: torch {torch.__version__}, "
             f"diffusers {diffusers.__version__}, cache-dit {importlib.metadata.version('cache-dit') if with_cd else '-'}, CPU, {args.threads} threads. "
             "Routes built once, timed in interleaved rounds, medians.", ""]
    if args.child:
        print(CHILD_MARK + json.dumps(measure(args.sizes, args.rounds, with_cd)))
        return
    for name in args.sizes.split(","):
        # each size in a fresh process: cache-dit + torch.compile graph-breaks inside the blocks' code, and the
        # skip marks Dynamo leaves on it would reach the next size's traces of the same block classes
        cmd = [sys.executable, __file__, "--sizes", name, "--rounds", str(args.rounds), "--threads",
               str(args.threads), "--child"]
        out = subprocess.run(cmd, capture_output=True, text=True)
        rows = [json.loads(x[len(CHILD_MARK):]) for x in out.stdout.splitlines() if x.startswith(CHILD_MARK)]
        if out.returncode or not rows:
            lines += [f"### {name}: failed", "", "```", *out.stderr.strip().splitlines()[-5:], "```", ""]
        else:
            lines += rows[0]
        print("\n".join(lines))
        if args.out:
            with open(args.out, "w") as f:
                f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
