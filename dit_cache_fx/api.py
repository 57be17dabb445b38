"""Public entry points: compile, summary, reset, configure, explain."""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from . import _compat
from .backend import CacheBackend, CacheHandle, NoBlockRunError
from .config import CacheConfig, as_config

_HANDLE_ATTR = "_dit_cache_fx"


def compile(module: torch.nn.Module, cache: str | CacheConfig | None = "F8B0", *,
            on_no_blocks: str = "raise", **torch_compile_kwargs: Any) -> torch.nn.Module:
    """Compile `module` with DBCache step caching rewritten into the graph.

    Args:
        module: a diffusers transformer (or any module whose forward runs a list of repeated blocks).
        cache: a spec string (`"F8B0_W8MC3_R0.08_T1"`, see `CacheConfig`), a `CacheConfig`, or None for
            plain `torch.compile` through the same backend.
        on_no_blocks: "raise" (default) or "compile": what to do when the traced model has no run of
            repeated blocks; "compile" warns and compiles it without a cache.
        **torch_compile_kwargs: passed to `torch.compile` (`fullgraph`, ...); `mode=` and `options=` become
            inductor config for our backend, as with the default backend; `dynamic` must stay False.

    Returns:
        A drop-in module (`torch.compile`'s wrapper): same call signature and outputs, and attribute
        access (`config`, `dtype`, `device`, ...) reaches the original module.

    Example:
        >>> pipe.transformer = dit_cache_fx.compile(pipe.transformer, cache="F8B0")
        >>> image = pipe(prompt, num_inference_steps=28).images[0]
        >>> print(dit_cache_fx.summary(pipe.transformer))
    """
    if on_no_blocks not in ("raise", "compile"):
        raise ValueError(f"on_no_blocks must be 'raise' or 'compile', got {on_no_blocks!r}")
    if "backend" in torch_compile_kwargs:
        raise ValueError("dit_cache_fx.compile chooses the backend itself; drop backend=")
    mode = torch_compile_kwargs.pop("mode", None)
    options = dict(_compat.inductor_mode_options(mode) if mode else {})
    options.update(torch_compile_kwargs.pop("options", None) or {})
    if torch_compile_kwargs.get("dynamic"):
        raise ValueError("dit_cache_fx.compile needs static shapes: dynamic=True is not supported")
    torch_compile_kwargs.setdefault("dynamic", False)
    # each compiled wrapper keeps its own Dynamo entries: several cache settings of one model class (or
    # several diffusers models sharing a forward wrapper) neither count as each other's recompiles nor
    # exhaust the shared recompile limit
    torch_compile_kwargs.setdefault("isolate_recompiles", True)
    config = None if cache is None else as_config(cache)
    handle = CacheHandle(config, _first_input_name(module), on_no_blocks, options)
    compiled = torch.compile(module, backend=CacheBackend(handle), **torch_compile_kwargs)
    # on the wrapper itself (its __setattr__ would forward to the original module, which several compiled
    # wrappers may share)
    compiled.__dict__[_HANDLE_ATTR] = handle
    if config is not None:
        hook = compiled.register_forward_hook(lambda *_: _check_found(handle, hook))
    return compiled


