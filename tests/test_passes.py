"""The passes called directly on small Dynamo graphs: block discovery, stream tracing by wiring, planning,
the rewrite and its invariant check."""

import operator

import pytest
import torch

import dit_cache_fx
from dit_cache_fx import _compat
from dit_cache_fx.config import RunSpecs
from dit_cache_fx.passes.blocks import find_runs, node_block
from dit_cache_fx.passes.graph_utils import GraphCheckError, check_graph, placeholders, value_of
from dit_cache_fx.passes.pipeline import run_passes
from dit_cache_fx.passes.plan import plan_region
from dit_cache_fx.reference import EagerDBCache

from helpers import max_rel_err
from toy import DualToyDiT, MixedSequential, ToyDiT


def dynamo_graph(model, *args):
    """The graph Dynamo hands a backend (a recording backend keeps it)."""
    graphs = []
    torch.compile(model, backend=lambda gm, ex: graphs.append(gm) or gm.forward, fullgraph=True)(*args)
    assert len(graphs) == 1
    return _compat.copy_dynamo_graph(graphs[0])


def latents(gm, name="hidden_states"):
    return [p for p in placeholders(gm) if _compat.dynamo_source_name(p) == f"L['{name}']"]


def _toy_inputs(dual=False):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 8, 16, generator=g)
    return (x, torch.randn(1, 8, 16, generator=g), torch.tensor([500.0])) if dual else (x, torch.tensor([500.0]))


def test_find_runs_toy():
    gm = dynamo_graph(ToyDiT(), *_toy_inputs())
    runs, rejected = find_runs(gm, latents(gm))
    assert [r.describe() for r in runs] == ["transformer_blocks[0:4] (4 blocks, streams=hidden)"]
    assert rejected == []
    hidden = runs[0].hidden
    assert len(hidden.nodes) == 5 and all(n is not None for n in hidden.nodes)
    assert [node_block(n)[0] for n in hidden.nodes[1:]] == [f"transformer_blocks.{i}" for i in range(4)]


def test_mixed_sequential_is_not_a_run():
    model = MixedSequential()
    gm = dynamo_graph(model, *_toy_inputs())
    runs, rejected = find_runs(gm, latents(gm))
    assert [r.name for r in runs] == ["inner.transformer_blocks[0:4]"]
    assert [(r.name, r.reason) for r in rejected] == [
        ("t_embedder[0:3]", "t_embedder holds modules of several classes, not repeated blocks")]


def test_same_shape_streams_are_told_apart_by_wiring():
    model = DualToyDiT()
    gm = dynamo_graph(model, *_toy_inputs(dual=True))
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
    x, e, _ = _toy_inputs(dual=True)

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


def test_plan_rejects_impossible_cuts():
    gm = dynamo_graph(ToyDiT(), *_toy_inputs())
    (run,), _ = find_runs(gm, latents(gm))
    with pytest.raises(dit_cache_fx.CachePlanError, match=r"Fn=2 \+ Bn=2 leaves no middle blocks"):
        plan_region(gm, run, dit_cache_fx.CacheConfig(Fn_compute_blocks=2, Bn_compute_blocks=2))


def _rewritten(model, spec, *args):
    gm = dynamo_graph(model, *args)
    mode = _compat.fake_mode_of([value_of(p) for p in placeholders(gm)])
    return run_passes(gm, RunSpecs.of(spec), latents(gm), mode)


def test_rewrite_structure_and_invariants():
    record = _rewritten(ToyDiT(num_layers=5), "F1B1", *_toy_inputs())
    gm = record.gm
    (region,) = record.regions
    assert region.plan.Mn == 3 and [s.name for s in region.plan.streams] == ["hidden"]
    conds = [n for n in gm.graph.nodes if n.target is torch.ops.higher_order.cond]
    assert len(conds) == 1 and conds[0].meta["val"][0].shape == (1 * 8 * 16,)  # flat; viewed back after the cond
    blocks = {node_block(n)[0] for n in gm.graph.nodes if n.op != "placeholder" and node_block(n)}
    assert blocks == {"transformer_blocks.0", "transformer_blocks.4"}
    assert {node_block(n)[0] for n in gm.r0_compute.graph.nodes if node_block(n)} == {
        f"transformer_blocks.{i}" for i in (1, 2, 3)}
    # state inputs in the declared order, after the model's own
    names = [p.name for p in placeholders(gm) if p.name.startswith("dcf_")]
    assert names[:2] == ["dcf_ctx_cfg_mode", "dcf_ctx_reset"] and names[-1] == "dcf_r0_st_log_pos"
    assert all("val" in p.meta for p in placeholders(gm) if p.name.startswith("dcf_"))
    # the new nodes carry no block's module stack
    decide = next(n for n in gm.graph.nodes if n.op == "call_function" and getattr(n.target, "__name__", "") == "decide")
    assert "nn_module_stack" not in decide.meta and "val" in decide.meta


def test_check_graph_catches_a_broken_rewrite():
    record = _rewritten(ToyDiT(num_layers=5), "F1B1", *_toy_inputs())
    gm = record.gm
    check_graph(gm, {"r0_compute": {"transformer_blocks.2"}})
    with pytest.raises(GraphCheckError, match="blocks .*transformer_blocks.0.* of region r0_compute have nodes outside"):
        check_graph(gm, {"r0_compute": {"transformer_blocks.0"}})
    with pytest.raises(GraphCheckError, match="expected one cond with compute branch r1_compute"):
        check_graph(gm, {"r1_compute": set()})
    cond = next(n for n in gm.graph.nodes if n.target is torch.ops.higher_order.cond)
    first = next(o for o in cond.args[3] if o.op != "placeholder")
    operands = list(cond.args[3])
    operands[operands.index(next(o for o in operands[1:] if o.op != "placeholder" and o is not first))] = first
    cond.args = (*cond.args[:3], tuple(operands))  # the same non-input value twice: aliasing operands
    with pytest.raises(GraphCheckError, match="share storage"):
        check_graph(gm)
    new = gm.graph.call_function(torch.relu, (first,))
    with pytest.raises(GraphCheckError, match="has no value meta"):
        check_graph(gm, new=[new])


