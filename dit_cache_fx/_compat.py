"""Every private `torch._*` API the package touches, behind one door (imported lazily)."""

from __future__ import annotations

import contextlib
import functools
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch

# torch < 2.13 (2.11 checked): `torch.compile` takes no `isolate_recompiles` and no `recompile_limit`; the limit
# is Dynamo's process-wide `recompile_limit` flag, and the wrappers of one code object share its entries
_PER_WRAPPER_ARGS = ("isolate_recompiles", "recompile_limit")


def isolates_recompiles() -> bool:
    """Whether `torch.compile(isolate_recompiles=True)` keeps each wrapper's Dynamo entries apart (torch >= 2.13).
    Without it a code object shared by several models (diffusers' `apply_lora_scale` wrapper around forward)
    holds the entries of every model compiled in the process."""
    import inspect

    return "isolate_recompiles" in inspect.signature(torch.compile).parameters


def torch_compile(fn: Callable, **kwargs: Any) -> Any:
    """`torch.compile(fn, **kwargs)`, taking torch 2.13's per-wrapper arguments on any supported torch.

    Where `torch.compile` lacks them (torch < 2.13): `isolate_recompiles` is dropped (the wrappers of one model
    class then count their recompiles together) and `recompile_limit` becomes Dynamo's flag, set only while a
    call of the compiled wrapper runs (through `DynamoFlags`, so the user's own value returns afterwards)."""
    import inspect

    params = inspect.signature(torch.compile).parameters
    missing = {k: kwargs.pop(k) for k in _PER_WRAPPER_ARGS if k in kwargs and k not in params}
    compiled = torch.compile(fn, **kwargs)
    limit = missing.get("recompile_limit")
    if limit is None:
        return compiled
    flags = DynamoFlags(recompile_limit=limit)
    inner = compiled.forward if isinstance(compiled, torch.nn.Module) else compiled

    @functools.wraps(inner)
    def limited(*args: Any, **kw: Any) -> Any:
        with flags:
            return inner(*args, **kw)

    if isinstance(compiled, torch.nn.Module):
        compiled.forward = limited
        return compiled
    return limited


def compile_fx(gm: torch.fx.GraphModule, example_inputs: list, options: dict | None = None) -> Callable:
    from torch._inductor.compile_fx import compile_fx as _compile_fx

    return _compile_fx(gm, example_inputs, config_patches=dict(options or {}))


def inductor_mode_options(mode: str) -> dict:
    """The inductor config a `torch.compile(mode=...)` string stands for."""
    import torch._inductor

    return torch._inductor.list_mode_options(mode)


@contextlib.contextmanager
def compile_caches_for(functions: list[Callable], version: str) -> Iterator[None]:
    """Let inductor's FX graph cache and AOTAutograd's cache store graphs that call `torch.cond` and
    `functions` (our in-graph runtime helpers).

    Both caches refuse higher-order ops and non-torch Python callables by default, so every new process
    would re-trace and re-lower the whole model. The functions are pure tensor code keyed by `version`
    (a hash of their source files, part of the inductor config and so of the cache key), and the cond
    branches are submodules of the hashed graph module (tests/test_compile_cache.py checks that a changed
    branch misses).
    """
    import torch._inductor.config as inductor_config

    marked = dict(getattr(inductor_config, "unsafe_marked_cacheable_functions", {}) or {})
    marked["torch.ops.higher_order.cond"] = version
    for fn in functions:
        marked[f"{fn.__module__}.{fn.__name__}"] = version
    with inductor_config.patch(unsafe_marked_cacheable_functions=marked):
        yield


def dynamo_source_name(node: torch.fx.Node) -> str | None:
    """The Dynamo source expression of a placeholder (e.g. `L['kwargs']['timestep']`), if any."""
    source = getattr(node, "_dynamo_source", None)
    return None if source is None else source.name


def dynamo_input_source(node: torch.fx.Node) -> tuple[str, tuple] | None:
    """Where Dynamo says a graph input comes from, parsed from its source name: `L['kwargs']['t']` →
    `("kwargs", ("t",))`, `L['args'][1]` → `("args", (1,))`, `L['t']` → `("t", ())`; None for another form."""
    m = re.fullmatch(r"L\[['\"](\w+)['\"]\]((?:\[(?:\d+|['\"][^'\"]+['\"])\])*)", dynamo_source_name(node) or "")
    if m is None:
        return None
    keys = tuple(int(k) if k.isdigit() else k.strip("'\"") for k in re.findall(r"\[([^\]]+)\]", m.group(2)))
    return m.group(1), keys


