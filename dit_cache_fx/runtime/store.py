"""Host side: the state tensors of one compiled module, allocated on first use.

    StepContext     one, shared by every graph and region of the module
    RegionPolicy    one per region name (the run it caches), shared by every graph and shape
    RegionState     one per region name and concrete stream shapes, least recently used dropped beyond
                    `max_shapes` per region; `release()` drops them all

So one graph compiled with `dynamic=True` serves every resolution with a fresh state per shape, and a
generation at a new shape never sees another shape's anchor.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from ..config import CacheConfig
from ..errors import ShapeChangedError
from .layout import RegionDims, RegionPolicy, RegionState, StepContext


@dataclass
class ShapeState:
    dims: RegionDims
    state: RegionState


class StateStore:
    def __init__(self, cfg_mode: bool | None, max_shapes: int = 4) -> None:
        if max_shapes < 1:
            raise ValueError(f"max_shapes must be >= 1, got {max_shapes}")
        self.cfg_mode, self.max_shapes = cfg_mode, max_shapes
        self.ctx: StepContext | None = None
        self.policies: dict[str, RegionPolicy] = {}
        self.configs: dict[str, CacheConfig] = {}
        self.shapes: dict[str, OrderedDict[RegionDims, ShapeState]] = {}
        self.epoch = 0  # bumped whenever a state is dropped: runners re-fetch their tensors

    def context(self, device: torch.device) -> StepContext:
        if self.ctx is None or self.ctx.call.device != device:
            self.ctx = StepContext.allocate(device)
            self.set_cfg_mode(self.cfg_mode)
        return self.ctx

    def set_cfg_mode(self, mode: bool | None) -> None:
        self.cfg_mode = mode
        if self.ctx is not None:
            self.ctx.cfg_mode.fill_({None: -1, False: 0, True: 1}[mode])

    def policy(self, name: str, config: CacheConfig, device: torch.device) -> RegionPolicy:
        pol = self.policies.get(name)
        if pol is None:
            pol = self.policies[name] = RegionPolicy.allocate(device)
            pol.load(self.configs.setdefault(name, config))
        return pol

    def configure(self, name: str, config: CacheConfig) -> None:
        self.configs[name] = config
        if name in self.policies:
            self.policies[name].load(config)

    def state(self, name: str, dims: RegionDims, device: torch.device) -> RegionState:
        per_shape = self.shapes.setdefault(name, OrderedDict())
        key = dims
        hit = per_shape.get(key)
        if hit is not None:
            per_shape.move_to_end(key)
            return hit.state
        if per_shape:
            self._check_new_shape(name, next(reversed(per_shape.values())).dims, dims)
        per_shape[key] = ShapeState(dims, RegionState.allocate(device, dims))
        while len(per_shape) > self.max_shapes:
            per_shape.popitem(last=False)
            self.epoch += 1
        return per_shape[key].state

    def _check_new_shape(self, name: str, old: RegionDims, new: RegionDims) -> None:
        """A new shape of the latents is fine at the start of a generation (one host read, once per new
        shape), never in the middle of one."""
        if old.hidden != new.hidden and self.ctx is not None and int(self.ctx.step) > 0:
            raise ShapeChangedError(
                f"region {name}: the hidden stream changed shape from {list(old.hidden)} to {list(new.hidden)} at "
                f"step {int(self.ctx.step)} of a generation; a generation keeps one latents shape. Call "
                "dit_cache_fx.reset(model) before starting one at a new shape")

    def states(self, name: str | None = None) -> list[RegionState]:
        names = [name] if name is not None else list(self.shapes)
        return [s.state for n in names for s in self.shapes.get(n, {}).values()]

    def release(self) -> None:
        """Drop every per-shape state (their memory is freed once the graphs no longer hold them)."""
        self.shapes.clear()
        self.epoch += 1

    def reset(self) -> None:
        """The next call starts a new generation."""
        if self.ctx is not None:
            self.ctx.reset.fill_(True)
