"""Inference only: a call with grad enabled and an input that requires grad raises `InferenceOnlyError`
(never a silently detached output); parameters requiring grad (diffusers' default) do not count."""

import pytest
import torch

import dit_cache_fx
from dit_cache_fx import InferenceOnlyError

from toy import ToyDiT

SPEC = "F1B0_W2_R1.0"


def _x():
    return torch.randn(1, 8, 16, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    torch._dynamo.reset()
    model = ToyDiT().eval()
    assert all(p.requires_grad for p in model.parameters())  # as diffusers loads them
    return model


@pytest.mark.parametrize("regional", [False, True])
def test_input_requiring_grad_raises(toy, regional):
    compiled = dit_cache_fx.compile(toy, cache=SPEC, regional=regional)
    x = _x().requires_grad_()
    with pytest.raises(InferenceOnlyError) as e:
        compiled(x, torch.tensor([1000.0]))
    msg = str(e.value)
    assert "inference only" in msg and "torch.no_grad()" in msg and "torch.inference_mode()" in msg
    assert isinstance(e.value, dit_cache_fx.DitCacheError)
    with pytest.raises(InferenceOnlyError):  # a tensor nested in a keyword argument counts too
        compiled(_x(), timestep=torch.tensor([1000.0], requires_grad=True))
    # nothing ran: the next calls are the generation's first steps
    with torch.no_grad():
        outs = [compiled(x, torch.tensor([1000.0 - 100 * s])) for s in range(4)]  # requires_grad is fine here
        refs = [toy(x, torch.tensor([1000.0 - 100 * s])) for s in range(4)]
    assert dit_cache_fx.summary(compiled).cached_steps == [2, 3]
    assert torch.allclose(outs[0], refs[0], atol=1e-5) and torch.allclose(outs[1], refs[1], atol=1e-5)


def test_parameters_requiring_grad_do_not_raise(toy):
    compiled = dit_cache_fx.compile(toy, cache=SPEC)
    with torch.no_grad():
        ref = toy(_x(), torch.tensor([1000.0]))
    assert torch.is_grad_enabled()
    out = compiled(_x(), torch.tensor([1000.0]))  # grad mode on, plain inputs: runs as inference
    assert torch.allclose(out, ref, atol=1e-5) and not out.requires_grad
    with torch.inference_mode():
        out = compiled(_x().requires_grad_(False), torch.tensor([955.0]))
    assert torch.isfinite(out).all()
