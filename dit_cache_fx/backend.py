"""The Dynamo backend: copy the graph → run the passes → compile with inductor → a `GraphRunner` that
hands the compiled graph its state tensors.

Per compiled module one `CacheHandle` holds the run specs, the state store and what each graph got. Per
call: the module's forward wrapper (`api`) marks a call as begun; the first graph that runs classifies it
(step, branch, generation: `runtime.step`), then every graph passes the step context, its regions'
policies and their per-shape states as extra inputs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import re
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.fx import GraphModule, Node

from . import _compat
from .config import CFG_BRANCH_OF_NAME, RunSpecs
from .errors import CachePlanError, DitCacheError, UnsupportedWeightsError
from .passes.graph_utils import check_graph, placeholders, value_of
from .passes.outline import drop_unused_inputs, outline_graph
from .passes.pipeline import PipelineRecord, RegionRecord, run_passes
from .passes.rewrite import flatten_subclass_operands
from .passes.timestep import find_timestep
from .runtime import regional, registry, step
from .runtime.layout import RegionDims, StepContext

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------
# model inputs as Dynamo names them


@dataclass(frozen=True)
class InputPath:
    """Where a graph input comes from in the model call: `L['kwargs']['t']`, `L['args'][1]`, `L['t']`."""

    root: str  # "args", "kwargs" or "local"
    keys: tuple  # subscripts after the root, first one the argument (index or name)

    @classmethod
    def of(cls, node: Node) -> InputPath | None:
        name = _compat.dynamo_source_name(node)
        m = re.fullmatch(r"L\[['\"](\w+)['\"]\]((?:\[(?:\d+|['\"][^'\"]+['\"])\])*)", name or "")
        if m is None or m.group(1) == "self":
            return None
        keys = tuple(int(k) if k.isdigit() else k.strip("'\"") for k in re.findall(r"\[([^\]]+)\]", m.group(2)))
        if m.group(1) in ("args", "kwargs"):
            return cls(m.group(1), keys) if keys else None
        return cls("local", (m.group(1), *keys))

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


# ---------------------------------------------------------------------------------------------------------


@dataclass
class GraphInfo:
    """What the backend did with one Dynamo graph (for `explain`, `summary` and the tests)."""

    record: PipelineRecord
    num_nodes: int
    example_shapes: dict[str, tuple]
    code: str = ""
    runner: GraphRunner | None = None
    frame_children: frozenset = frozenset()  # first names of the module paths in the graph (`attn` in `attn.to_q`)
    outer: str = "inductor"  # how the graph runs: compiled by inductor, or (regional mode) as its Python code


@dataclass
class CacheHandle:
    """Per compiled module: run specs, state store, graphs seen, and the current call."""

    specs: RunSpecs
    signature: inspect.Signature
    store: Any  # runtime.store.StateStore
    on_no_blocks: str = "raise"
    inductor_options: dict = field(default_factory=dict)
    dynamic: bool | None = False
    group: str | None = None  # process group summing the diff (context parallel)
    regional: bool = False  # each distinct block compiled once (passes/outline.py)
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

    def classify(self, device: torch.device | None, in_graph: bool = False, eager: bool = False) -> None:
        """Advance the step context for the current call (once per call, by the first graph that runs):
        mark it pending for a graph that classifies it itself (`in_graph`), else classify it here (`eager`:
        with plain torch ops, for a rare call that needs the step on the host before the graph runs)."""
        c = self.call
        c.ran = True
        if not c.pending or device is None:
            return
        ctx = self.store.context(device)
        self.store.set_hint(ctx, c.hint)
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


class GraphRunner:
    """The callable the backend returns for a graph: appends the state tensors and runs it without grad."""

    def __init__(self, handle: CacheHandle, compiled: Callable, record: PipelineRecord,
                 symbols: dict, device: torch.device | None, kept: list[int] | None = None) -> None:
        self.handle, self.compiled, self.device = handle, compiled, device
        self.regions, self.signature = record.regions, record.inputs
        self.classifies = False  # the graph classifies a pending call itself
        self.kept = kept  # the Dynamo inputs the compiled graph takes (regional mode drops the weights only blocks read)
        self.shape_of = [_dims_evaluator(r.dims, symbols) for r in self.regions]
        self._extra: dict[tuple, list[torch.Tensor]] = {}
        self._states: dict[tuple, list] = {}  # per key: (region name, dims, state) of each region
        self._epoch = -1

    def __call__(self, *args):
        h = self.handle
        if not self.regions:  # a graph without a cache region leaves the step to the first one with a region
            h.call.ran = True
            taken = args if self.kept is None else [args[i] for i in self.kept]
            with torch.no_grad(), (regional.graph_inputs(args) if h.regional else contextlib.nullcontext()):
                return self.compiled(*taken)
        extra: list[torch.Tensor] | None = []
        keys = None
        if self.regions:
            store = h.store
            serial = store.mine().serial  # each thread its own state tensors
            if self._epoch != store.epoch:
                self._extra.clear()
                self._states.clear()
                self._epoch = store.epoch
            keys = (serial, *[ev(args)[0] for ev in self.shape_of])
            extra = self._extra.get(keys)
        if extra is None:  # new sizes: the host checks them against the step, so it classifies this call
            h.classify(self.device, eager=True)
            extra = self._extra[keys] = self._tensors(args, keys)
        else:
            h.classify(self.device, in_graph=self.classifies)
        states = self._states.get(keys)
        if states:
            for name, dims, state in states:
                h.store.note_call(name, dims, state)
        taken = list(args) if self.kept is None else [args[i] for i in self.kept]
        taken += extra
        if h.regional:
            with torch.no_grad(), regional.graph_inputs(args):
                return self.compiled(*taken)
        if not torch.is_grad_enabled():
            return self.compiled(*taken)
        with torch.no_grad():
            return self.compiled(*taken)

    def _tensors(self, args, keys) -> list[torch.Tensor]:
        """The added inputs of this call's sizes, bound by the graph's signature (`PipelineRecord.inputs`)."""
        store = self.handle.store
        groups = {(StepContext.prefix, None): store.context(self.device)}
        states = []
        for r, ev in zip(self.regions, self.shape_of):
            _, dims = ev(args)
            pol = store.policy(r.plan.name, r.plan.config, self.device)
            state = store.state(r.plan.name, dims, self.device)
            groups[pol.prefix, r.rid], groups[state.prefix, r.rid] = pol, state
            states.append((r.plan.name, dims, state))
        self._states[keys] = states
        return [groups[s.group, s.rid].tensor(s.slot) for s in self.signature]


def _dims_evaluator(dims: RegionDims, symbols: dict) -> Callable[[tuple], tuple[tuple, RegionDims]]:
    """`args -> (key, concrete dims)`: the region's stream shapes at this call's sizes (the key is cheap to
    build per call; equal keys mean equal dims)."""
    exprs = [_compat.sym_expr(s) for shape in (dims.hidden, *dims.streams) for s in shape]
    free = sorted({s for e in exprs if e is not None for s in e.free_symbols}, key=str)
    if not free:
        concrete = dataclasses.replace(dims, hidden=tuple(map(int, dims.hidden)),  # a PruneDims stays one
                                       streams=tuple(tuple(map(int, s)) for s in dims.streams))
        return lambda args: (concrete, concrete)
    missing = [s for s in free if s not in symbols]
    if missing:
        raise CachePlanError(f"cannot size the cache state: sizes {missing} are not graph inputs")
    getters = [symbols[s] for s in free]
    cache: dict[tuple, RegionDims] = {}

    def evaluate(args: tuple) -> tuple[tuple, RegionDims]:
        key = tuple(g(args) for g in getters)
        hit = cache.get(key)
        if hit is None:
            env = dict(zip(free, key))
            size = lambda s: _compat.eval_size(s, env)  # noqa: E731
            hit = cache[key] = dataclasses.replace(dims, hidden=tuple(map(size, dims.hidden)),
                                                   streams=tuple(tuple(map(size, s)) for s in dims.streams))
        return key, hit  # the runner's key: the symbol values; the store's: the dims

    return evaluate


def _frame_children(gm: GraphModule) -> frozenset:
    """The first names of the module paths the graph calls into, relative to the compiled frame's module."""

    return frozenset(_compat.module_path(path).split(".")[0] for n in gm.graph.nodes
                     for path, _ in (n.meta.get("nn_module_stack") or {}).values() if path.startswith("L['self']"))


