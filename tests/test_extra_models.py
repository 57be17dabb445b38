"""More diffusers DiTs through the same passes (no per-model code): threshold 0 tracks the uncompiled model,
always-cache caches every step after warmup, and `explain` reports the run that is cached.

One compilation per model (the threshold changes through `configure`), 6 steps each. Marked slow: 14 models
take ~3.5 min with a warm inductor cache and ~7 min cold on 2 CPU cores (`-m "not slow"` skips them).
"""

import pytest
import torch

import dit_cache_fx

from extra_models import EXTRA_MODELS, cache_config, call, run_loop
from helpers import handle, max_rel_err
from tiny_models import denoising_inputs

# the cache regions of each model, as `explain` names them (one region per block run)
REGIONS = {
    "ltxvideo": ["transformer_blocks[0:4]"],
    "sana": ["transformer_blocks[0:4]"],
    "cogview4": ["transformer_blocks[0:4]"],
    # the joint/double blocks do not chain into the single blocks (the streams are concatenated at top level
    # in between): two runs, two regions, as cache-dit's two contexts
    "auraflow": ["joint_transformer_blocks[0:2]", "single_transformer_blocks[0:4]"],
    "chroma": ["transformer_blocks[0:2]", "single_transformer_blocks[0:4]"],
    "flux2": ["transformer_blocks[0:2]", "single_transformer_blocks[0:4]"],
    "mochi": ["transformer_blocks[0:4]"],
    "allegro": ["transformer_blocks[0:4]"],
    "cogview3plus": ["transformer_blocks[0:4]"],
    "zimage": ["layers[0:4]"],
    "skyreelsv2": ["blocks[0:4]"],
    "stableaudio": ["transformer_blocks[0:4]"],
    "hunyuandit": ["blocks[0:6]"],  # long skips stay inside the region
    "lumina2": ["layers[0:4]"],  # graph-breaks before its blocks: the region is in the second graph
    "easyanimate": ["transformer_blocks[0:4]"],
    "qwenimage21": ["transformer_blocks[0:4]"],  # traced again without Dynamo's data-dependent captures
    "hunyuanvideo15": ["transformer_blocks[0:4]"],  # an unbacked text length in the region's shapes
}
STEPS = 6


def test_every_supported_extra_model_is_listed():
    assert set(REGIONS) == {n for n, m in EXTRA_MODELS.items() if not m.unsupported}


@pytest.mark.slow
def test_hidream_fails_saying_why():
    m = EXTRA_MODELS["hidream"]
    torch._dynamo.reset()
    compiled = dit_cache_fx.compile(m.build(), cache=cache_config(m, "F1B0"))
    with pytest.raises(dit_cache_fx.NoBlockRunError, match=r"graph-breaks inside the blocks of \['double_stream_blocks', "
                       r"'single_stream_blocks'\].*MoE routing"):
        call(compiled, m, *_first_step(m))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(REGIONS))
def test_extra_model(name):
    m = EXTRA_MODELS[name]
    torch._dynamo.reset()
    model = m.build()
    eager = run_loop(model, m, steps=STEPS)  # also the eager call some models need before tracing (Z-Image)

    compiled = dit_cache_fx.compile(model, cache=cache_config(m, "F1B0_W2_R0"), fullgraph=m.fullgraph)
    outs = run_loop(compiled, m, steps=STEPS)
    assert max_rel_err(outs, eager) <= m.rel_tol
    assert dit_cache_fx.summary(compiled).cached_steps == []
    graphs = len(handle(compiled).graphs)
    assert graphs == 1 or not m.fullgraph

    dit_cache_fx.configure(compiled, cache_config(m, "F1B0_W2_R1.0"))  # always cache after warmup
    outs = run_loop(compiled, m, steps=STEPS)
    assert all(torch.isfinite(o).all() for o in outs)
    s = dit_cache_fx.summary(compiled)
    assert list(s.regions) == REGIONS[name]
    assert all(r.cached_steps == [2, 3, 4, 5] for r in s.regions.values())
    assert max_rel_err(outs, eager) > 1e-4  # the cached steps really skipped the middle blocks
    assert len(handle(compiled).graphs) == graphs  # the same graphs serve both thresholds

    report = dit_cache_fx.explain(compiled)
    assert [r.name for r in report.regions] == REGIONS[name]
    first = REGIONS[name][0].split("[")[0]
    assert report.split.startswith(f"Fn=1 [{first}.0..{first}.0] | Mn=")


def _first_step(m):
    inputs, ts = denoising_inputs(m, STEPS)
    return inputs.pop(m.latent_key), ts[0], inputs
