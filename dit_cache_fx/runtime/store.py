"""Host side: the state tensors of one compiled module, allocated on first use.

    StepContext     one per calling thread, shared by every graph and region of the module
    RegionPolicy    one per region name (the run it caches), shared by every graph and shape
    RegionState     one per region name and concrete stream shapes, least recently used dropped beyond
                    `max_shapes` per region; `release()` drops them all

So one graph compiled with `dynamic=True` serves every resolution with a fresh state per shape, and a
generation at a new shape never sees another shape's anchor.

The step context and the per-shape states are kept per calling thread (`ThreadStates`): one compiled model
called from several threads runs each thread's generations on their own, as if alone. A finished thread's
states are dropped at the next new thread; `release()` drops all.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..config import CacheConfig
from ..errors import ShapeChangedError
from .layout import RegionDims, RegionPolicy, RegionState, StepContext, policy_group, state_group


@dataclass
class ShapeState:
    dims: RegionDims
    state: RegionState


@dataclass
class ThreadStates:
    """One calling thread's step context and per-shape states: threads never share a generation."""

    thread: weakref.ref  # the thread (a dead or finished thread's states are dropped)
    serial: int  # never reused: runners key their cached tensors by it
    ctx: StepContext | None = None
    shapes: dict[str, OrderedDict[RegionDims, ShapeState]] = field(default_factory=dict)
    last_hidden: dict[str, tuple] = field(default_factory=dict)  # per region: its last two distinct hidden shapes
    hint: int = -1  # the branch hint last written to `ctx.hint`
    used: int = 0  # when it last ran a call (the store's clock)

    def alive(self) -> bool:
        t = self.thread()
        return t is not None and t.is_alive()


