"""explain() and summary() report what the passes found and did; the rewritten graph has the
expected structure (one cond, Mn blocks only inside its compute branch)."""

from pathlib import Path

import pytest
import torch

import dit_cache_fx
from dit_cache_fx.passes.blocks import node_block

from helpers import handle
from toy import ToyDiT


@pytest.fixture(scope="module")
def compiled():
    torch.manual_seed(0)
    c = dit_cache_fx.compile(ToyDiT(num_layers=5), cache="F1B1_W1_R1.0", fullgraph=True)
    with torch.no_grad():
        for s in range(4):
            c(torch.randn(1, 8, 16), torch.tensor([100.0 - s]))
    return c


def _blocks_in(gm):
    return {node_block(n)[0] for n in gm.graph.nodes if n.op != "placeholder" and node_block(n)}


def test_rewritten_graph_structure(compiled):
    gm = handle(compiled).graphs[0].record.gm
    conds = [n for n in gm.graph.nodes if n.target is torch.ops.higher_order.cond]
    assert len(conds) == 1
    assert _blocks_in(gm) == {"transformer_blocks.0", "transformer_blocks.4"}
    assert _blocks_in(gm.r0_compute) == {f"transformer_blocks.{i}" for i in (1, 2, 3)}
    assert _blocks_in(gm.r0_cached) == set()
    # the cached branch is only the residual add + state copy (returned flat)
    ops = [getattr(n.target, "__name__", n.target) for n in gm.r0_cached.graph.nodes
           if n.op in ("call_function", "call_method")]
    assert sorted(ops) == ["apply_factors", "clone", "reshape", "reshape"]


def test_explain_report(compiled):
    rep = dit_cache_fx.explain(compiled, torch.randn(1, 8, 16), torch.tensor([3.0]))
    assert rep.graph_break_count == 0 and rep.graph_count == 1
    assert rep.runs == ["transformer_blocks[0:5] (5 blocks, streams=hidden)"]
    assert rep.split.startswith("Fn=1 [transformer_blocks.0..transformer_blocks.0] | Mn=3 "
                                "[transformer_blocks.1..transformer_blocks.3] | Bn=1 [transformer_blocks.4")
    text = str(rep)
    assert "torch.ops.higher_order.cond(" in text and "policy_decide(" in text
    assert "compiled: whole graph by inductor" in text
    assert "branch r0_compute" in rep.text(verbose=True) and "branch r0_compute" not in text


def test_summary_table(compiled):
    s = dit_cache_fx.summary(compiled)
    assert s.cached_steps == [1, 2, 3] and s.num_steps == 4
    assert set(s.residual_diffs) == {1, 2, 3}
    assert all(d > 0 for d in s.residual_diffs.values())
    text = str(s)
    assert "| cond | 3/4 | [1, 2, 3] |" in text


def test_two_wrappers_of_one_model_keep_their_own_state():
    torch.manual_seed(0)
    model = ToyDiT()
    never = dit_cache_fx.compile(model, cache="F1B0_W1_R0")
    always = dit_cache_fx.compile(model, cache="F1B0_W1_R1.0")
    with torch.no_grad():
        for s in range(3):
            for m in (never, always):
                m(torch.randn(1, 8, 16), torch.tensor([100.0 - s]))
    assert dit_cache_fx.summary(never).cached_steps == []
    assert dit_cache_fx.summary(always).cached_steps == [1, 2]
    assert handle(never) is not handle(always)


def test_explain_keeps_compiled_code_and_state(compiled):
    """explain() traces with its own recording backend; it must not reset Dynamo (no recompile, state kept)."""
    n_graphs = len(handle(compiled).graphs)
    dit_cache_fx.explain(compiled, torch.randn(1, 8, 16), torch.tensor([2.0]))
    with torch._dynamo.config.patch(error_on_recompile=True), torch.no_grad():
        compiled(torch.randn(1, 8, 16), torch.tensor([1.0]))
    assert len(handle(compiled).graphs) == n_graphs


def test_explain_counts_graph_breaks():
    class Breaks(ToyDiT):
        def forward(self, hidden_states, timestep):
            h = super().forward(hidden_states, timestep)
            torch._dynamo.graph_break()
            return h * 2

    c = dit_cache_fx.compile(Breaks(), cache="F1B0")
    rep = dit_cache_fx.explain(c, torch.randn(1, 8, 16), torch.tensor([3.0]))
    assert rep.graph_break_count == 1 and rep.graph_count == 2 and rep.break_reasons


def test_explain_fits_a_screen_and_says_what_was_not_measured(compiled):
    report = dit_cache_fx.explain(compiled)
    text = str(report)
    lines = text.splitlines()
    assert len(lines) <= 40 and max(map(len, lines)) <= 160, text
    assert "graph breaks: not measured (pass example inputs)" in text
    assert "Fn=1 [transformer_blocks.0..transformer_blocks.0] | Mn=3" in text and "streams cached: hidden" in text
    assert "torch.ops.higher_order.cond(" in text and "def forward" not in text  # the excerpt, not the code
    verbose = report.text(verbose=True)
    assert "def forward" in verbose and "branch r0_compute" in verbose and len(verbose) > 3 * len(text)
    measured = dit_cache_fx.explain(compiled, torch.randn(1, 8, 16), torch.tensor([5.0]))
    assert "Dynamo graphs: 1, graph breaks: 0" in str(measured)


def test_explain_picture(compiled, tmp_path):
    report = dit_cache_fx.explain(compiled)
    svg = Path(report.save(tmp_path / "regions.svg")).read_text()
    assert svg.startswith("<svg") and svg.count('fill="#4C78A8"') == 1 + 1  # Fn block + legend
    assert svg.count('fill="#F58518"') == 3 + 1 and svg.count('fill="#54A24B"') == 1 + 1  # Mn, Bn (+ legend)
    assert "torch.cond: Mn=3" in svg and "transformer_blocks[0..4] (LinearBlock)" in svg
    pytest.importorskip("matplotlib")
    png = Path(report.save(tmp_path / "regions.png"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match=r"\.svg or \.png"):
        report.save(tmp_path / "regions.jpg")


def test_summary_before_any_call():
    c = dit_cache_fx.compile(ToyDiT(), cache="F1B0")
    assert "no cache region yet: call the model" in str(dit_cache_fx.summary(c))
