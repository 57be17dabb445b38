"""Glue between blocks (ControlNet samples, VACE hints): ops after block i that put a side input into the
stream belong to block i. The run spans them, on a cached step the middle blocks' glue is skipped with them,
and the output equals the eager oracle taught the same rule. Ops that are not glue stop the run, and the
error names the node. Streams are traced through fp16 clipping, so fp16 Flux gets the fp32 region."""

import warnings

import pytest
import torch

import dit_cache_fx
from dit_cache_fx.passes.blocks import find_runs, node_block
from dit_cache_fx.reference import EagerDBCache

from extra_models import EXTRA_MODELS
from graphs import dynamo_graph, latents
from helpers import handle, max_rel_err, rel_err, toy_loop
from tiny_models import MODELS
from toy import ToyDiT

STEPS = 8


class GlueToyDiT(ToyDiT):
    """ToyDiT with per-block side inputs added after some blocks (`glue_at`), as diffusers' ControlNet
    transformers do; `between="gate"` puts an op there that is not glue."""

    def __init__(self, dim: int = 16, num_layers: int = 5, glue_at=(0, 1, 2, 3, 4), between: str = "add"):
        super().__init__(dim, num_layers)
        self.glue_at, self.between = tuple(glue_at), between

    def forward(self, hidden_states, timestep, side=None):
        h = self.proj_in(hidden_states)
        temb = timestep.float().view(-1, 1, 1) / 1000
        for i, block in enumerate(self.transformer_blocks):
            h = block(h, temb)
            if side is not None and i in self.glue_at:
                if self.between == "add":
                    h = h + side[self.glue_at.index(i)] * 0.5
                elif self.between == "clip_add":
                    h = (h + side[self.glue_at.index(i)]).clip(-60000, 60000)
                else:  # a non-residual op between blocks: not glue
                    h = h * torch.sigmoid(side[self.glue_at.index(i)])
        return self.proj_out(h)


def _side(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 8, 16, generator=g) * 0.3 for _ in range(n)]


def _loop(model, side_of_step):
    return toy_loop(model, STEPS, call=lambda m, x, t, s: m(x, t, side_of_step(s)))


@pytest.mark.parametrize("glue_at", [(0, 1, 2, 3, 4), (1, 3), (0,), (0, 2)])
def test_glue_joins_the_block_before_it(glue_at):
    model = GlueToyDiT(glue_at=glue_at)
    x = torch.randn(1, 8, 16)
    gm = dynamo_graph(model, x, torch.tensor([500.0]), _side(len(glue_at)))
    runs, rejected = find_runs(gm, latents(gm))
    assert [r.describe() for r in runs] == ["transformer_blocks[0:5] (5 blocks, streams=hidden)"]
    assert rejected == []
    sizes = {len(b.nodes) - (b.index in glue_at) for b in runs[0].blocks}
    assert len(sizes) == 1  # a glued block: its own nodes and the add after it
    assert all(node_block(b.nodes[-1]) is None for b in runs[0].blocks if b.index in glue_at)  # the model's own op
    # the stream entering block i+1 is the glued output of block i
    assert [n is b.outputs[0] for n, b in zip(runs[0].hidden.nodes[1:], runs[0].blocks)] == [True] * 5


