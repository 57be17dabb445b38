"""diffusers group offloading (`enable_group_offload`) with a compiled, cached transformer.

Group offloading hooks every block (block_level) or layer (leaf_level): before a group's first module runs
its weights are onloaded, after its last one they are offloaded (to CPU memory, or to disk, where the
resting tensors are empty). The hooks are `torch.compiler.disable`d, so Dynamo would break the graph at every
block. Instead:

- `lift(model)`: while Dynamo traces, each hooked module's forward is its own, without the hooks (eagerly
  they still run), so one graph holds the blocks.
- Regional mode: every block is a call of its block code (`runtime.regional`), and `GroupOffload.around`
  runs around that call: onload the groups with a module in the block (unless this call onloaded them
  already), run the code, offload the groups whose offload leader is in the block. A cached step never
  onloads its middle blocks; the groups outside the outlined blocks (the embedders' and the tail's layers
  in leaf_level, block_level's group of the rest of the model) are onloaded before the graph runs.
- Whole-graph mode: the graph reads every weight when it starts, so all groups are onloaded for the call
  (the peak memory of model offloading), and offloaded after it.
- Whatever a call onloaded is offloaded when it ends; calls of one offloaded model take turns (its weights
  are shared state).
"""

from __future__ import annotations

import contextlib
import functools
import threading
import types
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from .errors import OffloadError

GROUP_HOOK = "group_offloading"  # diffusers' name of its hook in a module's `_diffusers_hook` registry
CASTING_HOOK = "layerwise_casting"  # `enable_layerwise_casting`: weights stored in one dtype, computed in another
STREAM_HOOKS = ("lazy_prefetch_group_offloading", "layer_execution_tracker")  # `use_stream=True` adds them


def registry_hooks(module: torch.nn.Module) -> dict[str, Any]:
    """The hooks of a module's diffusers hook registry, by name (none: {})."""
    registry = module.__dict__.get("_diffusers_hook")
    return dict(getattr(registry, "hooks", None) or {})


def group_of(module: torch.nn.Module) -> Any:
    """The diffusers `ModuleGroup` a module's group-offloading hook onloads, or None."""
    hook = registry_hooks(module).get(GROUP_HOOK)
    return getattr(hook, "group", None)


def lifted_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The modules of `model` with a hook `lift` takes off for tracing (group offloading, layerwise casting)."""
    return {name: m for name, m in model.named_modules() if registry_hooks(m).keys() & {GROUP_HOOK, CASTING_HOOK}}


def hooked_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The modules of `model` with a group-offloading hook, by name (the model itself: "")."""
    return {name: m for name, m in model.named_modules() if GROUP_HOOK in registry_hooks(m)}


def accelerate_hooked(model: torch.nn.Module) -> list[str]:
    """Submodules with accelerate's per-module hooks (sequential CPU offload, a device_map)."""
    return [name for name, m in model.named_modules() if name and m.__dict__.get("_hf_hook") is not None]


