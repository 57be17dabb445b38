"""The Dynamo backend, an orchestrator: copy the graph → run the pass pipeline (regional mode: outline the
blocks as its last stage) → compile with inductor → the graph's `runner.GraphRunner`.

What it does with each graph is recorded on the module's `handle.CacheHandle` (`GraphInfo`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

import torch
from torch.fx import GraphModule, Node

from . import _compat
from .errors import DitCacheError, UnsupportedWeightsError
from .handle import CacheHandle, GraphInfo, InputPath
from .passes.graph_utils import check_graph, placeholders, value_of
from .passes.outline import drop_unused_inputs, outline_graph
from .passes.pipeline import PipelineRecord, run_passes
from .passes.rewrite import flatten_subclass_operands
from .passes.timestep import find_timestep
from .runner import GraphRunner, input_symbols
from .runtime import regional, registry

log = logging.getLogger(__name__)

__all__ = ["CacheBackend", "CacheHandle"]


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
        gm = _compat.copy_dynamo_graph(gm)  # Dynamo's own graph must not change
        inputs = placeholders(gm)
        record, shapes = self._passes(gm, inputs)
        kept, as_python = None, False
        if h.regional:  # the pipeline's optional last stage
            kept, as_python = self._outline(gm, inputs)
            example_inputs = [example_inputs[i] for i in kept]
        flattened = flatten_subclass_operands(gm) if record.regions else 0  # torchao weights cross conds flat
        info = GraphInfo(record, len(gm.graph.nodes), shapes, gm.code, frame_children=_frame_children(gm),
                         outer="python" if as_python else "inductor")
        h.graphs.append(info)
        if record.regions:
            log.info("dit_cache_fx: %s", "; ".join(f"{r.plan.name}: {r.plan.split_text()}" for r in record.regions))
        compiled = gm if as_python else self._compile(gm, example_inputs, flattened)
        device = value_of(record.regions[0].plan.fn_out).device if record.regions else None
        info.runner = GraphRunner(h, compiled, record, input_symbols(inputs), device, kept)
        info.runner.classifies = record.classifies
        if as_python and h.outer == "auto":
            self._background(gm, info)
        return info.runner

    def _passes(self, gm: GraphModule, inputs: list[Node]) -> tuple[PipelineRecord, dict[str, tuple]]:
        """The pass pipeline over `gm` (in place) when the spec caches anything; and the model inputs' shapes."""
        h = self.handle
        paths = {p: InputPath.of(p) for p in inputs}
        names = list(h.signature.parameters)
        arg_of = lambda p: paths[p].argument(names) if paths[p] is not None else None  # noqa: E731
        shapes = {p.name: tuple(value_of(p).shape) for p in inputs if isinstance(value_of(p), torch.Tensor)
                  and paths[p] is not None}
        self._note_graph(shapes)
        if not h.specs.enabled:
            return PipelineRecord(gm.code), shapes
        timestep = self._find_timestep(gm, arg_of, names)
        hidden_inputs = [p for p in inputs if names and arg_of(p) == names[0]]
        fake_mode = _compat.fake_mode_of([value_of(p) for p in inputs])
        return run_passes(gm, h.specs, hidden_inputs, fake_mode, h.group, timestep), shapes

    def _outline(self, gm: GraphModule, inputs: list[Node]) -> tuple[list[int], bool]:
        """Regional mode: each distinct block compiled once, called from the outer graph (passes/outline.py).
        Returns the Dynamo inputs the outer graph still takes, and whether it runs as its FX code (every block
        outlined, and `outer=` is not "inductor")."""
        h = self.handle
        outlined = outline_graph(gm, {p: i for i, p in enumerate(inputs)}, self._options())
        check_graph(gm)  # lint of the graph and its branches, no aliased cond operands
        regional.own(h, outlined.codes)
        kept = [i for i in drop_unused_inputs(gm, len(inputs)) if i < len(inputs)]
        return kept, outlined.inline == 0 and h.outer != "inductor"

    def _background(self, gm: GraphModule, info: GraphInfo) -> None:
        """`outer="auto"`: the graph runs as its FX code until a child process has compiled it (background.py)."""
        from .background import OuterCompile, not_eligible

        values = [value_of(p) for p in placeholders(gm)]
        why = not_eligible(values, self.handle.group)
        if why is not None:
            log.info("dit_cache_fx: the graph around the blocks runs as FX code: %s", why)
            return
        runner = info.runner

        def swap(compiled: Callable | None) -> None:  # None: the child failed, the graph stays FX code
            runner.background = None
            if compiled is not None:
                runner.compiled, info.outer = compiled, "inductor"

        runner.background = OuterCompile(gm, values, {"size_asserts": False, **self._options()}, swap)

    def _options(self) -> dict:
        """The user's inductor config (`mode=`, `options=`). Regional mode's code, the blocks' and the outer
        graph's, takes no CUDA graphs: a replay would skip the block calls' Python (code lookup, offloading)."""
        options = dict(self.handle.inductor_options)
        if self.handle.regional:
            options.pop("triton.cudagraphs", None)
        return options

    def _compile(self, gm: GraphModule, example_inputs: list, flattened: int) -> Callable:
        try:
            return self._inductor(gm, example_inputs)
        except Exception as e:
            if not flattened or isinstance(e, DitCacheError):
                raise
            raise UnsupportedWeightsError(
                f"dit_cache_fx: {flattened} tensor-subclass inputs of the cache regions (quantized weights?) cross "
                f"the torch.cond as their inner tensors, and compiling that failed ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}); compile with dit_cache_fx.compile(..., regional=True), "
                "which keeps the weights outside the cond") from e

    def _inductor(self, gm: GraphModule, example_inputs: list) -> Callable:
        """The graph compiled by inductor; its inputs: Dynamo's, then the state tensors the passes added.

        Without inductor's per-call size and stride asserts (unless the user asks for them): Dynamo's guards
        already check every input it passes (their sizes and strides), and the state tensors are ours, allocated
        with the layouts the graph was compiled for; on a small model the asserts cost more host time per call
        than the cache's own bookkeeping (about 150 checks per call on the tiny bench model)."""
        with _compat.backend_fake_mode(example_inputs):  # the state inputs' examples, in inductor's fake mode
            fakes = [torch.empty(v.shape, dtype=v.dtype, device=v.device) for v in
                     (value_of(n) for n in placeholders(gm)[len(example_inputs):])]
        options = {"size_asserts": False, **self._options()}
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


def _frame_children(gm: GraphModule) -> frozenset:
    """The first names of the module paths the graph calls into, relative to the compiled frame's module."""

    return frozenset(_compat.module_path(path).split(".")[0] for n in gm.graph.nodes
                     for path, _ in (n.meta.get("nn_module_stack") or {}).values() if path.startswith("L['self']"))
