"""Real diffusers pipelines through their own `__call__` (tiny random components, `prompt_embeds`, their own
schedulers, CFG handling and timestep conventions), the transformer(s) replaced by the one line: threshold 0
equals the uncached pipeline, a caching spec caches and equals the eager oracle, separate CFG is detected
where the pipeline calls the transformer twice per step, and a second call compiles nothing new."""

import pytest
import torch

import dit_cache_fx
from dit_cache_fx.reference import EagerDBCache

from extra_models import EXTRA_MODELS
from helpers import handle, rel_err
from tiny_models import MODELS
from tiny_pipelines import HAVE_TRANSFORMERS, PIPELINES

pytestmark = pytest.mark.skipif(not HAVE_TRANSFORMERS, reason="diffusers' pipeline classes need transformers")

STEPS = 5
SPEC = "F1B0_W1MC2_R1.0"  # after step 0: cache, cache, compute, ... (R >= 1 caches whenever allowed)
# the tiny transformer in each pipeline (its block lists and forward pattern tell the oracle the regions)
MODEL = {"flux": "flux", "flux_true_cfg": "flux", "sd3": "sd3", "pixart_sigma": "pixart", "qwenimage": "qwenimage",
         "wan21": "wan", "wan22": "wan", "hunyuanvideo": "hunyuanvideo", "cogvideox": "cogvideox",
         "ltx": "ltxvideo", "mochi": "mochi", "mochi_inverted": "mochi", "sana": "sana", "chroma": "chroma",
         "cogview4": "cogview4", "auraflow": "auraflow", "lumina2": "lumina2", "zimage": "zimage", "heun": "sd3"}
# models whose block lists are separate runs: one region per list (cache-dit's contexts)
TWO_RUNS = {"chroma": [(("transformer_blocks",), 1), (("single_transformer_blocks",), 3)],
            "auraflow": [(("joint_transformer_blocks",), 1), (("single_transformer_blocks",), 3)]}


def _regions(name):
    m = MODELS.get(MODEL[name]) or EXTRA_MODELS[MODEL[name]]
    return TWO_RUNS.get(MODEL[name], [(m.blocks, m.pattern)]), getattr(m, "timestep_key", "timestep")


def _latents(pipe, p):
    return pipe(**p.call_kwargs(STEPS))[0]


def test_every_pipeline_is_covered():
    assert set(MODEL) == set(PIPELINES)


@pytest.mark.parametrize("name", list(PIPELINES))
def test_pipeline(name):
    torch._dynamo.reset()
    p = PIPELINES[name]
    pipe = p.build()
    originals = {a: getattr(pipe, a) for a in p.transformer_attrs}
    ref = _latents(pipe, p)

    regions, t_arg = _regions(name)
    config = dit_cache_fx.CacheConfig.parse(SPEC)
    oracles = {a: EagerDBCache(m, [(lists, config, pat) for lists, pat in regions], t_arg)
               for a, m in originals.items()}
    try:
        cached_ref = _latents(pipe, p)
    finally:
        for o in oracles.values():
            o.remove()

    for a, m in originals.items():
        setattr(pipe, a, dit_cache_fx.compile(m, cache="F1B0_W1_R0"))
    out = _latents(pipe, p)
    assert rel_err(out, ref) <= 1e-4

    for a in originals:
        dit_cache_fx.configure(getattr(pipe, a), SPEC)
    graphs = {a: len(handle(getattr(pipe, a)).graphs) for a in originals}
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(2):  # the second call compiles nothing new, and starts a new generation by itself
            out = _latents(pipe, p)
            assert rel_err(out, cached_ref) <= 1e-4
            for a, ora in oracles.items():
                s = dit_cache_fx.summary(getattr(pipe, a))
                assert s.separate_cfg == (p.cfg_calls_per_step == 2), a
                assert len(s.regions) == len(regions)
                for k, r in enumerate(s.regions.values()):
                    assert r.cached_steps, (a, r.name)
                    for b in range(p.cfg_calls_per_step):
                        assert r.branches[b].cached_steps == ora.cached_steps(b, region=k), (a, r.name, b)
                        diffs = ora.residual_diffs(b, region=k)
                        assert r.branches[b].residual_diffs.keys() == diffs.keys()
                        for step, d in diffs.items():
                            assert r.branches[b].residual_diffs[step] == pytest.approx(d, rel=1e-3, abs=1e-6)
    assert rel_err(out, ref) > 1e-5  # caching changed the output
    assert {a: len(handle(getattr(pipe, a)).graphs) for a in originals} == graphs
