"""Offloading with a compiled, cached transformer (on CPU: onload and execution device are the CPU, so the
hooks run and move nothing; what is tested is that they run outside the compiled graph and cache as usual).

- `pipe.enable_model_cpu_offload()` (accelerate's `cpu_offload_with_hook` on the whole transformer), before or
  after `dit_cache_fx.compile`, pipeline and transformer forms: one graph, 0 graph breaks, outputs and cached
  steps equal to the same compiled pipeline without offloading.
- diffusers group offloading (block_level, leaf_level) and accelerate's sequential offload put hooks around every
  block or layer, which Dynamo cannot trace: `OffloadError` in `compile()`, or at the first call when the hooks
  came after `compile`, naming the hooks and model offloading as what works.
"""

import pytest
import torch

import dit_cache_fx

from helpers import handle, max_rel_err
from tiny_pipelines import HAVE_TRANSFORMERS, PIPELINES

pytest.importorskip("accelerate")
pytestmark = pytest.mark.skipif(not HAVE_TRANSFORMERS, reason="diffusers pipelines need transformers")

P = PIPELINES["flux"]
SPEC = "F1B0_W2_R0.5"
STEPS = 6


def _pipe():
    pipe = P.build()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run(pipe) -> torch.Tensor:
    return pipe(**P.call_kwargs(STEPS))[0]


def _compile(pipe, form: str):
    if form == "pipeline":
        dit_cache_fx.compile(pipe, cache=SPEC)
    else:
        pipe.transformer = dit_cache_fx.compile(pipe.transformer, cache=SPEC)


@pytest.fixture(scope="module")
def reference():
    pipe = _pipe()
    dit_cache_fx.compile(pipe, cache=SPEC)
    out = _run(pipe)
    cached = dit_cache_fx.summary(pipe.transformer).cached_steps
    assert 0 < len(cached) < STEPS
    return out, cached


@pytest.mark.parametrize("form", ["pipeline", "transformer"])
@pytest.mark.parametrize("order", ["before", "after"])
def test_model_cpu_offload(order, form, reference, monkeypatch):
    from accelerate.hooks import CpuOffload

    calls = []
    pre = CpuOffload.pre_forward
    monkeypatch.setattr(CpuOffload, "pre_forward", lambda self, module, *a, **k: calls.append(module) or
                        pre(self, module, *a, **k))
    ref, ref_cached = reference
    pipe = _pipe()
    if order == "before":
        pipe.enable_model_cpu_offload(device="cpu")
    _compile(pipe, form)
    if order == "after":
        pipe.enable_model_cpu_offload(device="cpu")
    assert pipe._all_hooks  # accelerate's hooks are installed
    assert "_hf_hook" not in pipe.transformer._orig_mod.__dict__  # the hook is on the wrapper, outside
    for _ in range(2):
        out = _run(pipe)
        assert dit_cache_fx.summary(pipe.transformer).cached_steps == ref_cached
        assert max_rel_err([out], [ref]) <= 1e-5
    assert calls.count(pipe.transformer) == 2 * STEPS  # the offload hook ran at every call, on the wrapper
    from torch._dynamo.utils import counters
    assert len(counters["graph_break"]) == 0
    assert len(handle(pipe.transformer).graphs) == 1


def _group_offload(transformer, kind: str) -> None:
    extra = {"num_blocks_per_group": 1} if kind == "block_level" else {}
    transformer.enable_group_offload(onload_device=torch.device("cpu"), offload_type=kind, **extra)


@pytest.mark.parametrize("kind", ["block_level", "leaf_level"])
def test_group_offload_fails_in_compile(kind):
    pipe = _pipe()
    _group_offload(pipe.transformer, kind)
    with pytest.raises(dit_cache_fx.OffloadError, match=r"group offloading.*enable_model_cpu_offload"):
        dit_cache_fx.compile(pipe, cache=SPEC)


def test_group_offload_after_compile_fails_at_first_call():
    pipe = _pipe()
    dit_cache_fx.compile(pipe, cache=SPEC)
    _group_offload(pipe.transformer, "block_level")
    with pytest.raises(dit_cache_fx.OffloadError, match=r"enable_group_offload.*enable_model_cpu_offload"):
        _run(pipe)
    assert not handle(pipe.transformer).graphs  # failed before anything was compiled


def test_sequential_offload_fails_in_compile():
    pipe = _pipe()
    pipe.enable_sequential_cpu_offload(device="cpu")
    with pytest.raises(dit_cache_fx.OffloadError, match=r"enable_sequential_cpu_offload.*enable_model_cpu_offload"):
        dit_cache_fx.compile(pipe, cache=SPEC)