@pytest.mark.parametrize("spec", ["F1B1_W1MC2_R1.0", "F1B1_W1MC3_R1.0_T1", "F2B1_W2MC1_R1.0"])
@pytest.mark.parametrize("between", ["add", "clip_add"])
def test_glue_caching_equals_oracle(spec, between):
    torch._dynamo.reset()
    model = GlueToyDiT(between=between).eval()
    sides = {s: _side(5, seed=s) for s in range(STEPS)}  # the side inputs change every step (as ControlNet's do)
    plain = _loop(model, sides.get)
    cfg = dit_cache_fx.CacheConfig.parse(spec)
    ora = EagerDBCache.single(model, cfg, ["transformer_blocks"], pattern=3)
    try:
        refs = _loop(model, sides.get)
    finally:
        ora.remove()
    cm = dit_cache_fx.compile(model, cache=cfg.replace(residual_diff_threshold=0.0), fullgraph=True)
    assert max_rel_err(_loop(cm, sides.get), plain) <= 1e-5  # threshold 0: nothing cached
    dit_cache_fx.configure(cm, spec)
    with torch._dynamo.config.patch(error_on_recompile=True):
        outs = _loop(cm, sides.get)
    s = dit_cache_fx.summary(cm)
    assert s.cached_steps and s.cached_steps == ora.cached_steps()
    assert s.residual_diffs.keys() == ora.residual_diffs().keys()
    assert max_rel_err(outs, refs) <= 1e-5
    assert max(rel_err(a, b) for a, b in zip(outs, plain)) > 1e-4  # caching skipped the Mn blocks' glue
    assert len(handle(cm).graphs) == 1


@pytest.mark.parametrize("options", [{"regional": True}, {"dynamic": True}])
def test_glue_regional_and_dynamic(options):
    """Regional mode outlines each block with its glue (the side input a tensor argument of the block code);
    dynamic shapes serve two sequence lengths with one graph."""
    torch._dynamo.reset()
    model = GlueToyDiT(glue_at=(1, 3)).eval()
    spec = "F1B1_W1MC2_R1.0"
    cm = dit_cache_fx.compile(model, cache=spec, **options)
    for n in (8, 12):
        x = torch.randn(1, n, 16, generator=torch.Generator().manual_seed(1))
        sides = {s: [t[:, :1].expand(1, n, 16) for t in _side(2, seed=s)] for s in range(STEPS)}

        def loop(mod, x=x, sides=sides):
            with torch.no_grad():
                return [mod(x, torch.tensor([1000.0 - 110 * s]), sides[s]) for s in range(STEPS)]

        ora = EagerDBCache.single(model, dit_cache_fx.CacheConfig.parse(spec), ["transformer_blocks"], pattern=3)
        try:
            refs = loop(model)
        finally:
            ora.remove()
        dit_cache_fx.reset(cm)
        outs = loop(cm)
        assert dit_cache_fx.summary(cm).cached_steps == ora.cached_steps() != []
        assert max_rel_err(outs, refs) <= 1e-5


def test_non_glue_between_blocks_is_named():
    model = GlueToyDiT(between="gate", glue_at=(2,))
    x = torch.randn(1, 8, 16)
    gm = dynamo_graph(model, x, torch.tensor([500.0]), _side(1))
    runs, rejected = find_runs(gm, latents(gm))
    assert [r.name for r in runs] == ["transformer_blocks[0:3]", "transformer_blocks[3:5]"]  # split at the gate
    why = {r.name: r.reason for r in rejected}
    reason = why["transformer_blocks.2 -> transformer_blocks.3"]
    assert reason.startswith("node h_4 (mul)") and "reads transformer_blocks.2's output" in reason and "not glue" in reason
    cm = dit_cache_fx.compile(model, cache="F1B0_W1_R0.1")
    with torch.no_grad():
        cm(x, torch.tensor([500.0]), _side(1))
    assert "transformer_blocks.2 -> transformer_blocks.3: node h_4 (mul)" in str(dit_cache_fx.explain(cm))


def test_no_run_error_names_the_stopping_node():
    model = GlueToyDiT(between="gate", glue_at=(0, 1, 2, 3), num_layers=5)
    cm = dit_cache_fx.compile(model, cache="F1B0_W1_R0.1")
    with pytest.raises(dit_cache_fx.NoBlockRunError, match=r"transformer_blocks.0 -> transformer_blocks.1: node \w+ \(mul\)"):
        with torch.no_grad():
            cm(torch.randn(1, 8, 16), torch.tensor([500.0]), _side(4))