def test_outline_keys_block_code_by_inductor_options():
    """Block code compiles with the model's inductor config (`mode=`, `options=`): the same block under other
    options is other code."""
    from dit_cache_fx.passes.outline import outline_graph
    from dit_cache_fx.runtime import regional

    keys = []
    for options in ({}, {"max_autotune": True}):
        gm = _rewritten(ToyDiT(num_layers=4), "F1B1", *_toy_inputs()).gm
        inputs = [p for p in placeholders(gm) if not p.name.startswith("dcf_")]
        assert outline_graph(gm, {p: i for i, p in enumerate(inputs)}, options)[:2] == (4, 0)
        keys.append({n.args[1] for g in (gm, gm.r0_compute) for n in g.graph.nodes
                     if n.target is torch.ops.dit_cache_fx.block.default})
    assert len(keys[0]) == len(keys[1]) == 1 and keys[0] != keys[1]
    assert regional.BLOCKS[keys[1].pop()].options == (("max_autotune", True),)


def test_outline_shares_code_and_takes_weights_by_slot():
    """Regional mode's outline on the rewritten toy graph: every block one `dit_cache_fx::block` call of one
    shared code, the weights passed by slot (not cond operands, then not graph inputs at all)."""
    from dit_cache_fx.passes.outline import drop_unused_inputs, outline_graph
    from dit_cache_fx.runtime import regional

    record = _rewritten(ToyDiT(num_layers=5), "F1B1", *_toy_inputs())
    gm = record.gm
    inputs = [p for p in placeholders(gm) if not p.name.startswith("dcf_")]
    weights = {p for p in inputs if "transformer_blocks" in (_compat.dynamo_source_name(p) or "")}
    assert weights and outline_graph(gm, {p: i for i, p in enumerate(inputs)})[:2] == (5, 0)  # outlined, inline
    calls = [n for g in (gm, gm.r0_compute) for n in g.graph.nodes if n.target is torch.ops.dit_cache_fx.block.default]
    assert len(calls) == 5 and len({n.args[1] for n in calls}) == 1
    code = regional.BLOCKS[calls[0].args[1]]
    for n in calls:  # each call: the stream and temb as tensors, the block's 4 weights by slot
        tensors, slots = n.args[0], n.args[2]
        assert len(tensors) == 2 and sorted(slots)[2:] == sorted(s for s in slots if s >= 0) and len(slots) == 6
        assert len(code.inputs) == len(slots)
    cond = next(n for n in gm.graph.nodes if n.target is torch.ops.higher_order.cond)
    assert not weights & set(cond.args[3])
    assert all(len([p for p in b.graph.nodes if p.op == "placeholder"]) == len(cond.args[3])
               for b in (gm.r0_compute, gm.r0_cached))
    kept = drop_unused_inputs(gm, len(inputs))
    assert not weights & set(placeholders(gm)) and len(kept) == len(placeholders(gm))
    check_graph(gm)


def test_an_input_written_in_place_is_not_read_by_slot():
    """The compiled graph applies input mutations at its end: such an input must reach a block as a tensor."""
    from dit_cache_fx.passes.outline import _mutated

    def f(x, w, b):
        w[0].add_(1.0)  # through a view
        return x * w + b

    gm = dynamo_graph(f, torch.ones(2, 2), torch.ones(2, 2), torch.ones(2))
    x, w, b = (next(p for p in placeholders(gm) if _compat.dynamo_source_name(p) == f"L['{k}']") for k in "xwb")
    assert _mutated(w) and not _mutated(x) and not _mutated(b)


def test_the_runner_binds_by_the_graph_signature(monkeypatch):
    """The pass pipeline declares the order of the inputs it adds (`pipeline.input_order`); the runner binds
    the state tensors by the recorded signature, so another order still equals the oracle."""
    from dit_cache_fx.passes import pipeline

    monkeypatch.setattr(pipeline, "input_order", lambda group: list(reversed(list(group.flat()))))
    spec = "F1B0_W2_R1.0_T1"
    model = ToyDiT()
    xs = [torch.randn(1, 8, 16, generator=torch.Generator().manual_seed(s)) for s in range(6)]
    ts = [torch.tensor([1000.0 - 150 * s]) for s in range(6)]
    ora = EagerDBCache.single(model, dit_cache_fx.CacheConfig.parse(spec), ["transformer_blocks"], pattern=3)
    with torch.no_grad():
        refs = [model(x, t) for x, t in zip(xs, ts)]
    ora.remove()
    torch._dynamo.reset()
    compiled = dit_cache_fx.compile(model, cache=spec)
    with torch.no_grad():
        outs = [compiled(x, t) for x, t in zip(xs, ts)]
    record = dit_cache_fx.api.handle_of(compiled).graphs[0].record
    assert record.inputs[0].slot == "ambiguous"  # the step context's last slot first: the order really changed
    assert dit_cache_fx.summary(compiled).cached_steps == ora.cached_steps() == [2, 3, 4, 5]
    for a, b in zip(outs, refs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
