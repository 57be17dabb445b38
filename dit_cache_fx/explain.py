"""`explain()`: what the passes found and did, in a report that fits a terminal screen.

`str(report)`: the model, every block run found (and what was not a run, and why), every region's
Fn | Mn | Bn split with block names and streams and its spec, graph count and breaks when measured, and
the few rewritten lines that matter. The full code is on the report (`report.code`, `report.branch_code`,
or `report.text(verbose=True)`); `report.save("regions.svg")` draws the regions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from . import _compat
from .api import compiled_modules, handle_of, is_pipeline
from .runtime import regional

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline


@dataclass
class RegionInfo:
    name: str
    spec: str
    blocks: list[str]  # block paths of the run, in order
    classes: list[str]  # block class per block
    Fn: int
    Bn: int
    streams: list[str]  # cached streams
    run_streams: list[str]  # streams the run carries

    @property
    def Mn(self) -> int:
        return len(self.blocks) - self.Fn - self.Bn

    def split_text(self) -> str:
        b = self.blocks
        part = lambda lo, hi: f" [{b[lo]}..{b[hi - 1]}]" if hi > lo else ""  # noqa: E731
        N = len(b)
        return (f"Fn={self.Fn}{part(0, self.Fn)} | Mn={self.Mn}{part(self.Fn, N - self.Bn)} | "
                f"Bn={self.Bn}{part(N - self.Bn, N)}")


@dataclass
class ExplainReport:
    model: str
    specs: str
    graph_count: int | None  # None: not measured (no example inputs given)
    graph_break_count: int | None
    break_reasons: list[str]
    runs: list[str]
    rejected: list[str]
    skipped: list[str]
    regions: list[RegionInfo]
    code: str  # the rewritten graph's code
    branch_code: dict[str, str] = field(default_factory=dict)
    compiled_graphs: int = 0
    compilation: str = "whole graph by inductor"  # or regional mode's block codes (`_compilation`)

    @property
    def split(self) -> str:
        """The first region's split (one-region models)."""
        return self.regions[0].split_text() if self.regions else "none"

    def excerpt(self, limit: int = 12) -> list[str]:
        """The rewritten lines that matter: decide, cond, stores, without SSA noise."""
        out = []
        for ln in self.code.splitlines():
            ln = ln.strip()
            if "higher_order.cond(" in ln or "policy_decide(" in ln or "taylor_store(" in ln:
                ln = re.sub(r";\s.*$", "", ln)
                ln = re.sub(r"\{'[^}]*\}", "{...}", ln)
                out.append(ln if len(ln) <= 110 else ln[:107] + "...")
        return out[:limit]

    def text(self, verbose: bool = False) -> str:
        out = [f"dit_cache_fx explain: {self.model}, cache={self.specs}"]
        if self.graph_count is None:
            out.append(f"graphs compiled: {self.compiled_graphs}; graph breaks: not measured (pass example inputs)")
        else:
            out.append(f"Dynamo graphs: {self.graph_count}, graph breaks: {self.graph_break_count}")
            out += [f"  break: {r}" for r in self.break_reasons[:5]]
        out.append(f"compiled: {self.compilation}")
        out.append("block runs found:")
        out += [f"  - {r}" for r in self.runs] or ["  (none)"]
        out += [f"  - not a run: {r}" for r in self.rejected]
        out += [f"  - not cached: {r}" for r in self.skipped]
        out.append(f"cache regions: {len(self.regions)}")
        for r in self.regions:
            out.append(f"  {r.name}  spec {r.spec}")
            out.append(f"    {r.split_text()}")
            out.append(f"    streams cached: {', '.join(r.streams)} (the run carries {', '.join(r.run_streams)})")
        lines = self.excerpt()
        if lines:
            out.append("where the graph changed:")
            out += [f"    {ln}" for ln in lines]
        if verbose:
            out += ["rewritten graph:", self.code]
            for name, code in self.branch_code.items():
                out += [f"branch {name}:", code]
        return "\n".join(out)

    def __str__(self) -> str:
        return self.text()

    def save(self, path: str) -> str:
        """Draw the regions as a strip of blocks (`.svg`, or `.png` with matplotlib installed)."""
        from .picture import save_regions

        return save_regions(self, path)


