"""Bad input gets an error that names the problem."""

import pytest
import torch
from torch import nn

import dit_cache_fx

from toy import NoBlocks, ToyDiT


def _call(model, t=5.0):
    with torch.no_grad():
        return model(torch.randn(1, 8, 16), torch.tensor([t]))


def test_fn_bn_larger_than_run():
    compiled = dit_cache_fx.compile(ToyDiT(num_layers=4), cache="F3B1")
    with pytest.raises(Exception, match=r"Fn=3 \+ Bn=1 leaves no middle blocks .*transformer_blocks\[0:4\]"):
        _call(compiled)


def test_no_repeated_blocks():
    compiled = dit_cache_fx.compile(NoBlocks(), cache="F1B0")
    with pytest.raises(dit_cache_fx.NoBlockRunError, match="no run of repeated transformer blocks"):
        _call(compiled)


def test_no_repeated_blocks_opt_in_plain_compile():
    model = NoBlocks()
    compiled = dit_cache_fx.compile(model, cache="F1B0", on_no_blocks="compile")
    x, t = torch.randn(1, 8, 16), torch.tensor([5.0])
    with pytest.warns(UserWarning, match="compiled without a cache"), torch.no_grad():
        out = compiled(x, t)
    torch.testing.assert_close(out, model(x, t))


class _NoTimestep(ToyDiT):
    def forward(self, hidden_states, sigma):  # noqa: D102 - timestep under another name
        return super().forward(hidden_states, sigma)


def test_missing_timestep_named():
    compiled = dit_cache_fx.compile(_NoTimestep(), cache="F1B0")
    with pytest.raises(Exception, match="no tensor input named timestep"):
        _call(compiled)
    ok = dit_cache_fx.compile(_NoTimestep(), cache=dit_cache_fx.CacheConfig(Fn_compute_blocks=1, timestep_arg="sigma"))
    _call(ok)
    assert dit_cache_fx.summary(ok).num_steps == 1


@pytest.mark.parametrize("kwargs, message", [
    (dict(dynamic=True), "static shapes"),
    (dict(backend="inductor"), "chooses the backend"),
    (dict(on_no_blocks="ignore"), "on_no_blocks"),
    (dict(cache="F8Q"), "cannot parse 'Q'"),
    (dict(cache=8), "spec string"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        dit_cache_fx.compile(ToyDiT(), **kwargs)


def test_configure_structural_change_rejected():
    compiled = dit_cache_fx.compile(ToyDiT(), cache="F1B0")
    with pytest.raises(ValueError, match="Fn_compute_blocks"):
        dit_cache_fx.configure(compiled, "F2B0")
    with pytest.raises(TypeError, match="not compiled by dit_cache_fx"):
        dit_cache_fx.summary(nn.Linear(2, 2))


def test_shape_change_starts_new_generation():
    compiled = dit_cache_fx.compile(ToyDiT(), cache="F1B0_W1_R1.0")
    with torch.no_grad():
        for s in range(4):
            compiled(torch.randn(1, 8, 16), torch.tensor([100.0 - s]))
        assert dit_cache_fx.summary(compiled).cached_steps == [1, 2, 3]
        compiled(torch.randn(2, 8, 16), torch.tensor([96.0]))  # batch changed mid-generation
    s = dit_cache_fx.summary(compiled)
    assert s.num_steps == 1 and s.cached_steps == []  # fresh state, nothing stale reused


def test_mode_and_options_become_inductor_config():
    compiled = dit_cache_fx.compile(ToyDiT(), cache="F1B0", mode="max-autotune-no-cudagraphs",
                                    options={"epilogue_fusion": False})
    assert compiled.__dict__["_dit_cache_fx"].inductor_options == {
        "max_autotune": True, "coordinate_descent_tuning": True, "epilogue_fusion": False}
