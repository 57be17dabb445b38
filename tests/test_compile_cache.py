"""Inductor's FX graph cache and AOTAutograd's cache serve graphs that contain our torch.cond and runtime
functions, and key on the branches."""

import torch
from torch import nn

import dit_cache_fx

from helpers import n_states
from toy import ToyDiT


class _SigmoidDiT(ToyDiT):
    """Same outer graph as ToyDiT with Fn=1; only the blocks inside the cond branch compute differently."""

    def __init__(self):
        super().__init__()
        for b in self.transformer_blocks[1:]:
            b.forward = _sigmoid_forward.__get__(b)


def _sigmoid_forward(self, hidden_states, temb):
    return hidden_states + temb * self.w + self.mix * torch.sigmoid(self.lin(hidden_states))


def _run(model: nn.Module, spec: str = "F1B0_R0"):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    compiled = dit_cache_fx.compile(model, cache=spec, fullgraph=True)
    x, t = torch.randn(1, 8, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([10.0])
    with torch.no_grad():
        out, ref = compiled(x, t), model(x, t)
    torch.testing.assert_close(out, ref)
    assert n_states(compiled) == 1
    return {**counters["inductor"], **counters["aot_autograd"]}


def test_cond_graphs_hit_the_fx_graph_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    torch.manual_seed(0)
    model, other = ToyDiT(), _SigmoidDiT()
    with torch._inductor.config.patch(fx_graph_cache=True, fx_graph_remote_cache=False):
        first = _run(model)
        assert first.get("fxgraph_cache_bypass", 0) == 0 and first.get("fxgraph_cache_miss", 0) >= 1
        second = _run(model)
        assert second.get("fxgraph_cache_hit", 0) >= 1 and second.get("fxgraph_cache_bypass", 0) == 0
        assert second.get("autograd_cache_hit", 0) >= 1 and second.get("autograd_cache_bypass", 0) == 0
        # only the compute branch differs: must miss, and give the other model's outputs (checked in _run)
        third = _run(other)
        assert third.get("fxgraph_cache_miss", 0) >= 1 and third.get("autograd_cache_hit", 0) == 0