def explain(module: torch.nn.Module | DiffusionPipeline, *args: Any, **kwargs: Any
            ) -> ExplainReport | dict[str, ExplainReport]:
    """Report block runs, regions, the Fn/Mn/Bn split, and (given example inputs) graph breaks. A pipeline
    with several compiled denoisers gives one report per attribute (example inputs: name one denoiser)."""
    several = compiled_modules(module) if is_pipeline(module) else {}
    if len(several) > 1:
        if args or kwargs:
            raise TypeError(f"{type(module).__name__} has compiled denoisers {sorted(several)}: pass example inputs "
                            "to explain() of one of them")
        return {attr: explain(m) for attr, m in several.items()}
    handle = handle_of(module)
    graphs = breaks = None
    reasons: list[str] = []
    if args or kwargs:
        with torch.no_grad():
            if not handle.graphs:
                module(*args, **kwargs)
            graphs, breaks, reasons = _compat.count_graphs(_compat.compiled_original(module), *args,
                                                           fullgraph=_compat.compiled_fullgraph(module), **kwargs)
        reasons = [r.splitlines()[0] for r in reasons]
    if not handle.graphs:
        raise ValueError("nothing traced yet: call the module once, or pass example inputs to explain()")
    infos = [g for g in handle.graphs if g.record.regions] or handle.graphs
    main = infos[-1]
    regions = []
    for g in handle.graphs:
        for r in g.record.regions:
            if any(x.name == r.plan.name for x in regions):
                continue
            run = r.plan.run
            config = handle.store.configs.get(r.plan.name, r.plan.config)
            regions.append(RegionInfo(r.plan.name, str(config), [b.path for b in run.blocks],
                                      [getattr(b.cls, "__name__", "?") for b in run.blocks], r.plan.Fn, r.plan.Bn,
                                      [s.name for s in r.plan.streams], [s.name for s in run.streams]))
    rec = main.record
    runs = list(dict.fromkeys(r.describe() for g in handle.graphs for r in g.record.runs))
    rejected = list(dict.fromkeys(f"{x.name}: {x.reason}" for g in handle.graphs for x in g.record.rejected))
    skipped = list(dict.fromkeys(f"{n}: {why}" for g in handle.graphs for n, why in g.record.skipped))
    gm = rec.gm
    branch_code = {}
    if gm is not None:
        rids = tuple(f"{r.rid}_" for r in rec.regions)  # DBPrune: a cond per block, `r0_b3_compute`
        for name, child in gm.named_children():
            if name.startswith(rids) and name.endswith(("_compute", "_cached")):
                branch_code[name] = child.code
    return ExplainReport(type(_compat.compiled_original(module)).__name__, str(handle.specs), graphs, breaks,
                         reasons, runs, rejected, skipped, regions, main.code, branch_code, len(handle.graphs),
                         _compilation(handle))


def _compilation(handle) -> str:
    """How the graphs run: whole by inductor, or (regional mode) block codes called from the graph."""
    if not handle.regional:
        return "whole graph by inductor"
    graphs = [g.record.gm for g in handle.graphs if g.record.gm is not None]
    calls = [key for gm in graphs for key in regional.block_calls(gm)]
    around = {"python": "runs as FX code", "inductor": "compiled by inductor"}
    pending = " (until its compile in a child process is in: outer=\"auto\")"
    outer = " / ".join(dict.fromkeys(around[g.outer] + (pending if getattr(g.runner, "background", None) else "")
                                     for g in handle.graphs))
    return f"regional: {len(set(calls))} block codes for {len(calls)} blocks; the graph around them {outer}"
