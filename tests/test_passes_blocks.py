"""passes/blocks.py: runs of repeated blocks and the streams they carry, on toy graphs."""

import operator

import pytest
import torch

import dit_cache_fx
from dit_cache_fx.passes.blocks import find_runs, node_block
from dit_cache_fx.passes.graph_utils import value_of
from dit_cache_fx.passes.plan import plan_region
from dit_cache_fx.reference import EagerDBCache

from graphs import dynamo_graph, latents, toy_inputs
from helpers import max_rel_err
from toy import DualToyDiT, LinearBlock, MixedSequential, ToyDiT


def test_find_runs_toy():
    gm = dynamo_graph(ToyDiT(), *toy_inputs())
    runs, rejected = find_runs(gm, latents(gm))
    assert [r.describe() for r in runs] == ["transformer_blocks[0:4] (4 blocks, streams=hidden)"]
    assert rejected == []
    hidden = runs[0].hidden
    assert len(hidden.nodes) == 5 and all(n is not None for n in hidden.nodes)
    assert [node_block(n)[0] for n in hidden.nodes[1:]] == [f"transformer_blocks.{i}" for i in range(4)]


def test_mixed_sequential_is_not_a_run():
    model = MixedSequential()
    gm = dynamo_graph(model, *toy_inputs())
    runs, rejected = find_runs(gm, latents(gm))
    assert [r.name for r in runs] == ["inner.transformer_blocks[0:4]"]
    assert [(r.name, r.reason) for r in rejected] == [
        ("t_embedder[0:3]", "t_embedder holds modules of several classes, not repeated blocks")]


def test_same_shape_streams_are_told_apart_by_wiring():
    model = DualToyDiT()
    gm = dynamo_graph(model, *toy_inputs(dual=True))
    (run,), _ = find_runs(gm, latents(gm))
    assert sorted(s.name for s in run.streams) == ["encoder", "hidden"]
    # the hidden stream is the one computed from the latents input at every block boundary
    h = run.hidden
    assert h.nodes[0].target is torch._C._nn.linear and h.nodes[0].args[0] in latents(gm)
    for n in h.nodes[1:-1]:
        assert n.target is operator.add and "hidden" in n.name
    plan = plan_region(gm, run, dit_cache_fx.CacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=1))
    for s in plan.streams:
        assert value_of(s.region_in).shape == value_of(s.region_out).shape == (1, 8, 16)
        assert s.region_out is next(x for x in run.streams if x.name == s.name).nodes[3]


def test_same_shape_dual_stream_model_matches_oracle():
    torch.manual_seed(0)
    model = DualToyDiT().eval()
    cfg = dit_cache_fx.CacheConfig.parse("F1B1_W2_R0.2")
    x, e, _ = toy_inputs(dual=True)

    def loop(m):
        outs = []
        with torch.no_grad():
            for s in range(10):
                outs.append(m(x, e * (1 + 0.05 * s), torch.tensor([1000.0 - 90 * s])))
        return outs

    ora = EagerDBCache.single(model, cfg, ["transformer_blocks"], pattern=1)
    refs = loop(model)
    ora.remove()
    compiled = dit_cache_fx.compile(model, cache=cfg, fullgraph=True)
    outs = loop(compiled)
    s = dit_cache_fx.summary(compiled)
    assert 0 < len(s.cached_steps) < 8 and s.cached_steps == ora.cached_steps()
    for k, d in ora.residual_diffs().items():
        assert s.residual_diffs[k] == pytest.approx(d, rel=1e-4)
    assert max_rel_err(outs, refs) <= 1e-4


class AlternatingDiT(ToyDiT):
    """Spatial and temporal blocks in two lists, called in turn (Latte): no list's blocks are consecutive."""

    def __init__(self, dim: int = 16, num_layers: int = 3) -> None:
        super().__init__(dim, num_layers)
        self.temporal_blocks = type(self.transformer_blocks)(LinearBlock(dim) for _ in range(num_layers))

    def forward(self, hidden_states, timestep):
        h = self.proj_in(hidden_states)
        temb = timestep.float().view(-1, 1, 1) / 1000
        for spatial, temporal in zip(self.transformer_blocks, self.temporal_blocks):
            h = temporal(spatial(h, temb).transpose(0, 1), temb).transpose(0, 1)
        return self.proj_out(h)


def test_alternating_lists_form_no_run_and_say_so():
    gm = dynamo_graph(AlternatingDiT(), *toy_inputs())
    runs, rejected = find_runs(gm, latents(gm))
    assert runs == []
    assert any("transformer_blocks and temporal_blocks alternate" in r.reason or
               "temporal_blocks and transformer_blocks alternate" in r.reason for r in rejected), rejected