class StateStore:
    def __init__(self, cfg_mode: bool | None, max_shapes: int = 4) -> None:
        if max_shapes < 1:
            raise ValueError(f"max_shapes must be >= 1, got {max_shapes}")
        self.cfg_mode, self.max_shapes = cfg_mode, max_shapes
        self.policies: dict[str, RegionPolicy] = {}
        self.configs: dict[str, CacheConfig] = {}
        self.threads: dict[int, ThreadStates] = {}  # by id(thread), checked against the weak reference
        self.classifiers: dict[torch.device, Callable] = {}  # the host's compiled step classifier, per device
        self.lock = threading.RLock()
        self.epoch = 0  # bumped whenever a state is dropped: runners re-fetch their tensors
        self._serial = self._clock = 0

    # ---- the calling thread ----
    def mine(self) -> ThreadStates:
        """The calling thread's states (created on its first call; dead threads' states dropped then)."""
        t = threading.current_thread()
        mine = self.threads.get(id(t))
        if mine is None or mine.thread() is not t:
            with self.lock:
                dead = [k for k, v in self.threads.items() if not v.alive()]
                for k in dead:
                    del self.threads[k]
                self.epoch += bool(dead)
                self._serial += 1
                mine = self.threads[id(t)] = ThreadStates(weakref.ref(t), self._serial)
        self._clock += 1
        mine.used = self._clock
        return mine

    def _view(self) -> ThreadStates | None:
        """Whose states `ctx`/`states()` report: the calling thread's, else the thread that ran last."""
        t = threading.current_thread()
        mine = self.threads.get(id(t))
        if mine is not None and mine.thread() is t and mine.ctx is not None:
            return mine
        return max(self.threads.values(), key=lambda v: v.used, default=None)

    @property
    def ctx(self) -> StepContext | None:
        view = self._view()
        return view.ctx if view is not None else None

    def context(self, device: torch.device, mine: ThreadStates | None = None) -> StepContext:
        """The calling thread's step context (`mine`: its states, when the caller already looked them up)."""
        mine = mine or self.mine()
        if mine.ctx is None or mine.ctx.call.device != device:
            mine.ctx, mine.hint = StepContext.allocate(device), -1
            mine.ctx.cfg_mode.fill_(self._mode_value())
        return mine.ctx

    def set_hint(self, ctx: StepContext, hint: int, mine: ThreadStates | None = None) -> None:
        """The CFG branch the pipeline named for the calling thread's next call (-1: none)."""
        mine = mine or self.mine()
        if mine.hint != hint:
            ctx.hint.fill_(hint)
            mine.hint = hint

    def _mode_value(self) -> int:
        return {None: -1, False: 0, True: 1}[self.cfg_mode]

    def set_cfg_mode(self, mode: bool | None) -> None:
        self.cfg_mode = mode
        for t in list(self.threads.values()):
            if t.ctx is not None:
                t.ctx.cfg_mode.fill_(self._mode_value())

    def policy(self, name: str, config: CacheConfig, device: torch.device) -> RegionPolicy:
        pol = self.policies.get(name)
        if pol is None:
            with self.lock:
                pol = self.policies.get(name)
                if pol is None:
                    pol = policy_group(config).allocate(device)
                    pol.load(self.configs.setdefault(name, config))
                    self.policies[name] = pol
        return pol

    def configure(self, name: str, config: CacheConfig) -> None:
        self.configs[name] = config
        if name in self.policies:
            self.policies[name].load(config)

    def state(self, name: str, dims: RegionDims, device: torch.device) -> RegionState:
        mine = self.mine()
        per_shape = mine.shapes.setdefault(name, OrderedDict())
        key = dims
        hit = per_shape.get(key)
        if hit is not None:
            per_shape.move_to_end(key)
            return hit.state
        if per_shape:
            self._check_new_shape(name, next(reversed(per_shape.values())).dims, dims, mine.ctx)
        per_shape[key] = ShapeState(dims, state_group(dims).allocate(device, dims))
        while len(per_shape) > self.max_shapes:
            per_shape.popitem(last=False)
            self.epoch += 1
        return per_shape[key].state

    def note_call(self, name: str, dims: RegionDims, state: RegionState, mine: ThreadStates) -> None:
        """Per call and region, before its graph runs: when the hidden stream's shape differs from the
        region's previous call, `state` (the state at the new shape) starts over — its counters count as
        never used, so this call computes and stores a fresh anchor. Inside a generation only the batch can
        change (`_check_new_shape`): a pipeline that stops or starts batching CFG part-way (Z-Image's
        `cfg_truncation`) keeps its step count and warmup, and never compares against an anchor of
        another batch or of an earlier part of the generation. A host-side compare, no device read."""
        recent = mine.last_hidden.get(name, ())  # the last two distinct shapes: CFG branches may differ in text length
        if dims.hidden not in recent:
            if recent:
                state.gen.fill_(-1)
        if not recent or recent[-1] != dims.hidden:
            mine.last_hidden[name] = (*recent[-1:], dims.hidden)

    @staticmethod
    def _check_new_shape(name: str, old: RegionDims, new: RegionDims, ctx: StepContext | None) -> None:
        """A new shape of the latents is fine at the start of a generation (one host read, once per new
        shape); in the middle of one only its batch may change (CFG batched for part of the steps)."""
        batch_only = len(old.hidden) == len(new.hidden) and old.hidden[1:] == new.hidden[1:]
        if old.hidden != new.hidden and not batch_only and ctx is not None and int(ctx.step) > 0:
            raise ShapeChangedError(
                f"region {name}: the hidden stream changed shape from {list(old.hidden)} to {list(new.hidden)} at "
                f"step {int(ctx.step)} of a generation; a generation keeps one latents shape. Call "
                "dit_cache_fx.reset(model) before starting one at a new shape")

    def states(self, name: str | None = None) -> list[RegionState]:
        """The per-shape states of the calling thread (or of the thread that ran last)."""
        view = self._view()
        if view is None:
            return []
        names = [name] if name is not None else list(view.shapes)
        return [s.state for n in names for s in view.shapes.get(n, {}).values()]

    def release(self) -> None:
        """Drop every thread's step context and per-shape states, and the compiled step classifier (their
        memory is freed once the graphs no longer hold them)."""
        with self.lock:
            self.threads.clear()
            self.classifiers.clear()
            self.epoch += 1

    def reset(self, everywhere: bool = True) -> None:
        """The next call starts a new generation: in every thread, or (`everywhere=False`) in the calling
        one."""
        targets = list(self.threads.values()) if everywhere else [self.mine()]
        for t in targets:
            if t.ctx is not None:
                t.ctx.reset.fill_(True)