class GroupOffload:
    """The offload groups of one compiled model and what the current call has onloaded."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.names: dict[int, list[str]] = {}  # id(group) -> the hooked modules' names, in module order
        self.groups: dict[int, Any] = {}
        self.leader: dict[int, str] = {}  # id(group) -> the name of the module after which it is offloaded
        self.group_of_tensor: dict[int, int] = {}  # id(parameter or buffer) -> id(its group)
        for name, m in hooked_modules(model).items():
            g = group_of(m)
            self.groups[id(g)] = g
            self.names.setdefault(id(g), []).append(name)
            if g.offload_leader is m:
                self.leader[id(g)] = name
            for t in [*(t for gm in g.modules for t in (*gm.parameters(), *gm.buffers())), *g.parameters, *g.buffers]:
                self.group_of_tensor[id(t)] = id(g)
        for gid, names in self.names.items():
            self.leader.setdefault(gid, names[-1])
        self.lock = threading.RLock()
        self.onloaded: set[int] = set()
        self._under: dict[str, tuple[list[int], list[int]]] = {}

    def __len__(self) -> int:
        return len(self.groups)

    def read_by(self, tensors: Iterable[Any]) -> frozenset[int]:
        """The groups that own some of `tensors` (the weights a graph reads outside its block calls: they are
        onloaded before it runs)."""
        return frozenset(g for t in tensors if (g := self.group_of_tensor.get(id(t))) is not None)

    @contextlib.contextmanager
    def call(self, everything: bool) -> Iterator[None]:
        """One call of the model: onload every group first if `everything`; offload what is onloaded after."""
        with self.lock:
            self.onloaded.clear()
            try:
                if everything:
                    self.onload(self.groups)
                yield
            finally:
                for gid in list(self.onloaded):
                    self.groups[gid].offload_()
                self.onloaded.clear()

    def onload(self, gids: Iterable[int]) -> None:
        for gid in gids:
            if gid not in self.onloaded:
                self.groups[gid].onload_()
                self.onloaded.add(gid)

    @contextlib.contextmanager
    def around(self, path: str) -> Iterator[None]:
        """Block `path` runs: its groups are onloaded before, and those it leads offloaded after."""
        load, lead = self._under.get(path) or self._groups_under(path)
        self.onload(load)
        yield
        for gid in lead:
            if gid in self.onloaded:
                self.groups[gid].offload_()
                self.onloaded.discard(gid)

    def _groups_under(self, path: str) -> tuple[list[int], list[int]]:
        inside = lambda n: n == path or n.startswith(f"{path}.")  # noqa: E731
        load = [gid for gid, names in self.names.items() if any(map(inside, names))]
        lead = [gid for gid in load if inside(self.leader[gid])]
        self._under[path] = load, lead
        return load, lead


def check_supported(model: torch.nn.Module, regional: bool) -> None:
    """Raise `OffloadError` for the offloading hooks the cache cannot run around (see the messages)."""
    seq = accelerate_hooked(model)
    if seq:
        raise OffloadError(
            f"dit_cache_fx: {type(model).__name__} has accelerate per-module hooks (enable_sequential_cpu_offload, or "
            f"a device_map) on {len(seq)} modules ({', '.join(seq[:3])}{', ...' if len(seq) > 3 else ''}): they "
            "replace the weights by new tensors around every layer, outside the compiled code, so no graph can hold "
            "the blocks. Use pipe.enable_model_cpu_offload() before or after dit_cache_fx.compile, or diffusers "
            "group offloading (transformer.enable_group_offload(...), which the cache runs around each block)")
    lifted = lifted_modules(model)
    for name, m in lifted.items():
        other = set(registry_hooks(m)) - {GROUP_HOOK, CASTING_HOOK}
        if other & set(STREAM_HOOKS) or getattr(group_of(m), "stream", None) is not None:
            raise OffloadError(
                f"dit_cache_fx: group offloading of {type(model).__name__} uses streams (use_stream=True): its "
                "prefetching follows the order the layers ran in the first call, which a cached step changes. "
                "Call enable_group_offload with use_stream=False, or use pipe.enable_model_cpu_offload()")
        if other:
            raise OffloadError(f"dit_cache_fx: {name} has diffusers hooks {sorted(other)} besides group offloading or "
                               "layerwise casting; the cache can only run those around the compiled code")
        if CASTING_HOOK in registry_hooks(m) and not isinstance(m, _CASTABLE):
            raise OffloadError(f"dit_cache_fx: {name} ({type(m).__name__}) has diffusers layerwise casting, which the "
                               f"cache traces for {', '.join(t.__name__ for t in _CASTABLE)} layers only")
    groups = [g for m in lifted.values() if (g := group_of(m)) is not None]
    if regional and any(torch.device(g.onload_device) != torch.device(g.offload_device) for g in groups):
        raise OffloadError(
            f"dit_cache_fx: group offloading of {type(model).__name__} onto another device than the weights rest "
            "on, with regional=True: Dynamo traces and guards the blocks with their weights where they rest, "
            "before any hook runs. Use the whole-graph mode (regional=False: all groups are onloaded for the "
            "call, as model offloading does), or pipe.enable_model_cpu_offload()")


def lift(model: torch.nn.Module) -> int:
    """Make every module with a group-offloading or layerwise-casting hook run, while Dynamo traces, its own
    forward (with layerwise casting: on its weights cast to the compute dtype, as values in the graph instead
    of the hook's in-place `module.to`); eagerly the hooks still run. Returns the number of modules lifted
    (again: 0)."""
    lifted = 0
    for m in lifted_modules(model).values():
        hooked = m.__dict__.get("forward")
        if hooked is None or getattr(hooked, "_dit_cache_fx_lifted", False):
            continue
        casting = registry_hooks(m).get(CASTING_HOOK)
        m.forward = _lifted(m, m._diffusers_hook._fn_refs[0].forward, hooked,  # the forward before any hook
                            casting.compute_dtype if casting is not None else None)
        lifted += 1
    return lifted


_CASTABLE = (torch.nn.Linear, torch.nn.Embedding, torch.nn.modules.conv._ConvNd)


def cast_forward(module: torch.nn.Module, dtype: torch.dtype, x: torch.Tensor, *args: Any) -> torch.Tensor:
    """What layerwise casting's `module.to(compute dtype)` followed by the layer's forward computes, with the
    cast weights as values (the layers diffusers casts: Linear, Conv*, ConvTranspose*, Embedding)."""
    F = torch.nn.functional
    w = module.weight.to(dtype)
    b = module.bias.to(dtype) if getattr(module, "bias", None) is not None else None
    if isinstance(module, torch.nn.Linear):
        return F.linear(x, w, b)
    if isinstance(module, torch.nn.Embedding):
        return F.embedding(x, w, module.padding_idx, module.max_norm, module.norm_type, module.scale_grad_by_freq,
                           module.sparse)
    if not module.transposed:
        return module._conv_forward(x, w, b)
    n = len(module.stride)
    output_padding = module._output_padding(x, args[0] if args else None, list(module.stride), list(module.padding),
                                            list(module.kernel_size), n, list(module.dilation))
    op = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[n - 1]
    return op(x, w, b, module.stride, module.padding, output_padding, module.groups, module.dilation)


def _lifted(module: torch.nn.Module, own: Any, hooked: Any, dtype: torch.dtype | None) -> Any:
    """`module.forward` that is `own` (or `cast_forward` to `dtype`) while Dynamo traces and `hooked` otherwise;
    bound to the module, so that Dynamo sees the module as the frame's `self` (module paths as without hooks:
    `transformer_blocks.0`)."""
    func = own.__func__ if getattr(own, "__self__", None) is module else None

    def forward(self, *args, **kwargs):
        if not torch.compiler.is_compiling():
            return hooked(*args, **kwargs)
        if dtype is not None:
            return cast_forward(self, dtype, *args, **kwargs)
        return func(self, *args, **kwargs) if func is not None else own(*args, **kwargs)

    forward._dit_cache_fx_lifted = True
    return types.MethodType(functools.wraps(hooked)(forward), module)
