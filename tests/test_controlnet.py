"""ControlNet / VACE pipelines (issue #17 item 1): the transformer adds the ControlNet's residuals (VACE hints) to
the stream between its blocks. Real diffusers pipelines through their own `__call__` (tiny random components
from `tiny_controlnet`): threshold 0 equals the uncached pipeline, a caching spec caches and equals the eager
oracle (cached steps and residual diffs too), with no graph break, and a second call compiles nothing new.

The oracle comparisons use Bn=1: the glue after block i belongs to block i, so on a cached step the middle
blocks' glue is skipped with them, and the last middle block's glue is what the first Bn block's input shows
(the oracle wraps block forwards and sees it there). Bn=0 (the glue after the last middle block is then the
region's tail) is checked on Flux without the oracle: it runs, caches, and does not break the graph.

Each case compiles one tiny transformer with inductor (15-100 s on 2 shared CPU cores: 10-19 min for the file,
depending on the load); all but the plain Flux and SD3 cases are marked slow (`-m "not slow"`: 2.5-5 min).
"""

import pytest
import torch

import dit_cache_fx
from dit_cache_fx.reference import EagerDBCache

from helpers import handle, rel_err
from tiny_controlnet import CONTROLNET_PIPELINES, HAVE_TRANSFORMERS

pytestmark = pytest.mark.skipif(not HAVE_TRANSFORMERS, reason="diffusers' pipeline classes need transformers")

STEPS = 4
# threshold 0 (nothing cached) with SPEC's Fn/Bn, so `configure(SPEC)` changes no graph (a Bn change recompiles)
R0 = "F1B1_W1_R0"
SPEC = "F1B1_W1MC2_R1.0"  # after step 0: cache, cache, compute (R >= 1 caches whenever allowed)
SPEC_BN0 = "F1B0_W1MC2_R1.0"

_FLUX = (("transformer_blocks", "single_transformer_blocks"), 1)  # one run over both lists
# the block lists and forward pattern of each pipeline's transformer (as cache-dit's registry would say), and
# the forward argument carrying the timestep
REGIONS = {
    "flux_controlnet": [_FLUX], "flux_controlnet_single": [_FLUX], "flux_controlnet_xlabs": [_FLUX],
    "flux_controlnet_img2img": [_FLUX], "flux_controlnet_inpaint": [_FLUX],
    "sd3_controlnet": [(("transformer_blocks",), 1)], "sd3_controlnet_inpaint": [(("transformer_blocks",), 1)],
    "qwenimage_controlnet": [(("transformer_blocks",), 1)],
    "qwenimage_controlnet_inpaint": [(("transformer_blocks",), 1)],
    "zimage_controlnet": [(("layers",), 3)], "zimage_controlnet_inpaint": [(("layers",), 3)],
    "zimage_controlnet_013": [(("layers",), 3)],
    "sana_controlnet": [(("transformer_blocks",), 2)],
    "hunyuandit_controlnet": [(("blocks",), 2)],
    "wan_vace": [(("blocks",), 2)], "wan_vace_every_block": [(("blocks",), 2)],
}
TIMESTEP_ARG = {"zimage_controlnet": "t", "zimage_controlnet_inpaint": "t", "zimage_controlnet_013": "t"}
FAST = {"flux_controlnet", "sd3_controlnet"}


def _call(pipe, p):
    return pipe(**p.call_kwargs(STEPS))[0]


class _Prepared:
    """A built pipeline, its original transformer, the uncached latents and the oracle's run at SPEC."""

    def __init__(self, name: str):
        self.p = p = CONTROLNET_PIPELINES[name]
        torch._dynamo.reset()
        self.pipe = p.build()
        self.original = self.pipe.transformer
        self.ref = _call(self.pipe, p)
        config = dit_cache_fx.CacheConfig.parse(SPEC)
        if name in TIMESTEP_ARG:
            config = config.replace(timestep_arg=TIMESTEP_ARG[name])
        self.regions = REGIONS[name]
        self.oracle = EagerDBCache(self.original, [(lists, config, pat) for lists, pat in self.regions],
                                   TIMESTEP_ARG.get(name, "timestep"))
        try:
            self.cached_ref = _call(self.pipe, p)
        finally:
            self.oracle.remove()

    def restore(self):
        self.pipe.transformer = self.original


@pytest.fixture(scope="module")
def prepared():
    cache: dict[str, _Prepared] = {}

    def get(name: str) -> _Prepared:
        if name not in cache:
            cache[name] = _Prepared(name)
        cache[name].restore()
        return cache[name]
    return get


def test_every_pipeline_is_covered():
    assert set(REGIONS) == set(CONTROLNET_PIPELINES)


def test_controls_reach_the_transformer(prepared):
    """The tiny ControlNet's residuals are not zeros (`_unzero`): without them the output differs."""
    d = prepared("flux_controlnet")
    out = d.pipe(**{**d.p.call_kwargs(STEPS), "controlnet_conditioning_scale": 0.0})[0]
    assert rel_err(out, d.ref) > 1e-2


