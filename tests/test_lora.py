"""PEFT LoRA adapters on a compiled, cached transformer (tiny Flux, diffusers' own adapter API):

- loaded before `compile`: threshold 0 equals the uncompiled model with the adapter, and a caching threshold
  caches; `enable_lora_hotswap` + `load_lora_adapter(..., hotswap=True)` swaps the weights with 0 recompiles;
- loaded after `compile`: the next call compiles once more (the module changed), then serves as before;
- changing adapter scales (`set_adapters(..., weights=...)`) costs one recompile per new value, as with plain
  torch.compile (the scale is a Python float the graph is specialised on).
"""

import pytest
import torch

import dit_cache_fx

from helpers import handle, max_rel_err
from tiny_models import MODELS, run_loop

peft = pytest.importorskip("peft")

M = MODELS["flux"]
STEPS = 4
TARGETS = ["to_q", "to_k", "to_v"]


def _adapter(seed: int) -> dict:
    """A random (non-zero) LoRA of rank 4 on the attention projections, as a diffusers-format state dict."""
    model = M.build()
    torch.manual_seed(seed)
    model.add_adapter(peft.LoraConfig(r=4, lora_alpha=4, target_modules=TARGETS, init_lora_weights=False),
                      adapter_name="x")
    return peft.get_peft_model_state_dict(model, adapter_name="x")


def _with(adapters: dict[str, dict]) -> torch.nn.Module:
    model = M.build()
    for name, sd in adapters.items():
        model.load_lora_adapter(sd, prefix=None, adapter_name=name)
    return model


def _graphs(compiled) -> int:
    return len(handle(compiled).graphs)


def test_lora_before_compile_and_hotswap():
    a, b = _adapter(1), _adapter(2)
    model = M.build()
    model.enable_lora_hotswap(target_rank=4)
    model.load_lora_adapter(a, prefix=None, adapter_name="default_0")
    compiled = dit_cache_fx.compile(model, cache="F1B0_W1_R0")
    outs = run_loop(compiled, M, steps=STEPS)
    assert max_rel_err(outs, run_loop(_with({"default_0": a}), M, steps=STEPS)) <= 1e-5
    dit_cache_fx.configure(compiled, residual_diff_threshold=1.0)
    run_loop(compiled, M, steps=STEPS)
    assert dit_cache_fx.summary(compiled).cached_steps  # caches with the adapter

    model.load_lora_adapter(b, prefix=None, adapter_name="default_0", hotswap=True)
    dit_cache_fx.configure(compiled, residual_diff_threshold=0.0)
    with torch._dynamo.config.patch(error_on_recompile=True):
        outs = run_loop(compiled, M, steps=STEPS)
    eager_b = run_loop(_with({"default_0": b}), M, steps=STEPS)
    assert max_rel_err(outs, eager_b) <= 1e-5
    assert _graphs(compiled) == 1
    from torch._dynamo.utils import counters
    assert len(counters["graph_break"]) == 0


def test_lora_after_compile_compiles_once_more():
    a = _adapter(1)
    model = M.build()
    compiled = dit_cache_fx.compile(model, cache="F1B0_W1_R0")
    run_loop(compiled, M, steps=STEPS)
    assert _graphs(compiled) == 1
    model.load_lora_adapter(a, prefix=None, adapter_name="a")
    outs = run_loop(compiled, M, steps=STEPS)
    assert max_rel_err(outs, run_loop(_with({"a": a}), M, steps=STEPS)) <= 1e-5
    assert _graphs(compiled) == 2
    run_loop(compiled, M, steps=STEPS)
    assert _graphs(compiled) == 2


def test_adapter_weights_cost_one_recompile_each():
    a, b = _adapter(1), _adapter(2)
    model = _with({"a": a, "b": b})
    model.set_adapters(["a", "b"], weights=[1.0, 1.0])
    compiled = dit_cache_fx.compile(model, cache="F1B0_W1_R0")
    run_loop(compiled, M, steps=STEPS)
    model.set_adapters(["a", "b"], weights=[1.0, 0.5])
    outs = run_loop(compiled, M, steps=STEPS)
    ref = _with({"a": a, "b": b})
    ref.set_adapters(["a", "b"], weights=[1.0, 0.5])
    assert max_rel_err(outs, run_loop(ref, M, steps=STEPS)) <= 1e-5
    assert _graphs(compiled) == 2
    model.set_adapters(["a", "b"], weights=[1.0, 1.0])  # a value seen before: its graph is reused
    run_loop(compiled, M, steps=STEPS)
    assert _graphs(compiled) == 2
