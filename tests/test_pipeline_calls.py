"""Pipelines as users run them (beside test_pipelines.py): the pipeline form of `compile` marks every
pipeline call as a generation (1-step generations back to back stay apart), a batch that changes inside a
generation (Z-Image's `cfg_truncation`) computes once and goes on, and one compiled model called from
several threads runs each thread's generations as if alone."""

import threading

import pytest
import torch

import dit_cache_fx

from helpers import handle, rel_err
from tiny_models import MODELS, run_loop
from tiny_pipelines import HAVE_TRANSFORMERS, PIPELINES

pytestmark = pytest.mark.skipif(not HAVE_TRANSFORMERS, reason="diffusers' pipeline classes need transformers")


def _one_step_outputs(pipe, p, n=6):
    outs = []
    for i in range(n):
        kw = p.call_kwargs(1)
        kw["generator"] = torch.Generator().manual_seed(i)
        outs.append(pipe(**kw)[0])
    return outs


def test_one_step_generations_through_the_pipeline_form_stay_apart():
    torch._dynamo.reset()
    p = PIPELINES["flux"]
    pipe = p.build()
    ref = _one_step_outputs(pipe, p)
    dit_cache_fx.compile(pipe, cache="F1B0_W0_R1.0")  # would cache every call after the first if merged
    assert type(pipe).__name__ == "FluxPipeline" and dit_cache_fx.api.is_pipeline(pipe)
    outs = _one_step_outputs(pipe, p)
    for a, b in zip(outs, ref):
        assert rel_err(a, b) <= 1e-4
    s = dit_cache_fx.summary(pipe)
    assert s.num_steps == 1 and not s.cached_steps and not s.separate_cfg


def test_one_step_generations_of_the_transformer_alone_warn_once():
    torch._dynamo.reset()
    p = PIPELINES["flux"]
    pipe = p.build()
    pipe.transformer = dit_cache_fx.compile(pipe.transformer, cache="F1B0_W0_R0.05")
    with pytest.warns(UserWarning, match="cannot show where one generation ends") as record:
        _one_step_outputs(pipe, p, n=4)
    assert sum("cannot show where" in str(w.message) for w in record) == 1


def test_cache_context_names_the_branch():
    """SD3 with separate CFG names its calls: the branches come from the names, equal to the guess."""
    torch._dynamo.reset()
    p = PIPELINES["flux_true_cfg"]
    pipe = p.build()
    ref = pipe(**p.call_kwargs(4))[0]
    dit_cache_fx.compile(pipe, cache="F1B0_W1_R0")
    out = pipe(**p.call_kwargs(4))[0]
    assert rel_err(out, ref) <= 1e-4
    s = dit_cache_fx.summary(pipe)
    assert s.num_steps == 4 and s.separate_cfg


@pytest.mark.parametrize("dynamic", [False, True])
def test_zimage_cfg_truncation_goes_on(dynamic):
    torch._dynamo.reset()
    p = PIPELINES["zimage"]
    pipe = p.build()
    kw = dict(p.call_kwargs(6), cfg_truncation=0.5)
    ref = pipe(**kw)[0]
    dit_cache_fx.compile(pipe, cache="F1B0_W1_R0", dynamic=dynamic)
    out = pipe(**dict(p.call_kwargs(6), cfg_truncation=0.5))[0]
    assert rel_err(out, ref) <= 1e-4
    assert dit_cache_fx.summary(pipe).num_steps == 6


def test_threads_keep_their_own_generations():
    torch._dynamo.reset()
    m = MODELS["flux"]
    model = m.build()
    refs = {seed: run_loop(model, m, steps=6, seed=seed) for seed in (0, 1, 2, 3)}
    compiled = dit_cache_fx.compile(model, cache="F1B0_W1_R0.3")
    single = {seed: run_loop(compiled, m, steps=6, seed=seed) for seed in (0, 1, 2, 3)}
    outs = _in_threads({seed: (lambda seed=seed: run_loop(compiled, m, steps=6, seed=seed, on_step=lambda i: None))
                        for seed in refs})
    for seed in refs:
        assert max(rel_err(a, b) for a, b in zip(outs[seed], single[seed])) <= 1e-5
    # the dead threads' states go at the next new thread; release frees everything
    dit_cache_fx.release(compiled)
    assert handle(compiled).store.threads == {}


