"""`summary()`: cached steps and residual diffs of the latest generation, per cache region."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .api import handle_of
from .config import CacheConfig
from .runtime.layout import LOG_COLUMNS

_COL = {name: i for i, name in enumerate(LOG_COLUMNS)}


@dataclass
class BranchStats:
    cached_steps: list[int]
    residual_diffs: dict[int, float]
    # steps whose Fn residual, diff or stored stacks were not finite: they computed and restarted the stacks
    nonfinite_steps: list[int] = field(default_factory=list)


@dataclass
class RegionSummary:
    name: str
    config: CacheConfig | None
    split: str
    num_steps: int = 0
    branches: dict[int, BranchStats] = field(default_factory=dict)

    @property
    def cached_steps(self) -> list[int]:
        return self.branches[0].cached_steps if self.branches else []

    @property
    def residual_diffs(self) -> dict[int, float]:
        return self.branches[0].residual_diffs if self.branches else {}

    @property
    def nonfinite_steps(self) -> list[int]:
        return self.branches[0].nonfinite_steps if self.branches else []


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
                d = sorted(st.residual_diffs.values())
                q = [_pct(d, p) for p in (0, 25, 50, 75, 95, 100)]
                lines.append(f"| {r.name} | {'cond' if b == 0 else 'uncond'} | {len(st.cached_steps)}/{self.num_steps} | "
                             f"{st.cached_steps} | " + " | ".join(q) + " |")
        lines += [f"{r.name} {'cond' if b == 0 else 'uncond'}: non-finite values at steps {st.nonfinite_steps} "
                  "(computed; the cache restarted)" for r in self.regions.values() for b, st in r.branches.items()
                  if st.nonfinite_steps]
        return "\n".join(lines)


def _pct(sorted_vals: list[float], p: float) -> str:
    if not sorted_vals:
        return "-"
    k = (len(sorted_vals) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(sorted_vals) - 1)
    return f"{sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (k - lo):.3f}"


def summary(module: torch.nn.Module) -> CacheSummary:
    """Cached steps and residual diffs of the latest generation, per region (one host sync per state)."""
    handle = handle_of(module)
    store = handle.store
    regions = {r.plan.name: r.plan for r in handle.regions}
    rows = {name: torch.cat([s.records() for s in store.states(name)] or [torch.empty(0, len(LOG_COLUMNS))])
            for name in regions}
    gens = [float(r[:, _COL["gen"]].max()) for r in rows.values() if len(r)]
    out = CacheSummary(str(handle.specs), 0, False)
    if not gens:
        out.regions = {n: RegionSummary(n, store.configs.get(n, p.config), p.split_text()) for n, p in regions.items()}
        return out
    gen = max(gens)
    for name, plan in regions.items():
        r = rows[name]
        r = r[r[:, _COL["gen"]] == gen]
        r = r[r[:, _COL["call"]].argsort()].tolist()
        rs = RegionSummary(name, store.configs.get(name, plan.config), plan.split_text())
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
