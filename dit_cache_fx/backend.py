"""The Dynamo backend: copy the graph → find block runs → plan Fn|Mn|Bn → rewrite Mn as a cache
region → compile with inductor. Returns a callable that appends the cache state to the inputs."""

from __future__ import annotations

import functools
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.fx import GraphModule

from . import _compat, runtime
from .config import CacheConfig
from .passes import cache_region
from .passes.blocks import BlockRun, _sig, find_runs, main_run
from .passes.cache_region import rewrite_cache_region
from .passes.plan import RegionPlan, plan_region
from .runtime import RegionState

log = logging.getLogger(__name__)


class NoBlockRunError(ValueError):
    """The traced model has no run of repeated transformer blocks to cache."""


@dataclass
class GraphRecord:
    """What the backend did with one Dynamo graph (for `explain`)."""

    runs: list[BlockRun]
    plan: RegionPlan | None
    code: str
    branch_code: dict[str, str]
    state: RegionState | None
    num_nodes: int
    gm: GraphModule | None = None  # the rewritten graph, before inductor


@dataclass
class CacheHandle:
    """Per compiled module: config, the graphs seen, and the state used by the latest call."""

    config: CacheConfig | None
    hidden_input: str | None
    on_no_blocks: str = "raise"
    inductor_options: dict = field(default_factory=dict)  # from torch.compile's mode= / options=
    graphs: list[GraphRecord] = field(default_factory=list)
    active: RegionState | None = None

    @property
    def states(self) -> list[RegionState]:
        return [g.state for g in self.graphs if g.state is not None]


class CacheBackend:
    """`torch.compile(model, backend=CacheBackend(handle))`."""

    def __init__(self, handle: CacheHandle) -> None:
        self.handle = handle

    def __repr__(self) -> str:
        return f"dit_cache_fx(cache={self.handle.config})"

    def __call__(self, gm: GraphModule, example_inputs: list) -> callable:
        cfg = self.handle.config
        if cfg is None:
            with torch.no_grad():
                compiled = _compat.compile_fx(gm, example_inputs, self.handle.inductor_options)
            self.handle.graphs.append(GraphRecord([], None, gm.code, {}, None, len(gm.graph.nodes)))
            return _no_grad(compiled)
        gm = _compat.copy_dynamo_graph(gm)
        gm.meta["dit_cache_fx_hidden_input"] = self.handle.hidden_input
        runs = find_runs(gm)
        if not runs:
            record = GraphRecord([], None, gm.code, {}, None, len(gm.graph.nodes))
            self.handle.graphs.append(record)
            with torch.no_grad():
                return _no_grad(_compat.compile_fx(gm, example_inputs, self.handle.inductor_options))
        run = main_run(runs)
        plan = plan_region(gm, run, cfg.Fn_compute_blocks, cfg.Bn_compute_blocks, cfg.timestep_arg)
        hidden = _static_sig(plan.fn_out)
        streams = [_static_sig(s) for s in plan.stream_in]
        device = plan.fn_out.meta["example_value"].device
        orders = [cfg.taylorseer_order if name == "hidden" or cfg.taylorseer_encoder else 0
                  for name in plan.stream_names]
        state = RegionState.allocate(cfg, hidden, streams, orders, device)
        state.description = run.describe()
        rewrite_cache_region(gm, plan, orders)
        branch_code = {name: getattr(gm, name).code for name in ("dit_cache_compute", "dit_cache_cached")}
        self.handle.graphs.append(GraphRecord(runs, plan, gm.code, branch_code, state, len(gm.graph.nodes), gm))
        log.info("dit_cache_fx: caching %s as F%dM%dB%d", run.describe(), plan.Fn, plan.Mn, plan.Bn)
        with torch.no_grad(), _compat.compile_caches_for(_IN_GRAPH_FUNCTIONS, _source_version()):
            compiled = _compat.compile_fx(gm, [*example_inputs, *state.tensors], self.handle.inductor_options)
        handle, extra = self.handle, state.tensors

        def run_cached(*args):
            handle.active = state
            with torch.no_grad():
                return compiled(*args, *extra)

        return run_cached


_IN_GRAPH_FUNCTIONS = [runtime.decide, runtime.pick, runtime.store, cache_region._taylor_update,
                       cache_region._taylor_forecast]


@functools.cache
def _source_version() -> str:
    """Hash of the files whose code ends up in compiled graphs: the compile caches' key for them."""
    here = Path(__file__).parent
    files = [Path(runtime.__file__), Path(cache_region.__file__), *sorted((here / "kernels").glob("*.py"))]
    h = hashlib.sha256(torch.__version__.encode())
    for f in files:
        h.update(f.read_bytes())
    return "dit_cache_fx-" + h.hexdigest()[:16]


def _no_grad(fn):
    def run(*args):
        with torch.no_grad():
            return fn(*args)

    return run


def _static_sig(node) -> tuple:
    shape, dtype = _sig(node)
    if not all(isinstance(s, int) for s in shape):
        raise ValueError(
            "dit_cache_fx needs static shapes for the cached streams (got symbolic sizes "
            f"{shape}); compile with dynamic=False (the default used by dit_cache_fx.compile)")
    return shape, dtype
