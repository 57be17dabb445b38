"""Data-dependent sizes and values around the blocks (HunyuanVideo 1.5's masked text tokens, Qwen-Image 2.1's
`.tolist()` of a mask-derived length), on toy models: the cache equals the eager oracle.

- A stream whose length comes from boolean-mask indexing has an unbacked size (`u0`) in the graph: the run
  finder compares shapes without guards, and the region's cond gets the symbol as an operand.
- Python control flow on a captured data-dependent value fails Dynamo's trace on a guard: the frame is traced
  again without Dynamo's captures (a graph break there, as plain torch.compile does) and caching goes on.
"""

import pytest
import torch

import dit_cache_fx
from dit_cache_fx import _compat
from dit_cache_fx.passes.graph_utils import value_of
from dit_cache_fx.reference import EagerDBCache

from helpers import handle, max_rel_err, toy_loop
from toy import DualToyDiT, ToyDiT

STEPS = 8


class TextBlock(torch.nn.Module):
    """Two streams of different lengths that meet through their token means (joint attention's role)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.to_h, self.to_e = torch.nn.Linear(dim, dim), torch.nn.Linear(dim, dim)

    def forward(self, hidden_states, encoder_hidden_states, temb):
        ctx_h, ctx_e = encoder_hidden_states.mean(1, keepdim=True), hidden_states.mean(1, keepdim=True)
        hidden_states = hidden_states + temb * torch.tanh(self.to_h(hidden_states + ctx_h))
        encoder_hidden_states = encoder_hidden_states + 0.5 * torch.tanh(self.to_e(encoder_hidden_states + ctx_e))
        return encoder_hidden_states, hidden_states


class MaskedTextDiT(DualToyDiT):
    """The text stream keeps only its unmasked tokens (`enc[mask]`): a length only the data knows."""

    def __init__(self, dim: int = 16, num_layers: int = 4) -> None:
        super().__init__(dim, num_layers)
        self.transformer_blocks = torch.nn.ModuleList(TextBlock(dim) for _ in range(num_layers))

    def forward(self, hidden_states, encoder_hidden_states, encoder_mask, timestep):
        h = self.proj_in(hidden_states)
        e = self.context_in(encoder_hidden_states)[:, encoder_mask]
        temb = timestep.float().view(-1, 1, 1) / 1000
        for block in self.transformer_blocks:
            e, h = block(h, e, temb)
        return self.proj_out(h)


class ListedLengthDiT(ToyDiT):
    """`.tolist()` of a slice whose length is a tensor's sum, before the blocks (as Qwen-Image 2.1 does)."""

    def forward(self, hidden_states, timestep, mask):
        positions = torch.arange(mask.shape[-1])
        ids = positions[: int(mask.sum())].tolist()
        h = self.proj_in(hidden_states) + 0.01 * len(ids)
        temb = timestep.float().view(-1, 1, 1) / 1000
        for block in self.transformer_blocks:
            h = block(h, temb)
        return self.proj_out(h)


def _loop(model, call):
    return toy_loop(model, STEPS, call=lambda m, x, t, s: call(m, x, t), euler=True)


def _against_oracle(model, call, spec, pattern, fullgraph):
    torch._dynamo.reset()
    plain = _loop(model, call)
    cfg = dit_cache_fx.CacheConfig.parse(spec)
    ora = EagerDBCache.single(model, cfg, ["transformer_blocks"], pattern=pattern)
    try:
        refs = _loop(model, call)
    finally:
        ora.remove()
    cm = dit_cache_fx.compile(model, cache=cfg.replace(residual_diff_threshold=0.0), fullgraph=fullgraph)
    assert max_rel_err(_loop(cm, call), plain) <= 1e-5
    graphs = len(handle(cm).graphs)
    dit_cache_fx.configure(cm, spec)
    with torch._dynamo.config.patch(error_on_recompile=True):
        outs = _loop(cm, call)
    s = dit_cache_fx.summary(cm)
    assert s.cached_steps and s.cached_steps == ora.cached_steps()
    assert max_rel_err(outs, refs) <= 1e-5
    assert max_rel_err(outs, plain) > 1e-4
    assert len(handle(cm).graphs) == graphs
    return cm


def _masked():
    torch.manual_seed(0)
    enc, mask = torch.randn(1, 12, 16), torch.tensor([True, False] * 6)  # 6 of 12 text tokens: only the data knows
    return MaskedTextDiT().eval(), lambda m, x, t: m(x, enc, mask, t)


@pytest.mark.parametrize("spec", ["F1B0_W2MC2_R1.0", "F2B0_W2MC3_R1.0_T1"])
def test_unbacked_stream_length_caches_in_one_graph(spec):
    model, call = _masked()
    cm = _against_oracle(model, call, spec, pattern=1, fullgraph=True)
    assert len(handle(cm).graphs) == 1
    run = handle(cm).regions[0].plan.run
    text = next(s for s in run.streams if s.name != "hidden").nodes[1]
    length = value_of(text).shape[1]
    assert str(length).startswith("u")  # the run carries a stream of unbacked length


def test_unbacked_stream_to_store_is_refused_saying_why():
    """With Bn=1 the text stream leaves the middle blocks: its residual would need a state sized by the data."""
    model, call = _masked()
    torch._dynamo.reset()
    cm = dit_cache_fx.compile(model, cache="F1B1_W2MC2_R1.0", fullgraph=True)
    with pytest.raises(dit_cache_fx.NoBlockRunError, match=r"stream encoder of .* data-dependent size .*u0.*Bn=0"):
        _loop(cm, call)


def test_guard_on_captured_value_traces_again_without_captures():
    torch.manual_seed(0)
    model = ListedLengthDiT().eval()
    mask = torch.tensor([1, 1, 0, 1])
    with pytest.raises(Exception) as info:  # what the captures do to this model on their own
        torch._dynamo.reset()
        with torch._dynamo.config.patch(capture_scalar_outputs=True, capture_dynamic_output_shape_ops=True):
            torch.compile(model, backend="eager")(torch.randn(1, 8, 16), torch.tensor([500.0]), mask)
    assert _compat.is_data_dependent_guard(info.value)
    cm = _against_oracle(model, lambda m, x, t: m(x, t, mask), "F1B0_W2MC2_R1.0", pattern=3, fullgraph=False)
    assert len(handle(cm).regions) == 1
