"""Offloading and layerwise casting with a compiled, cached transformer (on CPU: onload and execution device are the CPU, so the
hooks run and move nothing; what is tested is that they run outside the compiled graph and cache as usual).

- `pipe.enable_model_cpu_offload()` (accelerate's `cpu_offload_with_hook` on the whole transformer), before or
  after `dit_cache_fx.compile`, pipeline and transformer forms: one graph, 0 graph breaks, outputs and cached
  steps equal to the same compiled pipeline without offloading.
- diffusers group offloading (block_level, leaf_level; to disk, so that a block run without its onload reads
  empty weights), before or after `compile`: the hooks are lifted for tracing and run around the compiled code
  (regional mode: around each block call), outputs and cached steps equal the uncached-offload-free run.
- accelerate's sequential offload, group offloading with streams or enabled after the first call:
  `OffloadError` naming what works.
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


def _group_offload(transformer, kind: str, disk=None, per_group: int = 1) -> None:
    extra = {"num_blocks_per_group": per_group} if kind == "block_level" else {}
    if disk is not None:  # resting weights are empty tensors: a block run without its onload is garbage
        extra["offload_to_disk_path"] = str(disk)
    transformer.enable_group_offload(onload_device=torch.device("cpu"), offload_type=kind, **extra)


@pytest.fixture
def group_calls(monkeypatch):
    """Counts of diffusers' ModuleGroup onloads and offloads."""
    from diffusers.hooks.group_offloading import ModuleGroup

    calls = {"onload": 0, "offload": 0}
    for name in calls:
        real = getattr(ModuleGroup, f"{name}_")
        monkeypatch.setattr(ModuleGroup, f"{name}_", lambda self, _r=real, _n=name: calls.__setitem__(_n, calls[_n] + 1)
                            or _r(self))
    return calls


@pytest.mark.parametrize("regional", [True, False], ids=["regional", "whole"])
@pytest.mark.parametrize("kind", ["block_level", "leaf_level"])
def test_group_offload_caches(kind, regional, reference, group_calls, tmp_path):
    """Group offloading to disk, enabled before compile: outputs and cached steps equal the compiled pipeline
    without offloading, in one graph without breaks; every onload is undone by the end of the call; in the
    regional mode a cached step onloads no middle block."""
    from torch._dynamo.utils import counters

    ref, ref_cached = reference
    pipe = _pipe()
    _group_offload(pipe.transformer, kind, disk=tmp_path)
    if regional:
        dit_cache_fx.compile(pipe, cache=SPEC, regional=True)
    else:
        with pytest.warns(UserWarning, match="all its groups are onloaded for each call"):
            dit_cache_fx.compile(pipe, cache=SPEC)
    group_calls.update(onload=0, offload=0)  # enabling offloaded every group once
    for _ in range(2):
        out = _run(pipe)
        assert dit_cache_fx.summary(pipe.transformer).cached_steps == ref_cached
        assert max_rel_err([out], [ref]) <= 1e-5
    assert len(counters["graph_break"]) == 0
    assert len(handle(pipe.transformer).graphs) == 1
    offload = handle(pipe.transformer).offload
    assert not offload.onloaded and group_calls["onload"] == group_calls["offload"] > 0
    per_generation = group_calls["onload"] // 2
    if regional and kind == "block_level":  # the model's own group and 6 blocks; a cached step skips 5 of them
        assert per_generation == STEPS * 7 - len(ref_cached) * 5
    elif not regional:
        assert per_generation == STEPS * len(offload)


def test_group_offload_of_several_blocks(reference, group_calls, tmp_path):
    """Groups of 2 blocks: a group whose leading block is skipped is onloaded by its first block that runs, and
    one whose offloading block is skipped is offloaded when the call ends."""
    ref, ref_cached = reference
    pipe = _pipe()
    dit_cache_fx.compile(pipe, cache="F1B1_W2_R0.5", regional=True)  # both cuts fall inside a group
    _group_offload(pipe.transformer, "block_level", disk=tmp_path, per_group=2)  # after compile, before a call
    plain = _pipe()
    dit_cache_fx.compile(plain, cache="F1B1_W2_R0.5", regional=True)
    want = _run(plain)
    group_calls.update(onload=0, offload=0)
    out = _run(pipe)
    assert dit_cache_fx.summary(pipe.transformer).cached_steps == dit_cache_fx.summary(plain.transformer).cached_steps
    assert dit_cache_fx.summary(pipe.transformer).cached_steps
    assert max_rel_err([out], [want]) <= 1e-5
    assert not handle(pipe.transformer).offload.onloaded and group_calls["onload"] == group_calls["offload"]


def test_group_offload_after_first_call_fails(tmp_path):
    pipe = _pipe()
    dit_cache_fx.compile(pipe, cache=SPEC)
    _run(pipe)
    _group_offload(pipe.transformer, "block_level", disk=tmp_path)
    with pytest.raises(dit_cache_fx.OffloadError, match=r"after its first compiled call"):
        _run(pipe)


def test_group_offload_with_streams_fails():
    """use_stream=True needs an accelerator; its groups carry a stream (set by hand here)."""
    pipe = _pipe()
    _group_offload(pipe.transformer, "block_level")
    from dit_cache_fx.offload import group_of, hooked_modules

    group_of(next(iter(hooked_modules(pipe.transformer).values()))).stream = object()
    with pytest.raises(dit_cache_fx.OffloadError, match=r"use_stream=False"):
        dit_cache_fx.compile(pipe, cache=SPEC)


def test_sequential_offload_fails_in_compile():
    pipe = _pipe()
    pipe.enable_sequential_cpu_offload(device="cpu")
    with pytest.raises(dit_cache_fx.OffloadError, match=r"enable_sequential_cpu_offload.*enable_model_cpu_offload.*group"):
        dit_cache_fx.compile(pipe, cache=SPEC)


def _cast(pipe) -> None:
    pipe.transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)


@pytest.mark.parametrize("regional", [False, True], ids=["whole", "regional"])
def test_layerwise_casting(regional, tmp_path):
    """diffusers layerwise casting (fp8 storage, fp32 compute): its hooks' in-place `module.to` becomes casts
    in the graph; threshold 0 equals the eager cast model, the weights stay stored in fp8, the cache caches,
    one graph, 0 breaks. Regional mode also with group offloading to disk on the same layers."""
    from torch._dynamo.utils import counters

    eager = _pipe()
    _cast(eager)
    want = _run(eager)
    pipe = _pipe()
    _cast(pipe)
    if regional:
        _group_offload(pipe.transformer, "leaf_level", disk=tmp_path)
    dit_cache_fx.compile(pipe, cache="F1B0_R0", regional=regional)
    assert max_rel_err([_run(pipe)], [want]) <= 1e-5
    assert pipe.transformer.transformer_blocks[0].ff.net[2].weight.dtype == torch.float8_e4m3fn
    dit_cache_fx.configure(pipe, SPEC)
    _run(pipe)
    assert dit_cache_fx.summary(pipe.transformer).cached_steps
    assert len(counters["graph_break"]) == 0
    assert len(handle(pipe.transformer).graphs) == 1
