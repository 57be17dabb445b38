"""For every CacheConfig field, `configure(module, field=value)` either refuses the change (the field shapes
the graph) or the compiled graph's decisions follow it, as the reference's do, without recompiling."""

import dataclasses

import pytest
import torch

import dit_cache_fx
from dit_cache_fx import CacheConfig
from dit_cache_fx.reference import EagerDBCache

from helpers import handle
from toy import ToyDiT

STEPS = 12
BASE = "F1B0_W2_R0.05"
MASK = (1, 1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0)
# field: (base spec, new value, with separate-CFG calls)
RUNTIME = {
    "max_warmup_steps": (BASE, 5, False),
    "warmup_interval": ("F1B0_W4_R0.05", 2, False),
    "max_cached_steps": (BASE, 2, False),
    "max_continuous_cached_steps": (BASE, 1, False),
    "residual_diff_threshold": (BASE, 0.11, False),
    "enable_separate_cfg": (BASE, False, True),
    "steps_computation_mask": (BASE, MASK, False),
    "steps_computation_policy": (BASE + "_SCM" + "".join(map(str, MASK)), "static", False),
}
STRUCTURAL = {"Fn_compute_blocks": 2, "Bn_compute_blocks": 1, "taylorseer_order": 1, "taylorseer_encoder": False,
              "foca": True, "timestep_arg": "t"}


def _loop(model, cfg: bool):
    """Fn residual r_s = -(1 + 0.02 s)·w: the diff against the anchor grows 2 %/step since it was stored."""
    x = torch.randn(1, 8, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for s in range(STEPS):
            t = torch.tensor([-1000.0 * (1 + 0.02 * s)])
            model(x, t)
            if cfg:
                model(x * 0.5, t)


def _reference(model, config: CacheConfig, cfg: bool):
    ora = EagerDBCache.single(model, config, ["transformer_blocks"], pattern=3)
    _loop(model, cfg)
    ora.remove()
    return ora


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    model = ToyDiT().eval()
    return model, dit_cache_fx.compile(model, cache=BASE, fullgraph=True)


def test_every_field_is_covered():
    assert set(RUNTIME) | set(STRUCTURAL) == {f.name for f in dataclasses.fields(CacheConfig)}
    assert set(STRUCTURAL) == set(CacheConfig.structural_fields())


@pytest.mark.parametrize("name", list(RUNTIME))
def test_runtime_field_follows(toy, name):
    model, compiled = toy
    base_spec, value, cfg = RUNTIME[name]
    base = CacheConfig.parse(base_spec)
    new = base.replace(**{name: value})
    before, after = _reference(model, base, cfg), _reference(model, new, cfg)
    assert (before.cached_steps(0), before.cached_steps(1)) != (after.cached_steps(0), after.cached_steps(1))

    dit_cache_fx.configure(compiled, base_spec)
    dit_cache_fx.reset(compiled)
    with torch._dynamo.config.patch(error_on_recompile=True):
        _loop(compiled, cfg)
        assert dit_cache_fx.summary(compiled).cached_steps == before.cached_steps(0)
        dit_cache_fx.configure(compiled, **{name: value})  # this one field, the others as they were
        _loop(compiled, cfg)
    s = dit_cache_fx.summary(compiled)
    for b in (0, 1):
        got = s.branches[b].cached_steps if b in s.branches else []
        assert got == after.cached_steps(b), (name, b)
    assert len(handle(compiled).graphs) == 1


@pytest.mark.parametrize("name", list(STRUCTURAL))
def test_structural_field_is_refused(toy, name):
    _, compiled = toy
    with pytest.raises(ValueError, match=f"changing {name} changes the graph"):
        dit_cache_fx.configure(compiled, **{name: STRUCTURAL[name]})
    with pytest.raises(ValueError, match=f"changing {name} changes the graph"):
        dit_cache_fx.configure(compiled, CacheConfig.parse(BASE).replace(**{name: STRUCTURAL[name]}))


def test_full_spec_keeps_its_meaning(toy):
    model, compiled = toy
    dit_cache_fx.configure(compiled, "F1B0_W6_R0.11")
    dit_cache_fx.configure(compiled, "F1B0_R0.11")  # W back to its default (8), not kept from before
    dit_cache_fx.reset(compiled)
    _loop(compiled, False)
    assert dit_cache_fx.summary(compiled).cached_steps == _reference(model, CacheConfig.parse("F1B0_R0.11"),
                                                                     False).cached_steps()