def _first_input_name(module: torch.nn.Module) -> str | None:
    params = [p for p in inspect.signature(module.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return params[0].name if params else None


def _check_found(handle: CacheHandle, hook) -> None:
    """After the first call: a cache was asked for, so some graph must have had a block run."""
    if not handle.graphs:
        return
    hook.remove()
    if handle.states:
        return
    sizes = ", ".join(str(g.num_nodes) for g in handle.graphs)
    msg = (f"dit_cache_fx found no run of repeated transformer blocks in the traced model ({len(handle.graphs)} "
           f"graph(s) of {sizes} nodes): a run is >= 2 consecutive `<list>.<i>` submodules whose outputs feed "
           "the next one directly. Nothing would be cached")
    if handle.on_no_blocks == "raise":
        raise NoBlockRunError(msg + "; pass on_no_blocks='compile' to compile it without a cache.")
    warnings.warn(msg + "; compiled without a cache.", stacklevel=3)


def _handle(module: torch.nn.Module) -> CacheHandle:
    handle = module.__dict__.get(_HANDLE_ATTR)
    if handle is None:
        raise TypeError(f"{type(module).__name__} was not compiled by dit_cache_fx.compile")
    return handle


def reset(module: torch.nn.Module) -> None:
    """Start a new generation at the next call (one is also started automatically when the timestep
    does not move forward)."""
    for state in _handle(module).states:
        state.reset()


def configure(module: torch.nn.Module, cache: str | CacheConfig) -> None:
    """Change threshold, warmup, M, MC or CFG mode of a compiled module without recompiling.

    Fn, Bn and the TaylorSeer order shape the graph; changing them needs `dit_cache_fx.compile` again.
    """
    handle = _handle(module)
    new = as_config(cache)
    old = handle.config
    if old is None:
        raise ValueError("this module was compiled with cache=None; compile it again with a cache")
    structural = ("Fn_compute_blocks", "Bn_compute_blocks", "taylorseer_order", "timestep_arg")
    changed = [f for f in structural if getattr(new, f) != getattr(old, f)]
    if changed:
        raise ValueError(f"changing {', '.join(changed)} changes the graph: call dit_cache_fx.compile again on the "
                         "original module (module._orig_mod)")
    handle.config = new
    for state in handle.states:
        state.set_policy(new)


# ---------------------------------------------------------------------------------------------
# summary


@dataclass
class BranchStats:
    cached_steps: list[int]
    residual_diffs: dict[int, float]


@dataclass
class CacheSummary:
    """Stats of the latest (or current) generation."""

    config: CacheConfig | None
    region: str
    num_steps: int
    separate_cfg: bool
    branches: dict[int, BranchStats] = field(default_factory=dict)

    @property
    def cached_steps(self) -> list[int]:
        return self.branches[0].cached_steps if self.branches else []

    @property
    def residual_diffs(self) -> dict[int, float]:
        return self.branches[0].residual_diffs if self.branches else {}

    def __str__(self) -> str:
        lines = [f"dit_cache_fx summary: cache={self.config}, region={self.region}",
                 f"steps: {self.num_steps}, separate CFG: {self.separate_cfg}"]
        head = "| branch | cached | cached steps | diff P00 | P25 | P50 | P75 | P95 | max |"
        lines += [head, "|---" * 9 + "|"]
        for b, st in self.branches.items():
            d = sorted(st.residual_diffs.values())
            q = [_pct(d, p) for p in (0, 25, 50, 75, 95, 100)]
            name = "cond" if b == 0 else "uncond"
            lines.append(f"| {name} | {len(st.cached_steps)}/{self.num_steps} | {st.cached_steps} | "
                         + " | ".join(q) + " |")
        return "\n".join(lines)


def _pct(sorted_vals: list[float], p: float) -> str:
    if not sorted_vals:
        return "-"
    k = (len(sorted_vals) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(sorted_vals) - 1)
    return f"{sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (k - lo):.3f}"


def summary(module: torch.nn.Module) -> CacheSummary:
    """Cached steps and residual diffs of the latest generation (one host sync)."""
    handle = _handle(module)
    state = handle.active
    if state is None:
        return CacheSummary(handle.config, "", 0, False)
    rec = state.records()
    if len(rec) == 0:
        return CacheSummary(handle.config, state.description, 0, False)
    gen = rec[-1, 0]
    rec = rec[rec[:, 0] == gen].tolist()
    branches: dict[int, BranchStats] = {}
    for _, step, b, cached, consulted, diff in rec:
        st = branches.setdefault(int(b), BranchStats([], {}))
        if cached:
            st.cached_steps.append(int(step))
        if consulted:
            st.residual_diffs[int(step)] = float(diff)
    num_steps = int(max(r[1] for r in rec)) + 1
    return CacheSummary(state.config, state.description, num_steps, 1 in branches, dict(sorted(branches.items())))


# ---------------------------------------------------------------------------------------------
# explain


@dataclass
class ExplainReport:
    config: CacheConfig | None
    graph_count: int
    graph_break_count: int
    break_reasons: list[str]
    runs: list[str]
    split: str
    code: str
    branch_code: dict[str, str]

    def __str__(self) -> str:
        out = [f"dit_cache_fx explain: cache={self.config}",
               f"Dynamo graphs: {self.graph_count}, graph breaks: {self.graph_break_count}"]
        out += [f"  break: {r}" for r in self.break_reasons]
        out.append("block runs found:")
        out += [f"  - {r}" for r in self.runs] or ["  (none)"]
        out.append(f"cache region: {self.split}")
        excerpt = [ln.strip() for ln in self.code.splitlines() if "dit_cache" in ln or "higher_order.cond" in ln]
        if excerpt:
            out.append("where the graph changed:")
            out += [f"    {ln[:160]}{' ...' if len(ln) > 160 else ''}" for ln in excerpt if not ln.startswith("def ")]
        out.append("rewritten graph:")
        out.append(self.code)
        for name, code in self.branch_code.items():
            out.append(f"branch {name}:")
            out.append(code)
        return "\n".join(out)


def explain(module: torch.nn.Module, *args: Any, **kwargs: Any) -> ExplainReport:
    """Trace (if given inputs) and report block runs, forward patterns, the Fn/Mn/Bn split, graph
    breaks and the rewritten graph's code."""
    handle = _handle(module)
    breaks, reasons, graphs = 0, [], len(handle.graphs)
    if args or kwargs:
        with torch.no_grad():
            if not handle.graphs:
                module(*args, **kwargs)
            graphs, breaks, reasons = _compat.count_graphs(module._orig_mod, *args, **kwargs)
        reasons = [r.splitlines()[0] for r in reasons]
    recs = [g for g in handle.graphs if g.plan is not None] or handle.graphs
    if not recs:
        raise ValueError("nothing traced yet: call the module once, or pass example inputs to explain()")
    rec = recs[-1]
    runs = [r.describe() for r in rec.runs]
    split = "none"
    if rec.plan is not None:
        p = rec.plan
        names = [b.path for b in p.run.blocks]
        split = (f"Fn={p.Fn} [{names[0]}..{names[p.Fn - 1]}] | Mn={p.Mn} [{names[p.Fn]}..{names[p.Fn + p.Mn - 1]}]"
                 f" | Bn={p.Bn}" + (f" [{names[-p.Bn]}..{names[-1]}]" if p.Bn else "")
                 + f"; streams cached: {', '.join(p.stream_names)}")
    return ExplainReport(handle.config, graphs, breaks, reasons, runs, split, rec.code, rec.branch_code)
