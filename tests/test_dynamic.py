"""State per input shape: with `dynamic=True` one set of graphs (no more than plain `torch.compile`) serves
several resolutions and batch sizes, each shape with its own state; static shapes say when a new shape
compiles again, and a fallback to eager is never silent."""

import pytest
import torch

import dit_cache_fx

from helpers import handle, max_rel_err, n_states
from tiny_models import MODELS
from toy import ToyDiT

SHAPES = [(side, batch) for side in (4, 6, 8) for batch in (2, 3)]  # 16, 36, 64 image tokens
STEPS = 4


def _flux_generation(model, side, batch, steps=STEPS):
    g = torch.Generator().manual_seed(side * 10 + batch)
    n = side * side
    x = torch.randn(batch, n, 16, generator=g)
    rest = dict(encoder_hidden_states=torch.randn(batch, 8, 32, generator=g),
                pooled_projections=torch.randn(batch, 32, generator=g), img_ids=torch.rand(n, 3, generator=g),
                txt_ids=torch.zeros(8, 3), return_dict=False)
    outs = []
    with torch.no_grad():
        for t in torch.linspace(1.0, 0.25, steps):
            out = model(hidden_states=x, timestep=t.expand(batch), **rest)[0]
            outs.append(out)
            x = x - 0.1 * out
    return outs


def test_dynamic_shapes_serve_every_resolution_and_batch_with_fresh_state():
    torch._dynamo.reset()
    model = MODELS["flux"].build()
    graphs = []
    plain = torch.compile(model, backend=lambda gm, ex: graphs.append(gm) or gm.forward, dynamic=True)
    for side, batch in SHAPES:
        _flux_generation(plain, side, batch, steps=1)

    compiled = dit_cache_fx.compile(model, cache="F1B0_W1_R0", dynamic=True, fullgraph=True)
    for side, batch in SHAPES:  # threshold 0 equals the uncompiled model at every shape
        assert max_rel_err(_flux_generation(compiled, side, batch), _flux_generation(model, side, batch)) <= 1e-5
    assert len(handle(compiled).graphs) <= len(graphs)

    dit_cache_fx.configure(compiled, residual_diff_threshold=1.0)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for side, batch in SHAPES + SHAPES[:2]:  # caches at every shape, a new generation starts fresh
            _flux_generation(compiled, side, batch)
            s = dit_cache_fx.summary(compiled)
            assert s.num_steps == STEPS and s.cached_steps == list(range(1, STEPS)), (side, batch)
    # per-shape state is bounded (least recently used dropped) and can be released
    assert n_states(compiled) == 4
    dit_cache_fx.release(compiled)
    assert n_states(compiled) == 0
    _flux_generation(compiled, 4, 2)
    assert n_states(compiled) == 1 and dit_cache_fx.summary(compiled).cached_steps == list(range(1, STEPS))


def _toy_generation(model, batch, steps=3):
    with torch.no_grad():
        for s in range(steps):
            model(torch.randn(batch, 8, 16), torch.tensor([100.0 - s]))


def test_static_shapes_say_when_a_new_shape_compiles_again():
    compiled = dit_cache_fx.compile(ToyDiT(), cache="F1B0_W1_R1.0")
    _toy_generation(compiled, 1)
    with pytest.warns(UserWarning, match=r"compiling another graph for new input shapes .*\(1, 8, 16\), \(2, 8, 16\)"
                      r".*dynamic=True"):
        _toy_generation(compiled, 2)
    assert dit_cache_fx.summary(compiled).cached_steps == [1, 2]  # the new shape's graph caches too
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _toy_generation(compiled, 3)  # said once
    # static means static: Dynamo's automatic dynamic shapes stayed off while it compiled, so the third batch
    # size got its own static graph instead of a dynamic one made at the second
    assert [next(iter(g.example_shapes.values()))[0] for g in handle(compiled).graphs] == [1, 2, 3]
    # and torch.compile's own per-call patch of those flags is not there (they are held only while compiling):
    # our wrapper runs the hooks a plain torch.compile(module) runs per call, no more
    plain = torch.compile(torch.nn.Linear(2, 2)).dynamo_ctx.enter_exit_hooks
    assert len(compiled.dynamo_ctx.enter_exit_hooks) == len(plain)
    assert len(torch.compile(torch.nn.Linear(2, 2), dynamic=False).dynamo_ctx.enter_exit_hooks) == len(plain) + 1


def test_falling_back_to_eager_is_not_silent():
    compiled = dit_cache_fx.compile(ToyDiT(), cache="F1B0_W1_R1.0", recompile_limit=1)
    _toy_generation(compiled, 1)
    with pytest.warns(UserWarning, match="ran without the compiled graphs"):
        _toy_generation(compiled, 2)  # a second shape exceeds recompile_limit=1: Dynamo runs it eagerly
