"""passes/timestep.py: which graph input is the model's timestep (by the sinusoid it feeds, else its name)."""

import math

import torch
from torch import nn

from dit_cache_fx.handle import InputPath
from dit_cache_fx.passes.timestep import find_timestep

from graphs import dynamo_graph, toy_inputs
from toy import ToyDiT


class SinusoidDiT(nn.Module):
    """The timestep is called `sigma` and feeds a sinusoidal embedding; a 1-D `scale` input does not."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(16, 16)

    def forward(self, x, scale, sigma):
        freqs = torch.exp(-math.log(1e4) * torch.arange(8) / 8)
        emb = torch.cat([torch.sin(sigma[:, None] * freqs), torch.cos(sigma[:, None] * freqs)], -1)
        return self.lin(x * scale[:, None, None]) + emb[:, None]


def _names(gm, model):
    import inspect

    sig = list(inspect.signature(model.forward).parameters)
    return (lambda p: (ip.argument(sig) if (ip := InputPath.of(p)) else None)), sig


def test_the_input_feeding_a_sinusoid_is_the_timestep_whatever_its_name():
    model = SinusoidDiT()
    gm = dynamo_graph(model, torch.randn(1, 4, 16), torch.ones(1), torch.tensor([0.5]))
    name, sig = _names(gm, model)
    assert name(find_timestep(gm, name, sig)) == "sigma"
    assert name(find_timestep(gm, name, sig, override="scale")) == "scale"  # CacheConfig.timestep_arg wins
    assert find_timestep(gm, name, sig, override="nope") is None


def test_without_a_sinusoid_the_name_decides():
    model = ToyDiT()
    gm = dynamo_graph(model, *toy_inputs())
    name, sig = _names(gm, model)
    assert name(find_timestep(gm, name, sig)) == "timestep"
