"""runner.py: binding the added inputs by the graph's signature."""

import torch

import dit_cache_fx
from dit_cache_fx.reference import EagerDBCache

from toy import ToyDiT


def test_the_runner_binds_by_the_graph_signature(monkeypatch):
    """The pass pipeline declares the order of the inputs it adds (`pipeline.input_order`); the runner binds
    the state tensors by the recorded signature, so another order still equals the oracle."""
    from dit_cache_fx.passes import pipeline

    monkeypatch.setattr(pipeline, "input_order", lambda group: list(reversed(list(group.flat()))))
    spec = "F1B0_W2_R1.0_T1"
    model = ToyDiT()
    xs = [torch.randn(1, 8, 16, generator=torch.Generator().manual_seed(s)) for s in range(6)]
    ts = [torch.tensor([1000.0 - 150 * s]) for s in range(6)]
    ora = EagerDBCache.single(model, dit_cache_fx.CacheConfig.parse(spec), ["transformer_blocks"], pattern=3)
    with torch.no_grad():
        refs = [model(x, t) for x, t in zip(xs, ts)]
    ora.remove()
    torch._dynamo.reset()
    compiled = dit_cache_fx.compile(model, cache=spec)
    with torch.no_grad():
        outs = [compiled(x, t) for x, t in zip(xs, ts)]
    record = dit_cache_fx.api.handle_of(compiled).graphs[0].record
    assert record.inputs[0].slot == "ambiguous"  # the step context's last slot first: the order really changed
    assert dit_cache_fx.summary(compiled).cached_steps == ora.cached_steps() == [2, 3, 4, 5]
    for a, b in zip(outs, refs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