def _flux_side(m, g):
    inp = m.make_inputs(g)
    inp["controlnet_block_samples"] = [torch.randn(1, 64, 128, generator=g) * 0.1 for _ in range(2)]
    inp["controlnet_single_block_samples"] = [torch.randn(1, 64, 128, generator=g) * 0.1 for _ in range(2)]
    return inp


@pytest.mark.parametrize("repeat", [False, True])
def test_flux_controlnet_samples(repeat):
    """The tiny Flux transformer with double- and single-block ControlNet samples (new each step)."""
    torch._dynamo.reset()
    m = MODELS["flux"]
    model = m.build()
    ins = {s: _flux_side(m, torch.Generator().manual_seed(s)) for s in range(STEPS)}

    def loop(mod):
        with torch.no_grad():
            return [mod(**ins[s], timestep=torch.tensor([1.0 - 0.1 * s]), controlnet_blocks_repeat=repeat)[0]
                    for s in range(STEPS)]

    plain = loop(model)
    spec = "F1B1_W1MC2_R1.0"
    ora = EagerDBCache.single(model, dit_cache_fx.CacheConfig.parse(spec), m.blocks, m.pattern)
    try:
        refs = loop(model)
    finally:
        ora.remove()
    cm = dit_cache_fx.compile(model, cache="F1B1_W1_R0", fullgraph=True)
    assert max_rel_err(loop(cm), plain) <= 1e-4
    dit_cache_fx.configure(cm, spec)
    with torch._dynamo.config.patch(error_on_recompile=True):
        outs = loop(cm)
    s = dit_cache_fx.summary(cm)
    assert list(s.regions) == ["transformer_blocks[0:2]+single_transformer_blocks[0:4]"]
    assert s.cached_steps == ora.cached_steps() != []
    assert max_rel_err(outs, refs) <= 1e-4


def _graph(model, kwargs):
    graphs = []
    with torch.no_grad():
        torch.compile(model, backend=lambda gm, ex: graphs.append(gm) or gm.forward, fullgraph=True)(**kwargs)
    return graphs[0]


@pytest.mark.parametrize("model", ["flux", "chroma", "cogview3plus"])
def test_fp16_gets_the_fp32_runs(model):
    """diffusers clips the streams in fp16 only (`hidden_states.clip(-65504, 65504)` inside Flux's, Chroma's and
    CogView3Plus's blocks): the streams are traced through it, so the runs are the same as in fp32."""
    m = MODELS.get(model) or EXTRA_MODELS[model]
    names = {}
    for dtype in (torch.float32, torch.float16):
        mod = m.build().to(dtype)
        inp = {k: (v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
               for k, v in m.make_inputs(torch.Generator().manual_seed(0)).items()}
        t_dtype = m.timestep_dtype if not m.timestep_dtype.is_floating_point else dtype
        inp[getattr(m, "timestep_key", "timestep")] = torch.tensor([500.0 * m.timestep_scale]).to(t_dtype)
        gm = _graph(mod, inp)
        names[dtype] = [r.describe() for r in find_runs(gm, latents(gm, m.latent_key))[0]]
    assert names[torch.float16] == names[torch.float32] and names[torch.float32]


def test_shrunken_region_warns_once_and_shows_in_summary():
    model = GlueToyDiT(between="gate", glue_at=(2,))
    cm = dit_cache_fx.compile(model, cache="F1B0_W1_R0.1")
    x = torch.randn(1, 8, 16)
    with pytest.warns(UserWarning, match=r"transformer_blocks\[0:3\] covers 3 of the 5 blocks in its lists"):
        with torch.no_grad():
            cm(x, torch.tensor([500.0]), _side(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            cm(x, torch.tensor([400.0]), _side(1))
    s = dit_cache_fx.summary(cm)
    assert {n: (r.blocks_covered, r.blocks_listed) for n, r in s.regions.items()} == {
        "transformer_blocks[0:3]": (3, 5), "transformer_blocks[3:5]": (2, 5)}
    assert "transformer_blocks[0:3]: covers 3 of the 5 blocks in its lists" in str(s)