def _symbols(inputs: list[Node]) -> dict:
    """sympy symbol → `args -> int`, from the graph's SymInt inputs and the sizes of its tensor inputs."""
    out: dict = {}
    for i, p in enumerate(inputs):
        v = value_of(p)
        e = _compat.sym_expr(v) if isinstance(v, torch.SymInt) else None
        if e is not None and e.is_Symbol:
            out.setdefault(e, lambda args, i=i: int(args[i]))
    for i, p in enumerate(inputs):
        v = value_of(p)
        if isinstance(v, torch.Tensor):
            for d, s in enumerate(v.shape):
                e = _compat.sym_expr(s)
                if e is not None and e.is_Symbol:
                    out.setdefault(e, lambda args, i=i, d=d: args[i].shape[d])
    return out


class CacheBackend:
    """`torch.compile(model, backend=CacheBackend(handle))`."""

    def __init__(self, handle: CacheHandle) -> None:
        self.handle = handle

    def __repr__(self) -> str:
        return f"dit_cache_fx(cache={self.handle.specs})"

    def __call__(self, gm: GraphModule, example_inputs: list) -> Callable:
        h = self.handle
        if h.check_hooks is not None:  # hooks added after compile: fail before anything runs
            h.check_hooks()
        gm = _compat.copy_dynamo_graph(gm)
        inputs = placeholders(gm)
        paths = {p: InputPath.of(p) for p in inputs}
        names = list(h.signature.parameters)
        arg_of = lambda p: paths[p].argument(names) if paths[p] is not None else None  # noqa: E731
        shapes = {p.name: tuple(value_of(p).shape) for p in inputs if isinstance(value_of(p), torch.Tensor)
                  and paths[p] is not None}
        self._note_graph(shapes)
        record = PipelineRecord(gm.code)
        if h.specs.enabled:
            timestep = self._find_timestep(gm, arg_of, names)
            hidden_inputs = [p for p in inputs if names and arg_of(p) == names[0]]
            record = run_passes(gm, h.specs, hidden_inputs, _compat.fake_mode_of([value_of(p) for p in inputs]), h.group,
                                timestep)
        kept, as_python = None, False
        if h.regional:
            block_options = {k: v for k, v in h.inductor_options.items() if k != "triton.cudagraphs"}
            outlined = outline_graph(gm, {p: i for i, p in enumerate(inputs)}, block_options)
            check_graph(gm)  # lint of the graph and its branches, no aliased cond operands
            regional.own(h, outlined.keys)
            kept = [i for i in drop_unused_inputs(gm, len(inputs)) if i < len(inputs)]
            example_inputs = [example_inputs[i] for i in kept]
            as_python = outlined.inline == 0  # a graph with no block at all (a hook's) runs as Python too
        # subclass weights (torchao) cross the conds as their plain inner tensors
        flattened = flatten_subclass_operands(gm) if record.regions else 0
        info = GraphInfo(record, len(gm.graph.nodes), shapes, gm.code, frame_children=_frame_children(gm),
                         outer="python" if as_python else "inductor")
        h.graphs.append(info)
        device = value_of(record.regions[0].plan.fn_out).device if record.regions else None
        if record.regions:
            log.info("dit_cache_fx: %s", "; ".join(f"{r.plan.name}: {r.plan.split_text()}" for r in record.regions))
        try:
            compiled = gm if as_python else self._inductor(gm, example_inputs)
        except Exception as e:
            if not flattened or isinstance(e, DitCacheError):
                raise
            raise UnsupportedWeightsError(
                f"dit_cache_fx: {flattened} tensor-subclass inputs of the cache regions (quantized weights?) cross "
                f"the torch.cond as their inner tensors, and compiling that failed ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}); compile with dit_cache_fx.compile(..., regional=True), "
                "which keeps the weights outside the cond") from e
        if device is None and h.store.ctx is not None:
            device = h.store.ctx.call.device
        info.runner = GraphRunner(h, compiled, record, _symbols(inputs), device, kept)
        info.runner.classifies = record.classifies
        return info.runner

    def _inductor(self, gm: GraphModule, example_inputs: list) -> Callable:
        """The graph compiled by inductor; its inputs: Dynamo's, then the state tensors the passes added.

        Without inductor's per-call size and stride asserts (unless the user asks for them): Dynamo's guards
        already check every input it passes (their sizes and strides), and the state tensors are ours, allocated
        with the layouts the graph was compiled for; on a small model the asserts cost more host time per call
        than the cache's own bookkeeping (about 150 checks per call on the tiny bench model)."""
        with _compat.backend_fake_mode(example_inputs):  # the state inputs' examples, in inductor's fake mode
            fakes = [torch.empty(v.shape, dtype=v.dtype, device=v.device) for v in
                     (value_of(n) for n in placeholders(gm)[len(example_inputs):])]
        options = {"size_asserts": False, **self.handle.inductor_options}
        with torch.no_grad(), _compat.compile_caches_for(registry.IN_GRAPH, registry.source_version()):
            return _compat.compile_fx(gm, [*example_inputs, *fakes], options)

    def _find_timestep(self, gm: GraphModule, arg_of, names: list[str]) -> Node | None:
        h = self.handle
        override = h.specs.step_config.timestep_arg
        node = find_timestep(gm, arg_of, names, override)
        h.input_names = tuple(dict.fromkeys([*h.input_names, *(n for p in placeholders(gm) if (n := arg_of(p)))]))
        if node is not None and h.timestep is None:
            h.timestep = InputPath.of(node)
            log.info("dit_cache_fx: the timestep is the input %r", arg_of(node))
        return node

    def _note_graph(self, shapes: dict[str, tuple]) -> None:
        h = self.handle
        if not h.graphs or h.dynamic or h.warned_shapes:
            return
        before = h.graphs[-1].example_shapes
        if shapes.keys() == before.keys() and shapes != before:
            h.warned_shapes = True
            changed = {k: (before[k], v) for k, v in shapes.items() if before[k] != v}
            warnings.warn(
                f"dit_cache_fx: compiling another graph for new input shapes {changed}: with static shapes every new "
                "resolution, batch size or text length compiles again; compile with dynamic=True to serve them "
                "all with one graph", stacklevel=2)
