"""Public entry points: compile, configure, reset, release (summary and explain live in their modules)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import logging
import sys
import threading
import warnings
from typing import TYPE_CHECKING, Any

import torch

from . import _compat
from .backend import CacheBackend
from .config import CFG_BRANCH_OF_NAME, CacheArg, CacheConfig, DBPruneConfig, RunSpecs, structural_changes
from .errors import (
    CachePlanError,
    DitCacheError,
    InferenceOnlyError,
    NoBlockRunError,
    OffloadError,
    UnsupportedTorchError,
)
from .handle import CacheHandle
from .offload import GroupOffload, check_supported, hooked_modules, lift, lifted_modules
from .runtime import regional
from .runtime.store import StateStore

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

_HANDLE_ATTR = "_dit_cache_fx"


def compile(module: torch.nn.Module | DiffusionPipeline, cache: CacheArg = "F8B0", *, on_no_blocks: str = "raise",
            max_shapes: int = 4, process_group: Any = None, regional: bool = False, outer: str | None = None,
            **torch_compile_kwargs: Any) -> Any:
    """Compile `module` with DBCache step caching rewritten into the graph.

    Args:
        module: a diffusers transformer (or any module whose forward runs lists of repeated blocks); or a
            diffusers pipeline: its denoisers (`transformer`, and `transformer_2` where present) are compiled
            in place with these arguments and every pipeline call starts a new generation (exact, where the
            transformer alone can only tell generations apart by their timesteps). Returns the pipeline.
        cache: a spec string (`"F8B0_W8MC3_R0.08_T1"`, see `CacheConfig`) or a `CacheConfig`, used for
            every block run; or a mapping from block-list name to a spec (or None: not cached), e.g.
            `{"transformer_blocks": "F1B0_R0.08", "single_transformer_blocks": "F1B0_R0.24"}` (see
            `config.RunSpecs`); or None for plain `torch.compile` through the same backend.
        on_no_blocks: "raise" (default) or "compile": what to do when the traced model has no run of
            repeated blocks that can be cached; "compile" warns and compiles it without a cache.
        max_shapes: per cache region, the cache state of at most this many input shapes is kept (least
            recently used dropped first); `release(module)` frees all of it.
        process_group: the ranks that share the sequence, whose diff sums are added before every decision
            (a ProcessGroup or its name). Default: taken from the model's diffusers context-parallel config
            (`enable_parallelism` before `compile`); give it for models parallelised by other means.
        regional: compile each distinct block once and call it from every instance (in Fn, in the cond's
            Mn branch, in Bn) instead of compiling the whole model as one graph: a first call as short as
            diffusers' `compile_repeated_blocks`, no fusion across block boundaries (`runtime/regional.py`).
        outer: with `regional=True`, how the graph around the blocks (embeddings, the decision and cond, the
            tail) runs: "auto" (the default) as its FX code, uncompiled, until inductor has compiled it in a
            child process, then as that code (the first call of "python", the later calls of "inductor";
            `background.py`, `wait_compiled`); "python" always as its FX code, as diffusers' regional
            compilation leaves it (a few ms of eager ops per call); "inductor" compiled in this process before
            the first call runs, the blocks as calls of their code (a longer first call; `bench/bench_host.py`).
        **torch_compile_kwargs: passed to `torch.compile` (`fullgraph`, `dynamic`, ...); `mode=` and
            `options=` become inductor config for our backend, as with the default backend.

    Returns:
        A drop-in module (`torch.compile`'s wrapper): same call signature and outputs, and attribute
        access (`config`, `dtype`, `device`, ...) reaches the original module.

    Raises:
        CachePlanError: already here when no block list of the module is long enough for Fn + Bn.

    Example:
        >>> pipe.transformer = dit_cache_fx.compile(pipe.transformer, cache="F1B0_R0.12")
        >>> image = pipe(prompt, num_inference_steps=28).images[0]
        >>> print(dit_cache_fx.summary(pipe.transformer))
    """
    if is_pipeline(module):
        return _compile_pipeline(module, cache, on_no_blocks=on_no_blocks, max_shapes=max_shapes,
                                 process_group=process_group, regional=regional, outer=outer, **torch_compile_kwargs)
    outer = _outer_mode(outer, regional)
    if on_no_blocks not in ("raise", "compile"):
        raise DitCacheError(f"on_no_blocks must be 'raise' or 'compile', got {on_no_blocks!r}")
    if "backend" in torch_compile_kwargs:
        raise DitCacheError("dit_cache_fx.compile chooses the backend itself; drop backend=")
    mode = torch_compile_kwargs.pop("mode", None)
    options = dict(_compat.inductor_mode_options(mode) if mode else {})
    options.update(torch_compile_kwargs.pop("options", None) or {})
    if regional and options.get("triton.cudagraphs"):
        warnings.warn("dit_cache_fx: regional=True uses no CUDA graphs (a replay would skip the block calls' Python); "
                      "the block code and the graph around the blocks compile without them (use the whole-graph "
                      "mode for CUDA graphs)",
                      stacklevel=2)
    dynamic = torch_compile_kwargs.pop("dynamic", False)  # as compile-time flags (`_forward`), not per call
    # each compiled wrapper keeps its own Dynamo entries: several cache settings of one model class (or the two
    # experts of Wan 2.2) neither count as each other's recompiles nor exhaust a shared recompile limit
    torch_compile_kwargs.setdefault("isolate_recompiles", True)
    torch_compile_kwargs.setdefault("recompile_limit", 64)
    specs = RunSpecs.of(cache)
    if specs.enabled:
        check_block_lists(module, specs)
        check_block_tensors(module)
    group = _compat.group_name(process_group) if process_group is not None else _compat.context_parallel_group(module)
    if specs.enabled and process_group is None and group is not None and (why := _compat.context_parallel_unsupported()):
        raise UnsupportedTorchError(f"dit_cache_fx: {why}")
    handle = CacheHandle(specs, forward_signature(module), StateStore(specs.step_config.enable_separate_cfg, max_shapes),
                         on_no_blocks, options, dynamic, group=group, regional=regional, outer=outer,
                         block_modules=_block_modules(module),
                         list_sizes={name: n for name, (n, _) in block_lists(module).items()})
    if specs.enabled:
        adopt_hooks(handle, module)
        handle.check_hooks = functools.partial(check_late_hooks, module, regional)
    compiled = _compat.torch_compile(module, backend=CacheBackend(handle), **torch_compile_kwargs)
    # on the wrapper itself (its __setattr__ would forward to the original module, which several wrappers may share)
    compiled.__dict__[_HANDLE_ATTR] = handle
    compiled.__class__ = _compat.hook_owning_wrapper()  # accelerate's hook attributes stay on the wrapper
    compiled.forward = _forward(handle, compiled.forward, module, compiled)
    move_model_hook(module, compiled)  # model CPU offload enabled before compile: its hook goes outside
    if callable(getattr(module, "cache_context", None)):  # diffusers' `CacheMixin`: the pipeline names its calls
        compiled.__dict__["cache_context"] = _naming(handle, module.cache_context)
    return compiled


# ---------------------------------------------------------------------------------------------------------
# the pipeline form

DENOISERS = ("transformer", "transformer_2")  # the components of a diffusers pipeline that `compile(pipe)` caches


OUTER_MODES = ("auto", "python", "inductor")


def _outer_mode(outer: str | None, regional: bool) -> str:
    if outer is not None and not regional:
        raise DitCacheError("outer= says how regional mode runs the graph around the blocks: pass regional=True too")
    if outer is not None and outer not in OUTER_MODES:
        raise DitCacheError(f"outer= must be one of {list(OUTER_MODES)}, got {outer!r}")
    return outer or "auto"


def is_pipeline(obj: Any) -> bool:
    """A diffusers pipeline (diffusers imported only when it is already loaded)."""
    diffusers = sys.modules.get("diffusers")
    return diffusers is not None and isinstance(obj, diffusers.DiffusionPipeline)


def denoisers(pipe: Any) -> dict[str, torch.nn.Module]:
    """The pipeline's denoiser components that are modules, by attribute."""
    return {a: m for a in DENOISERS if isinstance(m := getattr(pipe, a, None), torch.nn.Module)}


def _compile_pipeline(pipe: Any, cache: CacheArg, **kwargs: Any) -> Any:
    found = denoisers(pipe)
    if not found:
        raise CachePlanError(f"{type(pipe).__name__} has no denoiser to cache: dit_cache_fx.compile(pipe) compiles "
                             f"the components {list(DENOISERS)}, and this pipeline has {sorted(pipe.components)}")
    for attr, m in found.items():
        if _HANDLE_ATTR in m.__dict__:
            raise CachePlanError(f"pipe.{attr} is already compiled by dit_cache_fx; compile the pipeline or its "
                                 "transformer, not both")
        compiled = compile(m, cache, **kwargs)
        for hook in getattr(pipe, "_all_hooks", None) or ():  # model CPU offload's bookkeeping follows the move
            if getattr(hook, "model", None) is m:
                hook.model = compiled
        compiled.__dict__[_HANDLE_ATTR].marks_generations = True
        setattr(pipe, attr, compiled)
    pipe.__class__ = _marking_class(type(pipe))
    return pipe


_MARKING: dict[type, type] = {}
_MARKING_LOCK = threading.Lock()


def _marking_class(cls: type) -> type:
    """`cls` with a `__call__` that starts a new generation (in the calling thread) of every compiled
    denoiser before running the pipeline: a per-instance subclass, same name, so only this pipeline is
    changed."""
    if getattr(cls, "_dit_cache_fx_marks", False):
        return cls
    with _MARKING_LOCK:
        sub = _MARKING.get(cls)
        if sub is None:
            call = cls.__call__

            @functools.wraps(call)
            def __call__(self, *args, **kwargs):
                for m in denoisers(self).values():
                    handle = m.__dict__.get(_HANDLE_ATTR)
                    if handle is not None:
                        handle.store.reset(everywhere=False)
                return call(self, *args, **kwargs)

            sub = _MARKING[cls] = type(cls.__name__, (cls,), {"__call__": __call__, "_dit_cache_fx_marks": True,
                                                             "__module__": cls.__module__,
                                                             "__qualname__": cls.__qualname__})
    return sub


def _naming(handle: CacheHandle, cache_context):
    """The compiled module's `cache_context(name)`: diffusers' own, plus the name for the calls inside it
    (the CFG branch, `config.CFG_BRANCH_OF_NAME`)."""

    @contextlib.contextmanager
    def cache_context_named(name: str, **kwargs: Any):
        c = handle.call
        before, c.name = c.name, name
        try:
            with cache_context(name, **kwargs):
                yield
        finally:
            c.name = before

    return cache_context_named


def forward_signature(module: torch.nn.Module) -> inspect.Signature:
    """The model's own forward signature (without `self`), also when a hook replaced `module.forward`."""
    sig = inspect.signature(type(module).forward)
    return sig.replace(parameters=list(sig.parameters.values())[1:])


_CAPTURES = {"capture_dynamic_output_shape_ops": True, "capture_scalar_outputs": True}


def _forward(handle: CacheHandle, dynamo_forward, module: torch.nn.Module, compiled: torch.nn.Module):
    failed = _compat.backend_compiler_failed()
    # while Dynamo traces: data-dependent ops (`nonzero`, `.item()`) stay in the graph instead of breaking it,
    # so the blocks around them stay in one graph (Mochi's attention); with dynamic shapes module float
    # attributes (norm eps) stay constants (as symbolic inputs they cannot enter a cond branch)
    # and torch.compile(dynamic=...)'s own flags, set only while Dynamo compiles (torch patches them every call)
    base = {"specialize_float": True} if handle.dynamic is not False else {}
    base.update(_compat.dynamic_flags(handle.dynamic))
    flags = [_compat.DynamoFlags(**_CAPTURES, **base)]

    def run(call, args, kwargs):
        try:
            with flags[0]:
                return dynamo_forward(*args, **kwargs)
        except failed as e:  # our own errors reach the user as themselves, not wrapped by Dynamo
            if isinstance(e.inner_exception, DitCacheError):
                raise e.inner_exception from None
            raise
        except Exception as e:
            # the captures let a data-dependent value reach Python control flow the model does not guard
            # (Qwen-Image 2.1's `.tolist()` of a mask-derived length): trace again as plain torch.compile does,
            # breaking the graph there — once per model, and only while no cache region ran in this call
            if flags[0].flags.keys() == base.keys() or not call.pending or not _compat.is_data_dependent_guard(e):
                raise
            flags[0] = _compat.DynamoFlags(**base)
            log.info("dit_cache_fx: %s: tracing failed on a data-dependent guard with Dynamo's captures of "
                     "data-dependent ops on; traced again without them (graph breaks there instead)",
                     type(module).__name__)
            return run(call, args, kwargs)

    def forward(*args, **kwargs):
        if torch.is_grad_enabled() and _requires_grad((args, kwargs)):
            raise InferenceOnlyError(
                f"dit_cache_fx: {type(module).__name__} was called with grad enabled and an input that requires grad; "
                "the cache is for inference only (its graphs run without autograd: the outputs would carry no "
                "gradient). Call it under torch.no_grad() or torch.inference_mode() (diffusers pipelines do), or "
                "detach the inputs; to train, use the uncompiled model")
        if move_model_hook(module, compiled):  # added to the model after compile: now on the wrapper, run it
            return compiled(*args, **kwargs)
        hooks_outside(module)
        if not handle.graphs and handle.specs.enabled:  # group offloading or layerwise casting enabled after compile
            adopt_hooks(handle, module)
        call = handle.begin_call(args, kwargs)
        if call.name is not None and call.hint < 0 and handle.specs.enabled:
            return _unknown_call(handle, module, call.name, args, kwargs)
        if handle.offload is None:
            out = run(call, args, kwargs)
        else:
            with handle.offload.call(everything=not handle.regional):
                out = run(call, args, kwargs)
        _end_call(handle, call)
        return out

    return forward


def move_model_hook(module: torch.nn.Module, compiled: torch.nn.Module) -> bool:
    """accelerate's hook on the model itself (`pipe.enable_model_cpu_offload()` before `compile`, or on the
    original module after it) moves to the compiled wrapper, where it runs outside the compiled code, exactly
    as when offloading is enabled on the compiled module; the model's own forward is compiled. Returns whether
    a hook was moved."""
    hook = module.__dict__.get("_hf_hook")
    if hook is None or "_old_forward" not in module.__dict__:
        return False
    from accelerate.hooks import add_hook_to_module, remove_hook_from_module

    remove_hook_from_module(module)
    if getattr(module.__dict__.get("forward"), "__func__", None) is type(module).forward:
        del module.forward  # the bound forward accelerate restores: the class's own, as before hooking
    add_hook_to_module(compiled, hook)
    return True


def hooks_outside(module: torch.nn.Module) -> None:
    """Another forward installed on the model instance (diffusers' hook registry on the model itself;
    accelerate's moves to the wrapper, `move_model_hook`) runs outside the compiled code: Dynamo skips its frame
    and compiles the model's own forward it calls, so the hook neither breaks the graph nor hides the model's
    inputs. Checked at every call, so a hook added after `compile` is handled too."""
    hooked = module.__dict__.get("forward")
    if hooked is None or getattr(hooked, "_dit_cache_fx_outside", False) or getattr(hooked, "_dit_cache_fx_lifted", False):
        return  # a forward `offload.lift` made: its hooks run around the compiled code, not in it
    if getattr(hooked, "__func__", None) is type(module).forward:  # the model's own forward, bound: compile it
        return
    if isinstance(hooked, functools.partial):  # the hook's own function is the frame to skip
        outside = functools.partial(torch.compiler.disable(hooked.func, recursive=False), *hooked.args,
                                    **hooked.keywords)
    else:
        outside = torch.compiler.disable(hooked, recursive=False)
    functools.update_wrapper(outside, hooked)
    outside._dit_cache_fx_outside = True
    module.forward = outside


def _requires_grad(x: Any) -> bool:
    """Whether a tensor in `x` (nested tuples, lists, dicts) requires grad; parameters alone do not count."""
    if isinstance(x, torch.Tensor):
        return x.requires_grad
    if isinstance(x, (tuple, list)):
        return any(map(_requires_grad, x))
    if isinstance(x, dict):
        return any(map(_requires_grad, x.values()))
    return False


def _unknown_call(handle: CacheHandle, module: torch.nn.Module, name: str, args: tuple, kwargs: dict):
    """A call the pipeline names neither cond nor uncond (LTX-2's "uncond_stg", "uncond_modality": a third
    guidance pass per step): its own branch, which the cache has no state for. It runs the original module,
    uncached, and leaves the step context alone."""
    if not handle.warned_names:
        handle.warned_names = True
        warnings.warn(f"dit_cache_fx: the pipeline names calls {name!r} (diffusers' cache_context); dit_cache_fx keeps "
                      f"cache state for the names {sorted(CFG_BRANCH_OF_NAME)} only, so these calls run the original "
                      "module, uncompiled and uncached", stacklevel=3)
    return module(*args, **kwargs)


_AMBIGUITY_CHECKS = 16  # calls whose step context the host reads for `ambiguous` (one sync each, then never)


def _end_call(handle: CacheHandle, call) -> None:
    if not handle.specs.enabled:
        return
    if not handle.marks_generations and not handle.warned_ambiguous and handle.checks_done < _AMBIGUITY_CHECKS:
        handle.checks_done += 1
        ctx = handle.store.ctx
        if ctx is not None and bool(ctx.ambiguous):
            handle.warned_ambiguous = True
            warnings.warn(
                "dit_cache_fx: a call repeated its generation's only timestep so far, so the timesteps cannot show "
                "where one generation ends and the next begins (1-step generations back to back?): they may be "
                "counted as one. Compile the pipeline instead (dit_cache_fx.compile(pipe, cache=...)), which starts "
                "a generation at every pipeline call, or call dit_cache_fx.reset(model) before each generation",
                stacklevel=3)
    if not call.ran and handle.regions and not handle.warned_eager:
        handle.warned_eager = True
        warnings.warn("dit_cache_fx: this call ran without the compiled graphs (Dynamo fell back to eager, e.g. its "
                      "recompile limit was hit): nothing was cached. Compile with dynamic=True, or pass a larger "
                      "recompile_limit=", stacklevel=3)
    if handle.checked or not handle.graphs:
        return
    handle.checked = True
    if handle.regions:
        _warn_shrunken(handle)
        return
    msg = "dit_cache_fx found no cacheable run of repeated transformer blocks in the traced model"
    why = list(dict.fromkeys([f"{r.name}: {r.reason}" for g in handle.graphs for r in g.record.rejected]
                             + [f"{name}: {reason}" for g in handle.graphs for name, reason in g.record.skipped]))
    hits = [name for g in handle.graphs if g.frame_children for name, inner in handle.block_modules.items()
            if g.frame_children <= inner]
    inside = sorted(n for n in set(hits) if hits.count(n) >= 2)  # several graphs made of pieces of its blocks
    if inside:
        why.append(f"Dynamo graph-breaks inside the blocks of {inside} and compiles parts of single blocks, so no "
                   "graph holds a run of them (data-dependent Python in the blocks, e.g. MoE routing); Dynamo's "
                   "reasons: " + "; ".join(_compat.graph_break_reasons()[:3]))
    elif len(handle.graphs) > 1:
        why.append(f"the model was traced as {len(handle.graphs)} graphs: graph breaks (data-dependent Python inside "
                   "the blocks, e.g. MoE routing) split the block runs so that no graph holds one; Dynamo's reasons: "
                   + "; ".join(_compat.graph_break_reasons()[:3]))
    if any("marked as skipped" in r for r in _compat.graph_break_reasons()):
        why.append("Dynamo skips code an earlier torch.compile in this process marked as skipped (e.g. compiling a "
                   "model that another cache library wraps, whose graph breaks land in the same block classes); "
                   "torch._dynamo.reset() before dit_cache_fx.compile clears those marks")
    detail = ("; ".join(why) if why else "a run is >= 2 consecutive `<list>.<i>` blocks of one class whose outputs "
              "feed the next one directly")
    if handle.on_no_blocks == "raise":
        raise NoBlockRunError(f"{msg} ({detail}); pass on_no_blocks='compile' to compile it without a cache.")
    warnings.warn(f"{msg} ({detail}); compiled without a cache.", stacklevel=3)


# ---------------------------------------------------------------------------------------------------------
# block lists known before tracing


def _warn_shrunken(handle: CacheHandle) -> None:
    """A region that covers fewer blocks than its block lists hold is never silent: one warning."""
    short = {}
    for r in handle.regions:
        covered, listed = handle.coverage(r.plan.run)
        if covered < listed:
            short[r.plan.name] = (covered, listed)
    if short:
        text = "; ".join(f"{name} covers {c} of the {n} blocks in its lists" for name, (c, n) in short.items())
        warnings.warn(f"dit_cache_fx: {text}: the run of blocks stopped early, so the rest are never cached; "
                      "dit_cache_fx.explain(model) names what stopped it", stacklevel=4)


def block_lists(module: torch.nn.Module) -> dict[str, tuple[int, type]]:
    """`ModuleList`s of >= 2 modules of one class, by qualified name: (length, block class)."""
    out = {}
    for name, m in module.named_modules():
        if isinstance(m, torch.nn.ModuleList) and len(m) >= 2 and len({type(b) for b in m}) == 1:
            out[name] = (len(m), type(m[0]))
    return out


def _block_modules(module: torch.nn.Module) -> dict[str, set[str]]:
    """Per block list, the attribute names of the modules inside its first block (to tell a graph that Dynamo
    compiled from inside a block)."""
    lists = block_lists(module)
    top = [n for n in lists if not any(n.startswith(f"{o}.") for o in lists)]  # not nested in another list
    return {name: {n.split(".")[-1] for n, _ in module.get_submodule(name)[0].named_modules() if n} for name in top}


def check_block_lists(module: torch.nn.Module, specs: RunSpecs) -> None:
    """Fail early for what is known before tracing: unknown list names, Fn + Bn longer than any run."""
    lists = {name: n for name, (n, _) in block_lists(module).items()}
    unknown = specs.names() - set(lists)
    if unknown:
        raise CachePlanError(f"no block list named {sorted(unknown)} in {type(module).__name__}; its block lists are "
                             f"{lists}")
    longest = sum(lists.values())  # a run may chain several lists (at most all of them)
    for key, config in [("*", specs.default), *specs.per_list]:
        if config is None or (key == "*" and specs.per_list and not lists.keys() - specs.names()):
            continue
        n = longest if key == "*" else sum(lists[k] for k in key.split("+"))
        need = config.Fn_compute_blocks + config.Bn_compute_blocks
        if lists and need >= n:
            where = f"the {n} blocks of {type(module).__name__} ({lists})" if key == "*" else f"{key} ({n} blocks)"
            raise CachePlanError(f"Fn={config.Fn_compute_blocks} + Bn={config.Bn_compute_blocks} leaves no middle "
                                 f"blocks to cache in {where}: need Fn + Bn < {n}, e.g. cache='F1B0'")


def opaque_block_tensors(module: torch.nn.Module) -> dict[str, type]:
    """Parameters and buffers inside the block lists that are tensor subclasses with their own
    `__torch_dispatch__` but without the `__tensor_flatten__` protocol (by name: their type)."""
    lists = tuple(f"{name}." for name in block_lists(module))
    tensors = [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]
    tensors += [(f"{n}.{a}", v) for n, m in module.named_modules() for a, v in vars(m).items()
                if isinstance(v, torch.Tensor) and not a.startswith("_")]  # plain tensor attributes
    return {name: type(t) for name, t in tensors if name.startswith(lists) and _compat.is_dispatch_subclass(t)
            and not _compat.is_traceable_subclass(t)}


def check_block_tensors(module: torch.nn.Module) -> None:
    """Fail early for block weights that no compiled mode can trace (Dynamo graph-breaks at each use)."""
    from .errors import UnsupportedWeightsError

    found = opaque_block_tensors(module)
    if found:
        names = ", ".join(f"{n} ({t.__qualname__})" for n, t in list(found.items())[:3])
        raise UnsupportedWeightsError(
            f"dit_cache_fx: {len(found)} tensors inside the blocks of {type(module).__name__} are tensor subclasses "
            f"without __tensor_flatten__/__tensor_unflatten__: {names}{', ...' if len(found) > 3 else ''}. Dynamo "
            "graph-breaks at every use of such a tensor, so no graph holds a run of blocks, in the whole-graph mode "
            "and with regional=True alike; use a subclass that implements the protocol (torchao's quantized "
            "tensors do), or dequantize the weights")


def adopt_hooks(handle: CacheHandle, module: torch.nn.Module) -> None:
    """diffusers hooks on the model's layers that the cache runs around the compiled code (`offload.py`: group
    offloading, layerwise casting): lift them for tracing, and run the offload groups around the graphs;
    fail for the offloading the cache cannot run around."""
    check_supported(module, handle.regional)
    if not lift(module) or handle.offload is not None or not hooked_modules(module):
        return
    handle.offload = GroupOffload(module)
    if not handle.regional:
        warnings.warn(f"dit_cache_fx: {type(module).__name__} uses group offloading; the whole-graph mode reads every "
                      "weight when the graph starts, so all its groups are onloaded for each call (the peak memory of "
                      "model offloading). compile(..., regional=True) onloads one block at a time, and a cached step "
                      "never onloads the blocks it skips", stacklevel=4)


def check_late_hooks(module: torch.nn.Module, regional: bool) -> None:
    """Hooks added after the first call: the graphs were traced without lifting them."""
    late = [n for n, m in lifted_modules(module).items()
            if not getattr(m.__dict__.get("forward"), "_dit_cache_fx_lifted", False)]
    if late:
        raise OffloadError(f"dit_cache_fx: group offloading or layerwise casting was enabled on {type(module).__name__} "
                           f"({', '.join(late[:3])}{', ...' if len(late) > 3 else ''}) after its first compiled call; "
                           "enable it before that call (before or after dit_cache_fx.compile)")
    check_supported(module, regional)


# ---------------------------------------------------------------------------------------------------------
# runtime control


def compiled_modules(obj: Any) -> dict[str, torch.nn.Module]:
    """The modules compiled by dit_cache_fx behind `obj`: itself, or a pipeline's compiled denoisers (by
    attribute)."""
    if is_pipeline(obj):
        found = {a: m for a, m in denoisers(obj).items() if _HANDLE_ATTR in m.__dict__}
        if not found:
            raise TypeError(f"no denoiser of {type(obj).__name__} was compiled by dit_cache_fx.compile")
        return found
    handle_of(obj)
    return {"": obj}


def handle_of(module: torch.nn.Module) -> CacheHandle:
    if is_pipeline(module):
        found = compiled_modules(module)
        if len(found) > 1:
            raise TypeError(f"{type(module).__name__} has {len(found)} compiled denoisers {sorted(found)}: name one")
        module = next(iter(found.values()))
    handle = module.__dict__.get(_HANDLE_ATTR)
    if handle is None:
        raise TypeError(f"{type(module).__name__} was not compiled by dit_cache_fx.compile")
    return handle


def wait_compiled(module: torch.nn.Module | DiffusionPipeline, timeout: float | None = None) -> bool:
    """Regional mode with `outer="auto"`: wait (at most `timeout` seconds) until the graphs around the blocks
    that are compiling in the background run as inductor's code, starting any compile that has not begun.
    True when every graph of the module runs compiled (False: one still runs as FX code, see `explain`)."""
    ok = True
    for m in compiled_modules(module).values():
        for g in handle_of(m).graphs:
            bg = g.runner.background if g.runner is not None else None
            if bg is not None:
                bg.wait(timeout)
            ok = ok and g.outer == "inductor"
    return ok


def reset(module: torch.nn.Module | DiffusionPipeline) -> None:
    """Start a new generation at the next call, in every thread (one is also started automatically when the
    timesteps restart, and by every call of a pipeline compiled whole)."""
    for m in compiled_modules(module).values():
        handle_of(m).store.reset()


def release(module: torch.nn.Module | DiffusionPipeline) -> None:
    """Free the cache state of every input shape and thread, and the host's compiled step classifier (the
    next call starts from scratch, as a new generation)."""
    for m in compiled_modules(module).values():
        handle = handle_of(m)
        handle.store.release()
        regional.release(handle)


def configure(module: torch.nn.Module | DiffusionPipeline, cache: CacheArg = None, *, region: str | None = None,
              **fields: Any) -> None:
    """Change runtime settings of a compiled module without recompiling.

    Either a full spec (`configure(m, "F1B0_W4_R0.2")`: every field takes the spec's value or its default,
    as in `compile`), or keyword fields that change only themselves (`configure(m, residual_diff_threshold=0.2)`),
    for every region or the one named (`region="single_transformer_blocks[0:38]"` or a block-list name).
    Fields that shape the graph (`CacheConfig.structural_fields()`: Fn, Bn, TaylorSeer order and encoder,
    timestep_arg) cannot change: compile again for those. A pipeline: every compiled denoiser.
    """
    if is_pipeline(module):
        for m in compiled_modules(module).values():
            configure(m, cache, region=region, **fields)
        return
    handle = handle_of(module)
    if (cache is None) == (not fields):
        raise TypeError("configure takes a spec (string, CacheConfig or mapping) or keyword fields, not both")
    bad = set(fields) - {f.name for f in dataclasses.fields(DBPruneConfig)}  # a superset of CacheConfig's
    if bad:
        raise TypeError(f"unknown CacheConfig fields {sorted(bad)}")
    if not handle.specs.enabled:
        raise DitCacheError("this module was compiled with cache=None; compile it again with a cache")
    new_specs = RunSpecs.of(cache) if cache is not None else handle.specs
    if cache is not None:  # also before the first call, when no region exists yet
        _check_structure(handle.specs, new_specs)
    targets = _regions(handle, region)
    updates = {}
    for name, lists in targets.items():
        old = handle.store.configs.get(name) or _config_for(handle.specs, lists)
        new = _config_for(new_specs, lists).replace(**fields) if cache is not None else old.replace(**fields)
        if old is None or new is None:
            raise DitCacheError(f"region {name}: caching cannot be switched on or off without compiling again")
        changed = structural_changes(old, new)
        if changed:
            raise DitCacheError(f"changing {', '.join(changed)} changes the graph: call dit_cache_fx.compile again on the "
                             "original module (module._orig_mod)")
        updates[name] = new
    if cache is not None:
        handle.specs = new_specs
    elif region is None:
        handle.specs = _replace_specs(handle.specs, fields)
    for name, new in updates.items():
        handle.store.configure(name, new)
    step_values = {c.enable_separate_cfg for c in updates.values()} or {
        handle.specs.step_config.enable_separate_cfg}
    if len(step_values) > 1:
        raise DitCacheError("enable_separate_cfg is one setting for the whole model")
    handle.store.set_cfg_mode(step_values.pop())


def _check_structure(old: RunSpecs, new: RunSpecs) -> None:
    pairs = list(zip(old.configs, new.configs)) if len(old.configs) == len(new.configs) else None
    if pairs is None or [k for k, _ in old.per_list] != [k for k, _ in new.per_list]:
        raise DitCacheError("the new spec assigns configs to other block lists than the compiled one: that changes the "
                         "graph; call dit_cache_fx.compile again on the original module (module._orig_mod)")
    for a, b in pairs:
        changed = [] if a is None or b is None else structural_changes(a, b)
        if changed or (a is None) != (b is None):
            raise DitCacheError(f"changing {', '.join(changed) or 'which runs are cached'} changes the graph: call "
                             "dit_cache_fx.compile again on the original module (module._orig_mod)")


def _regions(handle: CacheHandle, region: str | None) -> dict[str, tuple[str, ...]]:
    known = {r.plan.name: r.plan.run.lists for r in handle.regions}
    if region is None:
        return known
    hit = {n: lists for n, lists in known.items() if region in (n, *lists, "+".join(lists))}
    if not hit:
        raise DitCacheError(f"no cache region {region!r}; regions: {sorted(known)}")
    return hit


def _config_for(specs: RunSpecs, lists: tuple[str, ...]) -> CacheConfig | None:
    parts = specs.assign(list(lists))
    if len(parts) != 1:
        raise DitCacheError(f"the spec cuts {'+'.join(lists)} into several regions: that changes the graph")
    return parts[0][1]


def _replace_specs(specs: RunSpecs, fields: dict) -> RunSpecs:
    rep = lambda c: None if c is None else c.replace(**fields)  # noqa: E731
    return RunSpecs(rep(specs.default), tuple((k, rep(c)) for k, c in specs.per_list))
