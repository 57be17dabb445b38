"""The callable the backend returns for a graph: `GraphRunner` binds the graph's added inputs (the step
context, each region's policy and per-shape state, in the order of the graph's signature,
`PipelineRecord.inputs`) and runs it without grad.

Per call the key is the thread's state serial and the regions' symbol values (a dict lookup); a new key
sizes the states on the host (`_dims_evaluator`) and has the host classify that call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch.fx import Node

from . import _compat
from .errors import CachePlanError
from .handle import CacheHandle
from .passes.graph_utils import value_of
from .passes.pipeline import PipelineRecord
from .runtime import regional
from .runtime.layout import RegionDims, StepContext


class GraphRunner:
    """The callable the backend returns for a graph: appends the state tensors and runs it without grad."""

    def __init__(self, handle: CacheHandle, compiled: Callable, record: PipelineRecord,
                 symbols: dict, device: torch.device | None, kept: list[int] | None = None) -> None:
        self.handle, self.compiled, self.device = handle, compiled, device
        self._outside: tuple = (None, frozenset())  # (offload, the groups whose weights the graph reads itself)
        self.regions, self.signature = record.regions, record.inputs
        self.classifies = False  # the graph classifies a pending call itself
        self.kept = kept  # the Dynamo inputs the compiled graph takes (regional mode drops the weights only blocks read)
        self.shape_of = [_dims_evaluator(r.dims, symbols) for r in self.regions]
        # per key: the added inputs, and (region name, dims, state) of each region
        self._bound: dict[tuple, tuple[list[torch.Tensor], list]] = {}
        self._epoch = -1
        self.background = None  # background.OuterCompile: the graph's compiled code, on its way (outer="auto")

    def __call__(self, *args):
        h = self.handle
        if self.background is not None:
            self.background.step()
        if not self.regions:  # a graph without a cache region leaves the step to the first one with a region
            h.call.ran = True
            return self._run(args, args if self.kept is None else [args[i] for i in self.kept])
        store = h.store
        if self._epoch != store.epoch:
            self._bound.clear()
            self._epoch = store.epoch
        mine = store.mine()
        keys = (mine.serial, *[ev(args)[0] for ev in self.shape_of])  # each thread its own state tensors
        bound = self._bound.get(keys)
        if bound is None:  # new sizes: the host checks them against the step, so it classifies this call
            h.classify(self.device, eager=True, mine=mine)
            bound = self._bound[keys] = self._tensors(args)
        else:
            h.classify(self.device, in_graph=self.classifies, mine=mine)
        extra, states = bound
        for name, dims, state in states:
            store.note_call(name, dims, state, mine)
        taken = list(args) if self.kept is None else [args[i] for i in self.kept]
        taken += extra
        if not h.regional and not torch.is_grad_enabled():
            return self.compiled(*taken)
        return self._run(args, taken)

    def _run(self, args: tuple, taken: list) -> object:
        h = self.handle
        if not h.regional:
            with torch.no_grad():
                return self.compiled(*taken)
        offload = h.offload
        if offload is not None:  # the groups of the weights read outside the block calls: for the whole graph
            if self._outside[0] is not offload:
                self._outside = offload, offload.read_by(taken)
            offload.onload(self._outside[1])
        stack = regional.frames()
        stack.append(regional.Frame(args, offload))
        try:
            if not torch.is_grad_enabled():
                return self.compiled(*taken)
            with torch.no_grad():
                return self.compiled(*taken)
        finally:
            stack.pop()

    def _tensors(self, args) -> tuple[list[torch.Tensor], list]:
        """The added inputs of this call's sizes, bound by the graph's signature (`PipelineRecord.inputs`),
        and each region's (name, dims, state)."""
        store = self.handle.store
        groups = {(StepContext.prefix, None): store.context(self.device)}
        states = []
        for r, ev in zip(self.regions, self.shape_of):
            _, dims = ev(args)
            pol = store.policy(r.plan.name, r.plan.config, self.device)
            state = store.state(r.plan.name, dims, self.device)
            groups[pol.prefix, r.rid], groups[state.prefix, r.rid] = pol, state
            states.append((r.plan.name, dims, state))
        return [groups[s.group, s.rid].tensor(s.slot) for s in self.signature], states


def _dims_evaluator(dims: RegionDims, symbols: dict) -> Callable[[tuple], tuple[tuple, RegionDims]]:
    """`args -> (key, concrete dims)`: the region's stream shapes at this call's sizes (the key is cheap to
    build per call; equal keys mean equal dims)."""
    exprs = [_compat.sym_expr(s) for shape in (dims.hidden, *dims.streams) for s in shape]
    free = sorted({s for e in exprs if e is not None for s in e.free_symbols}, key=str)
    if not free:
        concrete = dataclasses.replace(dims, hidden=tuple(map(int, dims.hidden)),  # a PruneDims stays one
                                       streams=tuple(tuple(map(int, s)) for s in dims.streams))
        return lambda args: ((), concrete)  # static sizes: nothing to key
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


def input_symbols(inputs: list[Node]) -> dict:
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