def _params():
    params = []
    for n in CONTROLNET_PIPELINES:
        marks = [] if n in FAST else [pytest.mark.slow]
        params.append(pytest.param(n, marks=marks))
    return params


@pytest.mark.parametrize("name", _params())
def test_controlnet_pipeline(prepared, name):
    from torch._dynamo.utils import counters

    d = prepared(name)
    p, pipe = d.p, d.pipe
    pipe.transformer = compiled = dit_cache_fx.compile(d.original, cache=R0)
    out = _call(pipe, p)
    assert rel_err(out, d.ref) <= 1e-4
    assert not dit_cache_fx.summary(compiled).cached_steps

    dit_cache_fx.configure(compiled, SPEC)
    graphs = len(handle(compiled).graphs)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(2):  # the second call compiles nothing new, and starts a new generation by itself
            out = _call(pipe, p)
            assert rel_err(out, d.cached_ref) <= 1e-4
            s = dit_cache_fx.summary(compiled)
            assert s.separate_cfg == (p.cfg_calls_per_step == 2)
            assert len(s.regions) == len(d.regions)
            for k, r in enumerate(s.regions.values()):
                assert r.cached_steps, r.name
                for b in range(p.cfg_calls_per_step):
                    assert r.branches[b].cached_steps == d.oracle.cached_steps(b, region=k), (r.name, b)
                    diffs = d.oracle.residual_diffs(b, region=k)
                    assert r.branches[b].residual_diffs.keys() == diffs.keys()
                    for step, diff in diffs.items():
                        assert r.branches[b].residual_diffs[step] == pytest.approx(diff, rel=1e-3, abs=1e-6)
    assert rel_err(out, d.ref) > 1e-5  # caching changed the output
    assert len(handle(compiled).graphs) == graphs
    assert len(counters["graph_break"]) == 0


def _bn0_run(d: _Prepared):
    """The oracle's and the compiled model's runs at SPEC_BN0 (Bn=0: the last block of the run is a middle block)."""
    from torch._dynamo.utils import counters

    oracle = EagerDBCache(d.original, [(lists, dit_cache_fx.CacheConfig.parse(SPEC_BN0), pat) for lists, pat in d.regions])
    try:
        oracle_out = _call(d.pipe, d.p)
    finally:
        oracle.remove()
    counters.clear()
    d.pipe.transformer = compiled = dit_cache_fx.compile(d.original, cache=SPEC_BN0)
    outs = [_call(d.pipe, d.p)]
    with torch._dynamo.config.patch(error_on_recompile=True):
        outs.append(_call(d.pipe, d.p))
    breaks = len(counters["graph_break"])
    d.restore()
    return compiled, outs, breaks, oracle, oracle_out


@pytest.fixture(scope="module")
def flux_bn0(prepared):
    """flux_controlnet compiled at Bn=0 (no ControlNet sample after the single blocks: no glue after the last block)."""
    d = prepared("flux_controlnet")
    return (d, *_bn0_run(d))


def test_flux_controlnet_bn0(flux_bn0):
    d, compiled, outs, breaks, oracle, oracle_out = flux_bn0
    assert breaks == 0
    s = dit_cache_fx.summary(compiled)
    assert s.cached_steps == [1, 2] == oracle.cached_steps()
    assert s.residual_diffs == pytest.approx(oracle.residual_diffs(), rel=1e-3, abs=1e-6)
    for out in outs:
        assert torch.isfinite(out).all()
        assert 1e-5 < rel_err(out, d.ref) < 1.0
        assert rel_err(out, oracle_out) <= 1e-4
    assert rel_err(outs[1], outs[0]) <= 1e-6  # a new generation: the same caching again


@pytest.mark.slow
@pytest.mark.xfail(strict=False, reason=(
    "glue after the run's last block at Bn=0: the compiled model treats it as that (middle) block's, skipped on "
    "a cached step (in the stale residual), as cache-dit's ControlNet patches do; the oracle adds it fresh after "
    "the forecast (reference.EagerDBCache._wrap docstring): outputs differ by ~1%"))
def test_flux_controlnet_bn0_glue_after_last_block(prepared):
    d = prepared("flux_controlnet_single")  # single-block samples: samples[1] after single_transformer_blocks.3
    compiled, outs, breaks, oracle, oracle_out = _bn0_run(d)
    assert breaks == 0 and dit_cache_fx.summary(compiled).cached_steps == [1, 2] == oracle.cached_steps()
    assert rel_err(outs[0], oracle_out) <= 1e-4


def test_explain_shows_the_controlnet_fed_run(flux_bn0):
    compiled = flux_bn0[1]
    rep = dit_cache_fx.explain(compiled)
    text = str(rep)
    assert len(rep.regions) == 1, text
    region = rep.regions[0]
    assert region.blocks == [f"transformer_blocks.{i}" for i in range(2)] + [
        f"single_transformer_blocks.{i}" for i in range(4)], text
    assert any("transformer_blocks" in r and "single_transformer_blocks" in r for r in rep.runs), text
    assert "torch.ops.higher_order.cond(" in text
