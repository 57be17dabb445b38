"""`summary()`: cached steps and residual diffs of the latest generation, per cache region."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from .api import compiled_modules, handle_of, is_pipeline
from .config import CacheConfig
from .passes.prune import PrunePlan
from .runtime.layout import LOG_COLUMNS, PRUNE_LOG_COLUMNS

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

_COL = {name: i for i, name in enumerate(LOG_COLUMNS)}


@dataclass
class BranchStats:
    cached_steps: list[int]
    residual_diffs: dict[int, float]
    # steps whose Fn residual, diff or stored stacks were not finite: they computed and restarted the stacks
    nonfinite_steps: list[int] = field(default_factory=list)
    # DBPrune: blocks pruned per call, the blocks (run indices) pruned per step, each step's recorded diffs
    pruned_blocks: list[int] = field(default_factory=list)
    pruned: dict[int, list[int]] = field(default_factory=dict)
    block_diffs: dict[int, list[float]] = field(default_factory=dict)


@dataclass
class RegionSummary:
    name: str
    config: CacheConfig | None
    split: str
    num_steps: int = 0
    branches: dict[int, BranchStats] = field(default_factory=dict)
    blocks_covered: int = 0  # blocks in the region's run
    blocks_listed: int = 0  # blocks in the block lists the run spans (more: the run stopped early)

    @property
    def cached_steps(self) -> list[int]:
        return self.branches[0].cached_steps if self.branches else []

    @property
    def residual_diffs(self) -> dict[int, float]:
        return self.branches[0].residual_diffs if self.branches else {}

    @property
    def nonfinite_steps(self) -> list[int]:
        return self.branches[0].nonfinite_steps if self.branches else []

    num_blocks: int = 0  # DBPrune: blocks of the run (cache-dit's `actual_blocks` per call)

    @property
    def pruned_blocks(self) -> list[int]:
        """DBPrune: blocks pruned per call of branch 0 (cache-dit's `pruned_blocks`)."""
        return self.branches[0].pruned_blocks if self.branches else []

    @property
    def pruned_ratio(self) -> float | None:
        """DBPrune: pruned blocks / blocks run, branch 0 (cache-dit's `pruned_ratio`); None if nothing ran."""
        calls = self.pruned_blocks
        return sum(calls) / (len(calls) * self.num_blocks) if calls and self.num_blocks else None


@dataclass
class CacheSummary:
    """Stats of the latest (or current) generation. `cached_steps`, `residual_diffs` and `branches` are
    the first region's (the one nearest the model's input); `regions` has them all."""

    specs: str
    num_steps: int
    separate_cfg: bool
    regions: dict[str, RegionSummary] = field(default_factory=dict)

    @property
    def first(self) -> RegionSummary | None:
        return next(iter(self.regions.values()), None)

    @property
    def cached_steps(self) -> list[int]:
        return self.first.cached_steps if self.first else []

    @property
    def residual_diffs(self) -> dict[int, float]:
        return self.first.residual_diffs if self.first else {}

    @property
    def nonfinite_steps(self) -> list[int]:
        return self.first.nonfinite_steps if self.first else []

    @property
    def branches(self) -> dict[int, BranchStats]:
        return self.first.branches if self.first else {}

    @property
    def pruned_blocks(self) -> list[int]:
        return self.first.pruned_blocks if self.first else []

    @property
    def pruned_ratio(self) -> float | None:
        return self.first.pruned_ratio if self.first else None

    def __str__(self) -> str:
        lines = [f"dit_cache_fx summary: cache={self.specs}"]
        if not self.regions:
            return "\n".join(lines + ["no cache region yet: call the model (no generation has run)"])
        if self.num_steps == 0:
            return "\n".join(lines + ["no generation yet: the model has not been called"])
        lines.append(f"steps: {self.num_steps}, separate CFG: {self.separate_cfg}")
        lines += ["| region | branch | cached | cached steps | diff P00 | P25 | P50 | P75 | P95 | max |",
                  "|---" * 10 + "|"]
        for r in self.regions.values():
            for b, st in r.branches.items():
                d = sorted(st.residual_diffs.values()) or sorted(  # DBPrune: every block's recorded diffs
                    x for v in st.block_diffs.values() for x in v if x >= 0)
                q = [_pct(d, p) for p in (0, 25, 50, 75, 95, 100)]
                lines.append(f"| {r.name} | {'cond' if b == 0 else 'uncond'} | {len(st.cached_steps)}/{self.num_steps} | "
                             f"{st.cached_steps} | " + " | ".join(q) + " |")
        lines += [f"{r.name}: covers {r.blocks_covered} of the {r.blocks_listed} blocks in its lists (the run stopped "
                  "early; explain() says why)" for r in self.regions.values() if r.blocks_covered < r.blocks_listed]
        lines += [f"{r.name} {'cond' if b == 0 else 'uncond'}: non-finite values or an undefined diff at steps "
                  f"{st.nonfinite_steps} (a NaN/Inf, or 0/0 when the Fn residual and its anchor are both zero, e.g. a "
                  "zero-initialized modulation: computed; the cache restarted)" for r in self.regions.values() for b, st in r.branches.items()
                  if st.nonfinite_steps]
        lines += [f"{r.name}: DBPrune ratio {r.pruned_ratio:.2%} ({sum(r.pruned_blocks)}/{len(r.pruned_blocks) * r.num_blocks}"
                  " blocks pruned, branch 0)" for r in self.regions.values() if r.pruned_ratio is not None]
        return "\n".join(lines)


def _pct(sorted_vals: list[float], p: float) -> str:
    if not sorted_vals:
        return "-"
    k = (len(sorted_vals) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(sorted_vals) - 1)
    return f"{sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (k - lo):.3f}"


def summary(module: torch.nn.Module | DiffusionPipeline) -> CacheSummary | dict[str, CacheSummary]:
    """Cached steps and residual diffs of the latest generation, per region (one host sync per state). A
    pipeline with several compiled denoisers (Wan 2.2's two experts) gives one summary per attribute."""
    several = compiled_modules(module) if is_pipeline(module) else {}
    if len(several) > 1:
        return {attr: summary(m) for attr, m in several.items()}
    handle = handle_of(module)
    store = handle.store
    regions = {r.plan.name: r.plan for r in handle.regions}
    coverage = {name: dict(zip(("blocks_covered", "blocks_listed"), handle.coverage(plan.run)))
                for name, plan in regions.items()}
    pruning = {name: prune_records(store.states(name)) for name, p in regions.items() if isinstance(p, PrunePlan)}
    rows = {name: torch.cat([s.records() for s in store.states(name)] or [torch.empty(0, len(LOG_COLUMNS))])
            for name in regions if name not in pruning}
    rows.update({name: r[0] for name, r in pruning.items()})  # their gen and step columns are at the same place
    gens = [float(r[:, _COL["gen"]].max()) for r in rows.values() if len(r)]
    out = CacheSummary(str(handle.specs), 0, False)
    if not gens:
        out.regions = {n: RegionSummary(n, store.configs.get(n, p.config), p.split_text(), **coverage[n])
                       for n, p in regions.items()}
        return out
    gen = max(gens)
    for name, plan in regions.items():
        if name in pruning:
            out.regions[name] = prune_summary(name, store.configs.get(name, plan.config), plan, pruning[name], gen)
            continue
        r = rows[name]
        r = r[r[:, _COL["gen"]] == gen]
        r = r[r[:, _COL["call"]].argsort()].tolist()
        rs = RegionSummary(name, store.configs.get(name, plan.config), plan.split_text(), **coverage[name])
        for row in r:
            step, b = int(row[_COL["step"]]), int(row[_COL["branch"]])
            st = rs.branches.setdefault(b, BranchStats([], {}))
            if row[_COL["cached"]]:
                st.cached_steps.append(step)
            if row[_COL["consulted"]]:
                st.residual_diffs[step] = row[_COL["diff"]]
            if row[_COL["nonfinite"]] == 1:
                st.nonfinite_steps.append(step)
        rs.branches = dict(sorted(rs.branches.items()))
        rs.num_steps = int(max((row[_COL["step"]] for row in r), default=-1)) + 1
        out.regions[name] = rs
    out.num_steps = max(r.num_steps for r in out.regions.values())
    out.separate_cfg = any(1 in r.branches for r in out.regions.values())
    return out


_PCOL = {name: i for i, name in enumerate(PRUNE_LOG_COLUMNS)}
assert all(_PCOL[k] == _COL[k] for k in ("call", "gen", "step", "branch"))


def prune_records(states: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A DBPrune region's logged calls over its per-shape states: (log, per-block diffs, per-block pruned)."""
    parts = [s.records() for s in states]
    if not parts:
        return torch.empty(0, len(PRUNE_LOG_COLUMNS)), torch.empty(0, 0), torch.empty(0, 0, dtype=torch.bool)
    return tuple(torch.cat([p[i] for p in parts]) for i in range(3))


def prune_summary(name: str, config, plan, records, gen: float) -> RegionSummary:
    """The RegionSummary of a DBPrune region for generation `gen`: cached steps are the steps with a pruned
    block (cache-dit's pruned steps), plus per call the blocks pruned and per step the recorded diffs."""
    log, diffs, pruned = records
    keep = log[:, _PCOL["gen"]] == gen
    log, diffs, pruned = log[keep], diffs[keep], pruned[keep]
    order = log[:, _PCOL["call"]].argsort()
    ids = [j for j, _ in plan.blocks]
    rs = RegionSummary(name, config, plan.split_text(), num_blocks=len(plan.run.blocks))
    for row, d, p in zip(log[order].tolist(), diffs[order].tolist(), pruned[order].tolist()):
        step, b = int(row[_PCOL["step"]]), int(row[_PCOL["branch"]])
        st = rs.branches.setdefault(b, BranchStats([], {}))
        st.pruned_blocks.append(int(row[_PCOL["pruned"]]))
        blocks = [j for j, x in zip(ids, p) if x]
        if blocks:
            st.cached_steps.append(step)
            st.pruned[step] = blocks
        if row[_PCOL["nonfinite"]] > 0 and step not in st.nonfinite_steps:
            st.nonfinite_steps.append(step)
        recorded = [x for x in d if x == x]  # NaN: not consulted
        if recorded:
            st.block_diffs[step] = recorded
    rs.branches = dict(sorted(rs.branches.items()))
    rs.num_steps = int(max((row[_PCOL["step"]] for row in log.tolist()), default=-1)) + 1
    return rs
