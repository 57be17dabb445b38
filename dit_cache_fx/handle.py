"""Per compiled module: its `CacheHandle` (run specs, state store, the graphs the backend made) and, per
thread, the `CallState` of its current call; `InputPath` names where a graph input comes from in the call.

Per call: the module's forward wrapper (`api`) marks a call as begun; the first graph with a cache region
that runs classifies it (step, branch, generation: `runtime.step`).
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from . import _compat
from .config import CFG_BRANCH_OF_NAME, RunSpecs
from .errors import CachePlanError
from .passes.pipeline import PipelineRecord, RegionRecord
from .runtime import step
from .runtime.store import StateStore, ThreadStates

if TYPE_CHECKING:
    from torch.fx import Node


@dataclass(frozen=True)
class InputPath:
    """Where a graph input comes from in the model call: `L['kwargs']['t']`, `L['args'][1]`, `L['t']`."""

    root: str  # "args", "kwargs" or "local"
    keys: tuple  # subscripts after the root, first one the argument (index or name)

    @classmethod
    def of(cls, node: Node) -> InputPath | None:
        parsed = _compat.dynamo_input_source(node)
        if parsed is None or parsed[0] == "self":
            return None
        local, keys = parsed
        if local in ("args", "kwargs"):
            return cls(local, keys) if keys else None
        return cls("local", (local, *keys))

    def argument(self, signature: list[str]) -> str | None:
        """The model argument's name."""
        first = self.keys[0]
        if self.root == "args":
            return signature[first] if first < len(signature) else None
        return first

    def fetch(self, sig: inspect.Signature, args: tuple, kwargs: dict) -> Any:
        if self.root == "args":
            value, rest = args[self.keys[0]], self.keys[1:]
        elif self.root == "kwargs":
            value, rest = kwargs[self.keys[0]], self.keys[1:]
        else:
            value, rest = sig.bind_partial(*args, **kwargs).arguments[self.keys[0]], self.keys[1:]
        for k in rest:
            value = value[k]
        return value



@dataclass
class GraphInfo:
    """What the backend did with one Dynamo graph (for `explain`, `summary` and the tests)."""

    record: PipelineRecord
    num_nodes: int
    example_shapes: dict[str, tuple]
    code: str = ""
    runner: Callable | None = None  # runner.GraphRunner: what the backend returned for the graph
    frame_children: frozenset = frozenset()  # first names of the module paths in the graph (`attn` in `attn.to_q`)
    outer: str = "inductor"  # how the graph runs: compiled by inductor, or (regional mode) as its Python code


@dataclass
class CacheHandle:
    """Per compiled module: run specs, state store, graphs seen, and the current call."""

    specs: RunSpecs
    signature: inspect.Signature
    store: StateStore
    on_no_blocks: str = "raise"
    inductor_options: dict = field(default_factory=dict)
    dynamic: bool | None = False
    group: str | None = None  # process group summing the diff (context parallel)
    regional: bool = False  # each distinct block compiled once (passes/outline.py)
    outer: str = "auto"  # regional mode's outer graph: "python" (its FX code), "inductor", or "auto" (`api.compile`)
    block_modules: dict[str, set[str]] = field(default_factory=dict)  # block list -> names of modules in a block
    list_sizes: dict[str, int] = field(default_factory=dict)  # block list -> its number of blocks
    graphs: list[GraphInfo] = field(default_factory=list)
    timestep: InputPath | None = None
    input_names: tuple[str, ...] = ()
    marks_generations: bool = False  # the pipeline form of `compile` resets at every pipeline call
    warned_shapes: bool = False  # "a new shape compiles another graph", said once
    warned_eager: bool = False  # "a call ran without the compiled graphs", said once
    warned_names: bool = False  # "the pipeline names calls we do not understand", said once
    warned_ambiguous: bool = False  # "the timesteps cannot show where a generation ends", said once
    checked: bool = False  # the first call's "found something to cache" check is done
    checks_done: int = 0  # calls whose step context was read for `ambiguous`
    check_hooks: Callable[[], None] | None = None  # raises for offload hooks that split the graph (api)
    offload: Any = None  # the model's diffusers group offloading (`offload.GroupOffload`), run around the graphs
    _calls: threading.local = field(default_factory=threading.local, repr=False)

    @property
    def regions(self) -> list[RegionRecord]:
        return [r for g in self.graphs for r in g.record.regions]

    def coverage(self, run) -> tuple[int, int]:
        """(blocks in the run, blocks in the lists it spans): fewer covered means the run stopped early."""
        return len(run.blocks), sum(self.list_sizes.get(c, 0) for c in run.lists) or len(run.blocks)

    @property
    def call(self) -> CallState:
        """The calling thread's current call."""
        c = getattr(self._calls, "state", None)
        if c is None:
            c = self._calls.state = CallState()
        return c

    def begin_call(self, args: tuple, kwargs: dict) -> CallState:
        c = self.call
        c.pending, c.ran, c.args = True, False, (args, kwargs)
        c.hint = CFG_BRANCH_OF_NAME.get(c.name, -1) if c.name is not None else -1
        return c

    def classify(self, device: torch.device, in_graph: bool = False, eager: bool = False,
                 mine: ThreadStates | None = None) -> None:
        """Advance the step context for the current call (once per call, by the first graph with a region):
        mark it pending for a graph that classifies it itself (`in_graph`), else classify it here (`eager`:
        with plain torch ops, for a rare call that needs the step on the host before the graph runs). `mine`:
        the calling thread's states, when the caller already looked them up."""
        c = self.call
        c.ran = True
        if not c.pending:
            return
        ctx = self.store.context(device, mine)
        self.store.set_hint(ctx, c.hint, mine)
        if in_graph:
            ctx.pending.fill_(True)
            c.pending = False
            return
        if self.timestep is None:
            raise CachePlanError(
                "dit_cache_fx could not find the model's timestep input (the input that feeds its timestep "
                f"embedding) among the inputs {list(self.input_names)}; pass CacheConfig(timestep_arg=<name>)")
        t = self.timestep.fetch(self.signature, *c.args)
        if not isinstance(t, torch.Tensor):
            t = torch.tensor(float(t))
        step.classify(ctx, t, None if eager else self.store.classifiers)
        c.pending = False


@dataclass
class CallState:
    """One thread's current call of the module."""

    pending: bool = False  # a call began and is not classified yet
    ran: bool = False  # a compiled graph ran during the call
    args: tuple = ((), {})
    name: str | None = None  # the pipeline's `cache_context` name around the call
    hint: int = -1  # the CFG branch that name gives (-1: none)