def test_wan22_two_experts_through_the_pipeline_form():
    """`compile(pipe)` compiles both experts; each counts its own steps; summary/explain give one per expert."""
    torch._dynamo.reset()
    p = PIPELINES["wan22"]
    pipe = p.build()
    ref = pipe(**p.call_kwargs(4))[0]
    dit_cache_fx.compile(pipe, cache="F1B0_W1_R0")
    assert set(dit_cache_fx.api.compiled_modules(pipe)) == {"transformer", "transformer_2"}
    for _ in range(2):  # the second call is a new generation for both experts
        out = pipe(**p.call_kwargs(4))[0]
        assert rel_err(out, ref) <= 1e-4
        s = dit_cache_fx.summary(pipe)
        assert set(s) == {"transformer", "transformer_2"}
        assert all(x.separate_cfg for x in s.values())
        assert s["transformer"].num_steps + s["transformer_2"].num_steps == 4
    assert set(dit_cache_fx.explain(pipe)) == {"transformer", "transformer_2"}


def test_heun_through_the_pipeline_form_counts_steps():
    """Heun calls the transformer twice per timestep after the first: still one step each, one generation."""
    torch._dynamo.reset()
    p = PIPELINES["heun"]
    pipe = p.build()
    ref = pipe(**p.call_kwargs(3))[0]
    dit_cache_fx.compile(pipe, cache="F1B0_W1_R0")
    for _ in range(2):
        out = pipe(**p.call_kwargs(3))[0]
        assert rel_err(out, ref) <= 1e-4
        s = dit_cache_fx.summary(pipe)
        assert s.num_steps == p.expected_calls(3) and not s.separate_cfg


def _toy_loop(model, n, seed, steps=8):
    x = torch.randn(1, n, 16, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return [model(x, torch.tensor([1000.0 - 110 * s])) for s in range(steps)]


def _in_threads(jobs):
    """Run `jobs` (name -> callable) in threads started together; their results by name."""
    outs, errors = {}, []
    barrier = threading.Barrier(len(jobs))

    def worker(name, job):
        try:
            barrier.wait(timeout=60)
            outs[name] = job()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=item) for item in jobs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and all(not t.is_alive() for t in threads), errors
    return outs


def test_two_threads_different_shapes_and_two_models():
    """Two threads on one model at two sequence lengths, then two models in two threads: each as if alone."""
    from toy import ToyDiT

    torch._dynamo.reset()
    torch.manual_seed(0)
    a, b = ToyDiT(num_layers=5).eval(), ToyDiT(num_layers=5).eval()
    ca = dit_cache_fx.compile(a, cache="F1B0_W2MC2_R1.0")
    cb = dit_cache_fx.compile(b, cache="F1B0_W2MC2_R1.0")
    single = {(m, n): _toy_loop(c, n, seed=n) for m, c in (("a", ca), ("b", cb)) for n in (8, 12)}
    assert dit_cache_fx.summary(cb).cached_steps  # the runs do cache
    outs = _in_threads({8: lambda: _toy_loop(ca, 8, seed=8), 12: lambda: _toy_loop(ca, 12, seed=12)})
    for n in (8, 12):
        assert max(rel_err(x, y) for x, y in zip(outs[n], single[("a", n)])) <= 1e-6
    outs = _in_threads({"a": lambda: _toy_loop(ca, 8, seed=8), "b": lambda: _toy_loop(cb, 12, seed=12)})
    assert max(rel_err(x, y) for x, y in zip(outs["a"], single[("a", 8)])) <= 1e-6
    assert max(rel_err(x, y) for x, y in zip(outs["b"], single[("b", 12)])) <= 1e-6
    with torch.no_grad():  # caching changed the outputs: the comparison can fail
        plain = [a(torch.randn(1, 8, 16, generator=torch.Generator().manual_seed(8)), torch.tensor([1000.0 - 110 * s]))
                 for s in range(8)]
    assert max(rel_err(x, y) for x, y in zip(single[("a", 8)], plain)) > 1e-4
