"""More diffusers DiTs through the same passes (no per-model code): threshold 0 tracks the uncompiled model,
always-cache caches every step after warmup, and `explain` reports the run that is cached.

One compilation per model (the threshold changes through `configure`), 6 steps each. Marked slow: 14 models
take ~3.5 min with a warm inductor cache and ~7 min cold on 2 CPU cores (`-m "not slow"` skips them).
"""

import pytest
import torch

import dit_cache_fx

from extra_models import EXTRA_MODELS, cache_config, run_loop
from helpers import handle, max_rel_err

# the run each model's cache region covers, as `explain` describes it
MAIN_RUN = {
    "ltxvideo": "transformer_blocks[0:4] (4 blocks, streams=hidden, P2)",
    "sana": "transformer_blocks[0:4] (4 blocks, streams=hidden, P2)",
    "cogview4": "transformer_blocks[0:4] (4 blocks, streams=hidden+encoder, P0)",
    # the joint/double blocks do not chain into the single blocks (the streams are concatenated at top level
    # in between): only the single-stream run is cached
    "auraflow": "single_transformer_blocks[0:4] (4 blocks, streams=hidden, P3)",
    "chroma": "single_transformer_blocks[0:4] (4 blocks, streams=hidden, P3)",
    "flux2": "single_transformer_blocks[0:4] (4 blocks, streams=hidden, P3)",
    "mochi": "transformer_blocks[0:4] (4 blocks, streams=hidden+encoder, P0)",
    "allegro": "transformer_blocks[0:4] (4 blocks, streams=hidden, P2)",
    "cogview3plus": "transformer_blocks[0:4] (4 blocks, streams=hidden+encoder, P0)",
    "zimage": "layers[0:4] (4 blocks, streams=hidden, P3)",
    "skyreelsv2": "blocks[0:4] (4 blocks, streams=hidden, P2)",
    "stableaudio": "transformer_blocks[0:4] (4 blocks, streams=hidden, P2)",
    "hunyuandit": "blocks[0:6] (6 blocks, streams=hidden, P2)",  # long skips stay inside the region
    "easyanimate": "transformer_blocks[0:4] (4 blocks, streams=hidden+encoder, P0)",
}
STEPS = 6


def test_every_supported_extra_model_is_listed():
    assert set(MAIN_RUN) == {n for n, m in EXTRA_MODELS.items() if not m.unsupported}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MAIN_RUN))
def test_extra_model(name):
    m = EXTRA_MODELS[name]
    torch._dynamo.reset()
    model = m.build()
    eager = run_loop(model, m, steps=STEPS)  # also the eager call some models need before tracing (Z-Image)

    compiled = dit_cache_fx.compile(model, cache=cache_config(m, "F1B0_W2_R0"), fullgraph=m.fullgraph)
    outs = run_loop(compiled, m, steps=STEPS)
    assert max_rel_err(outs, eager) <= m.rel_tol
    assert dit_cache_fx.summary(compiled).cached_steps == []

    dit_cache_fx.configure(compiled, cache_config(m, "F1B0_W2_R1.0"))  # always cache after warmup
    outs = run_loop(compiled, m, steps=STEPS)
    assert all(torch.isfinite(o).all() for o in outs)
    assert dit_cache_fx.summary(compiled).cached_steps == [2, 3, 4, 5]
    assert max_rel_err(outs, eager) > 1e-4  # the cached steps really skipped the middle blocks
    assert len(handle(compiled).graphs) == 1  # one backend compilation for both thresholds

    report = dit_cache_fx.explain(compiled)
    main = MAIN_RUN[name]
    assert main in report.runs
    assert report.split.startswith(f"Fn=1 [{main.split('[')[0]}.0..")