def compiled_original(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside a `torch.compile` wrapper (`OptimizedModule._orig_mod`), else the module itself."""
    return getattr(module, "_orig_mod", module)


def compiled_fullgraph(module: torch.nn.Module) -> bool:
    """Whether a `torch.compile` wrapper was made with `fullgraph=True` (read from its Dynamo context)."""
    ctx = getattr(module, "dynamo_ctx", None)
    return bool(ctx is not None and getattr(ctx, "fullgraph", False))


def all_reduce_sum(x: torch.Tensor, group: str) -> torch.Tensor:
    """A functional (traceable, no host sync) all-reduce sum over the process group named `group`."""
    from torch.distributed import _functional_collectives as funcol

    return funcol.all_reduce(x, "sum", group)


def module_path(source_path: str) -> str:
    """A Dynamo `nn_module_stack` source path as a module path: `L['self'].__dict__['_modules']['blocks'][3]
    .attn` → `blocks.3.attn` (frame root dropped; Dynamo's source-name format, torch 2.11 to 2.15).

    Through diffusers' hooks (context parallel) a module is reached as `L['function_reference'].forward
    .__self__...` and a hooked block's children as `blocks.0.forward.func.__closure__[0].cell_contents
    .forward.__self__.attn1`: those hops are dropped too."""
    p = re.sub(r"^[LG]\[['\"][^'\"]+['\"]\]", "", source_path)
    p = p.replace(".__dict__['_modules']", "").replace("._modules", "")
    p = re.sub(r"\[['\"]([^'\"]+)['\"]\]", r".\1", p)
    p = re.sub(r"\[(\d+)\]", r".\1", p)
    p = re.sub(r"(^|\.)forward\.(?:func\.__closure__\.\d+\.cell_contents\.forward\.)?__self__", "", p)
    return p.lstrip(".")


def copy_dynamo_graph(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A private copy of a Dynamo GraphModule that can be mutated freely.

    The graph handed to a backend is shared with Dynamo's OutputGraph, which reads placeholder meta
    after the backend returns; it must not be edited in place. The copy keeps what AOTAutograd reads:
    `gm.meta`, `_param_name_to_source` and each placeholder's `_dynamo_source` attribute.
    """
    graph = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    out = graph.graph_copy(gm.graph, env)
    graph.output(out)
    for old, new in env.items():
        if old.op == "placeholder" and hasattr(old, "_dynamo_source"):
            new._dynamo_source = old._dynamo_source
    new_gm = torch.fx.GraphModule(gm, graph)
    new_gm.meta = dict(getattr(gm, "meta", {}))
    if hasattr(gm, "_param_name_to_source"):
        new_gm._param_name_to_source = gm._param_name_to_source
    return new_gm


def mark_stateful_placeholder(node: torch.fx.Node) -> None:
    """AOTAutograd accepts extra placeholders whose source is None (as for DDPOptimizer splits)."""
    node._dynamo_source = None


def storage_key(value: Any) -> Any:
    """Identity of a (fake) tensor's storage, to find operands that alias each other."""
    from torch.multiprocessing.reductions import StorageWeakRef

    return StorageWeakRef(value.untyped_storage())


def dynamo_counters() -> dict:
    from torch._dynamo.utils import counters

    return counters


def count_graphs(fn: Callable, *args, fullgraph: bool = False, **kwargs) -> tuple[int, int, list[str]]:
    """Trace `fn` once more with a recording backend: (graphs, graph breaks, break reasons).

    Unlike `torch._dynamo.explain`, this does not `reset()` Dynamo, so compiled models keep their code
    and their cache state.
    """
    import collections

    from torch._dynamo.utils import counters

    graphs: list = []

    def record(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    before = collections.Counter(counters["graph_break"])
    torch_compile(fn, backend=record, dynamic=False, fullgraph=fullgraph, isolate_recompiles=True)(*args, **kwargs)
    new = collections.Counter(counters["graph_break"]) - before
    return len(graphs), sum(new.values()), list(new)


def size_hint(x: Any) -> int | None:
    """A concrete int for a size: an int itself, a backed SymInt's example value; else None."""
    if isinstance(x, int):
        return x
    if isinstance(x, torch.SymInt):
        hint = x.node.hint
        return int(hint) if hint is not None else None
    return None


def compile_function(fn: Callable, example_inputs: list[torch.Tensor], options: dict | None = None) -> Callable:
    """Compile a small tensor function (in-place updates allowed) with inductor, without Dynamo: traced
    with fake tensors by make_fx, so no guards run when it is called (call it with the same shapes,
    dtypes and devices). The fake mode has a shape environment, so inductor's and AOTAutograd's caches serve
    it in the next process."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    mode = FakeTensorMode(shape_env=ShapeEnv())
    fakes = [mode.from_tensor(x, static_shapes=True) for x in example_inputs]
    with torch.no_grad():
        with mode:
            gm = make_fx(fn)(*fakes)
        return compile_fx(gm, fakes, options)


def sym_expr(x: Any):
    """The sympy expression of a SymInt (None for a plain int)."""
    if isinstance(x, torch.SymInt):
        return x.node.expr
    return None


def known_equal(a: Any, b: Any) -> bool:
    """Whether two sizes (ints or SymInts) are equal for every value of their symbols, decided without a guard:
    a pass reading sizes must neither add guards to Dynamo's graph nor fail on a data-dependent (unbacked) size,
    e.g. a sequence length from boolean-mask indexing."""
    from torch.fx.experimental.symbolic_shapes import statically_known_true

    if not isinstance(a, torch.SymInt) and not isinstance(b, torch.SymInt):
        return a == b
    return statically_known_true(a == b)


def data_dependent_sizes(shape: tuple) -> list[str]:
    """The unbacked symbols (sizes only the data knows, e.g. after boolean-mask indexing) in a shape."""
    from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols

    return sorted({str(s) for d in shape if isinstance(d, torch.SymInt) for s in free_unbacked_symbols(d)})


def eval_size(x: Any, env: dict) -> int:
    """A size (int or SymInt) at the concrete symbol values `env`."""
    e = sym_expr(x)
    return int(x) if e is None else int(e.xreplace(env))


def fake_mode_of(values: list):
    """The fake mode of some fake values (e.g. a Dynamo graph's `example_value`s; not the tracing context's,
    which `torch._guards.detect_fake_mode` would prefer)."""
    return next(m for v in values if (m := getattr(v, "fake_mode", None)) is not None)


def backend_fake_mode(example_inputs: list):
    """The fake mode inductor will trace the backend's graph under (the tracing context's); it shares its
    shape environment with the graph's values, not their fake mode."""
    from torch._guards import TracingContext, detect_fake_mode

    ctx = TracingContext.try_get()
    return ctx.fake_mode if ctx is not None and ctx.fake_mode is not None else detect_fake_mode(example_inputs)


def backend_compiler_failed() -> type[BaseException]:
    from torch._dynamo.exc import BackendCompilerFailed

    return BackendCompilerFailed


def is_data_dependent_guard(e: BaseException) -> bool:
    """Whether tracing failed on a guard over a data-dependent (unbacked) size or value, e.g. Python control
    flow on a `.tolist()` that Dynamo captured as symbols instead of breaking the graph (here or in a cause)."""
    from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, GuardOnDataDependentSymNode):
            return True
        e, seen = (e.__cause__ or getattr(e, "inner_exception", None)), seen + 1
    return False


def graph_break_reasons() -> list[str]:
    """Dynamo's graph-break reasons recorded so far in this process (first line of each, distinct)."""
    from torch._dynamo.utils import counters

    reasons = [str(r).splitlines()[0] for key in ("graph_break", "unimplemented") for r in counters[key]]
    return list(dict.fromkeys(reasons))


class DynamoFlags:
    """Dynamo config flags (read when Dynamo traces) for the frames Dynamo compiles during our calls.

    Entering records the call (per thread); the flags are set only while Dynamo compiles a frame while any
    call of ours is in flight (its compile-start / compile-end callbacks), so a steady-state call costs a few
    dict operations instead of a config patch. When a compile is already in flight as our call begins, Dynamo
    will not announce ours (its callbacks fire for the outermost compile only), so the flags are held for the
    whole call instead. Dynamo's config is process-wide: holders are counted and the user's values come back
    when the last one is done; the flags we set only ever switch a capture on, so overlapping holders agree."""

    _lock = threading.Lock()
    _held: dict[str, list] = {}  # flag -> [holders, the user's value]
    _in_flight: dict[int, list[dict]] = {}  # thread id -> the flag sets of its calls in flight, innermost last
    _by_compile: list[dict] = []  # the flag sets the compile-start callback holds until compile end

    def __init__(self, **flags: Any) -> None:
        from torch._dynamo.callback import callback_handler

        self.flags, self._registered = flags, callback_handler.start_callbacks

    def __enter__(self) -> None:
        if DynamoFlags._on_compile_start not in self._registered:  # first call, or after `torch._dynamo.reset()`
            DynamoFlags._install()
        whole = _compiles_in_flight()
        if whole:
            DynamoFlags._hold(self.flags)
        DynamoFlags._in_flight.setdefault(threading.get_ident(), []).append((self.flags, whole))

    def __exit__(self, *exc: Any) -> None:
        tid = threading.get_ident()
        calls = DynamoFlags._in_flight[tid]
        flags, whole = calls.pop()
        if not calls:
            del DynamoFlags._in_flight[tid]
        if whole:
            DynamoFlags._release(flags)

    @classmethod
    def _install(cls) -> None:
        from torch._dynamo.callback import callback_handler

        with cls._lock:
            if cls._on_compile_start not in callback_handler.start_callbacks:
                callback_handler.register_start_callback(cls._on_compile_start)
                callback_handler.register_end_callback(cls._on_compile_end)

    @classmethod
    def _on_compile_start(cls, *args: Any) -> None:
        # every call in flight (Dynamo announces only the outermost of overlapping compiles, so this one may
        # also be another thread's trace); where two disagree (`dynamic=` of two models), the compiling
        # thread's own calls win
        me = threading.get_ident()
        calls = [c for tid, c in list(cls._in_flight.items()) if tid != me] + [cls._in_flight.get(me, [])]
        flags = {k: v for c in calls for f, _ in c for k, v in f.items()}
        if flags:
            cls._hold(flags)
            cls._by_compile.append(flags)

    @classmethod
    def _on_compile_end(cls, *args: Any) -> None:
        while cls._by_compile:
            cls._release(cls._by_compile.pop())

    @classmethod
    def _hold(cls, flags: dict) -> None:
        import torch._dynamo.config as config

        with cls._lock:
            for k, v in flags.items():
                held = cls._held.get(k)
                if held is None:
                    held = cls._held[k] = [0, getattr(config, k)]
                    setattr(config, k, v)
                held[0] += 1

    @classmethod
    def _release(cls, flags: dict) -> None:
        import torch._dynamo.config as config

        with cls._lock:
            for k in flags:
                held = cls._held[k]
                held[0] -= 1
                if held[0] == 0:
                    setattr(config, k, held[1])
                    del cls._held[k]


def dynamic_flags(dynamic: bool | None) -> dict[str, bool]:
    """The Dynamo flags `torch.compile(dynamic=...)` sets (torch's `make_set_enable_dynamic`). Given to
    `DynamoFlags`, they hold only while Dynamo compiles, instead of being patched around every call."""
    if dynamic is None:
        return {}
    return {"assume_static_by_default": False} if dynamic else {"automatic_dynamic_shapes": False,
                                                                 "assume_static_by_default": True}


def _compiles_in_flight() -> bool:
    """Whether Dynamo is compiling a frame right now (in any thread: its callbacks then stay silent for a
    nested or concurrent compile). True when this torch does not say."""
    from torch._dynamo.callback import callback_handler

    return getattr(callback_handler, "_CompilationCallbackHandler__pending_callbacks_counter", 1) > 0


def reset_dynamo() -> None:
    """Forget every compiled frame (the demo and benchmark compile each setting from scratch)."""
    torch._dynamo.reset()


def context_parallel_group(module: torch.nn.Module) -> str | None:
    """The name of the process group a diffusers model shards its sequence over (`enable_parallelism` with a
    `ContextParallelConfig`: Ulysses, Ring or both), or None. Tensor parallelism alone replicates the
    activations between blocks: no group is needed for the cache decision."""
    config = getattr(module, "_parallel_config", None)
    cp = getattr(config, "context_parallel_config", None)
    mesh = getattr(cp, "_flattened_mesh", None)
    if mesh is None or (getattr(cp, "ring_degree", 1) or 1) * (getattr(cp, "ulysses_degree", 1) or 1) <= 1:
        return None
    return mesh.get_group().group_name


def torch_version() -> tuple[int, int]:
    """(major, minor) of the installed torch."""
    major, minor = torch.__version__.split(".")[:2]
    return int(major), int(minor)


def context_parallel_unsupported() -> str | None:
    """Why diffusers' context parallelism cannot be cached on this torch, or None where it can.

    torch < 2.13 (2.11 checked; 2.13 has neither break): Dynamo breaks the graph inside diffusers' Ulysses and
    Ring attention (`DeviceMesh._pg_registry.get`, the skipped `torch._utils._maybe_view_chunk_cat`), so no
    cache region spans the blocks and nothing would ever be cached."""
    if torch_version() >= (2, 13):
        return None
    return (f"caching a model with diffusers' context parallelism needs torch >= 2.13 (torch {torch.__version__}'s "
            "Dynamo breaks the graph inside the Ulysses/Ring attention, so no step could be cached); upgrade torch, "
            "or compile the model without enable_parallelism")


def group_name(group: Any) -> str:
    """A process group's name (what functional collectives take), from a ProcessGroup or a name."""
    return group if isinstance(group, str) else group.group_name


def wrap_triton(kernel: Any) -> Any:
    """`torch.library.wrap_triton(kernel)`: a Triton kernel launch that torch.compile can trace.

    torch < 2.13 (2.11 checked): `wrap_triton` rejects the `InterpretedFunction` that `triton.jit` makes under
    `TRITON_INTERPRET=1`; torch 2.13 hands it back to be launched eagerly, as this does."""
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover - a triton without the interpreter
        InterpretedFunction = ()  # noqa: N806
    if isinstance(kernel, InterpretedFunction):
        return kernel
    return torch.library.wrap_triton(kernel)


@contextlib.contextmanager
def quiet_triton_probe() -> Iterator[None]:
    """Without triton installed, `torch.library.triton_op` logs "Triton not available" once per op it
    defines (it looks for kernels in the body); our ops take their torch branch then, so say nothing."""
    import logging

    logger = logging.getLogger("torch._library.triton")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def tree_leaves(value: Any) -> list:
    """The leaves of a nested value (tuples, lists, dicts of tensors and sizes)."""
    from torch.utils._pytree import tree_leaves as leaves

    return leaves(value)


def is_traceable_subclass(value: Any) -> bool:
    """A tensor subclass that follows the `__tensor_flatten__` / `__tensor_unflatten__` protocol (torchao's
    quantized weights, DTensor, ...): torch.compile can take it apart into plain inner tensors."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    return is_traceable_wrapper_subclass(value)


def is_dispatch_subclass(value: Any) -> bool:
    """A tensor of a subclass with its own `__torch_dispatch__` (fake tensors aside)."""
    from torch._subclasses.fake_tensor import FakeTensor

    return (isinstance(value, torch.Tensor) and not isinstance(value, FakeTensor)
            and type(value).__torch_dispatch__ is not torch._C._disabled_torch_dispatch_impl)


_HOOK_ATTRIBUTES = frozenset({"_hf_hook", "_old_forward"})


@functools.cache
def hook_owning_wrapper() -> type:
    """`torch.compile`'s module wrapper, except that accelerate's hook attributes (`_hf_hook`, `_old_forward`)
    set on it stay on it instead of being forwarded to the wrapped module: a hook on the wrapper (model CPU
    offload added after compiling) runs outside the compiled code, and the wrapped model stays unhooked."""
    from torch._dynamo.eval_frame import OptimizedModule

    class HookOwningOptimizedModule(OptimizedModule):
        def __setattr__(self, name: str, value: Any) -> None:
            if name in _HOOK_ATTRIBUTES:
                return torch.nn.Module.__setattr__(self, name, value)
            return super().__setattr__(name, value)

        def __delattr__(self, name: str) -> None:
            if name in _HOOK_ATTRIBUTES:
                return torch.nn.Module.__delattr__(self, name)
            return super().__delattr__(name)

    HookOwningOptimizedModule.__name__ = HookOwningOptimizedModule.__qualname__ = "OptimizedModule"
    return HookOwningOptimizedModule


# ---- a graph compiled by inductor in another process (`background.py`) ----------------------------------


def pickle_graph(gm: torch.fx.GraphModule, values: list) -> bytes:
    """`gm` and its inputs (static-shaped tensors, described by their metadata) as bytes another process can
    compile (`unpickle_graph`).

    torch's `GraphPickler` (inductor's own out-of-process compile format), with every op allowed, node metadata
    dropped (the other process propagates fresh values), and the package's in-graph functions pickled by name."""
    from torch.fx import _graph_pickler as gp

    attrs = {n.target: _attr(gm, n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    clean = torch.fx.GraphModule(attrs, gm.graph)  # without Dynamo's attributes on the module (weak dicts)
    described = [_TensorSpec(tuple(v.shape), v.stride(), v.dtype, str(v.device), v.requires_grad)
                 if isinstance(v, torch.Tensor) else v for v in values]
    original = gp._OpPickleData.__dict__["pickle"]

    def by_name(cls, op, options):
        module = getattr(op, "__module__", None) or ""
        if callable(op) and module.split(".")[0] == __name__.split(".")[0]:
            return _FunctionByName(module, op.__qualname__)
        return original.__func__(cls, op, options)

    with _PICKLE_LOCK:
        gp._OpPickleData.pickle = classmethod(by_name)
        try:
            return gp.GraphPickler.dumps((clean, described),
                                         gp.Options(ops_filter=None, node_metadata_key_filter=lambda k: False))
        finally:
            gp._OpPickleData.pickle = original


_PICKLE_LOCK = threading.Lock()


class _TensorSpec(NamedTuple):
    shape: tuple
    stride: tuple
    dtype: torch.dtype
    device: str
    requires_grad: bool


def _attr(gm: torch.nn.Module, target: str) -> Any:
    for part in target.split("."):
        gm = getattr(gm, part)
    return gm


def is_tensor_subclass(value: Any) -> bool:
    """Whether `value` is a wrapper tensor subclass (torchao's quantized weights), fake or real."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    return is_traceable_wrapper_subclass(value)


class _FunctionByName:
    """A graph target pickled as its module and name (what `GraphPickler` asks of an op's pickled form)."""

    def __init__(self, module: str, qualname: str) -> None:
        self.module, self.qualname = module, qualname

    def unpickle(self, unpickle_state: object) -> object:
        import importlib

        return _attr(importlib.import_module(self.module), self.qualname)


def unpickle_graph(data: bytes) -> tuple[torch.fx.GraphModule, list, Any]:
    """`pickle_graph`'s graph, its inputs' values (fake, in a new fake mode) and that mode; every node's value
    propagated again (`example_value`, which inductor's caches read)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx import _graph_pickler as gp
    from torch.fx.experimental.symbolic_shapes import ShapeEnv
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp

    mode = FakeTensorMode(shape_env=ShapeEnv())
    gm, described = gp.GraphPickler.loads(data, mode)
    with mode:
        values = [torch.empty_strided(v.shape, v.stride, dtype=v.dtype, device=v.device,
                                      requires_grad=v.requires_grad) if isinstance(v, _TensorSpec) else v
                  for v in described]
    modules = [m for m in gm.modules() if isinstance(m, torch.fx.GraphModule)]
    for m in modules:
        m.recompile()
    FakeTensorProp(gm, mode).propagate_dont_convert_inputs(*values)
    for m in modules:
        for n in m.graph.nodes:
            if "val" in n.meta:
                n.meta["example_value"] = n.meta["val"]
    return gm, values, mode


def compile_artifact(gm: torch.fx.GraphModule, values: list, mode: Any, options: dict, path: str) -> None:
    """Compile `gm` with inductor for its inputs' exact shapes and save the result at `path` (`load_artifact`)."""
    from torch._inductor import standalone_compile

    with torch.no_grad():
        artifact = standalone_compile(gm, values, dynamic_shapes="from_example_inputs", fake_mode=mode,
                                      options={"config_patches": dict(options)})
    artifact.save(path=path, format="binary")


def load_artifact(path: str) -> Callable:
    from torch._inductor import CompiledArtifact

    return CompiledArtifact.load(path=path, format="binary")


def inductor_cache_dir() -> str:
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return cache_dir()
