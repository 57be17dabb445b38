"""Regional mode: each distinct block compiled once and called from every instance — in Fn, inside the cond's
Mn branch, in Bn — with the decision and the cond still in the graph: same outputs and cached steps as the
whole-graph mode and the oracle, 0 graph breaks, no recompiles. With every block outlined, the graph around
them runs as its Python code (as regional compilation leaves the glue eager); a block left inline keeps the
graph compiled by inductor."""

import collections

import pytest
import torch

import dit_cache_fx
from dit_cache_fx.runtime import regional

from helpers import handle, max_rel_err, oracle_run
from tiny_models import MODELS, run_loop

STEPS = 8


def _block_calls(compiled) -> collections.Counter:
    """Outlined block calls per block-code key, over the graphs and their cond branches."""
    return collections.Counter(key for info in handle(compiled).graphs for key in regional.block_calls(info.record.gm))


@pytest.mark.parametrize("name, distinct, outer", [
    ("flux", 2, "python"),  # double blocks, single blocks (the last single block, whose encoder output is dead, reuses them)
    ("wan", 1, "python"),
    ("flux", 2, "inductor"),  # the graph around the blocks compiled, the blocks called from its code
])
def test_regional_matches_whole_graph_and_oracle(name, distinct, outer):
    torch._dynamo.reset()
    m = MODELS[name]
    model = m.build()
    cfg = name == "wan"
    eager = run_loop(model, m, steps=STEPS, cfg=cfg)
    spec = dit_cache_fx.CacheConfig.parse("F1B1_W2MC2_R1.0")
    refs, ora = oracle_run(model, m, spec, steps=STEPS, cfg=cfg)

    compiled = dit_cache_fx.compile(model, cache=spec.replace(residual_diff_threshold=0.0), regional=True,
                                    outer=outer, fullgraph=True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        assert max_rel_err(run_loop(compiled, m, steps=STEPS, cfg=cfg), eager) <= 1e-5
        dit_cache_fx.configure(compiled, residual_diff_threshold=1.0)
        outs = run_loop(compiled, m, steps=STEPS, cfg=cfg)
    s = dit_cache_fx.summary(compiled)
    assert s.cached_steps == ora.cached_steps() and s.cached_steps
    assert max_rel_err(outs, refs) <= 1e-4
    calls = _block_calls(compiled)
    n_blocks = sum(len(model.get_submodule(lst)) for lst in m.blocks)
    assert sum(calls.values()) == n_blocks and len(calls) == distinct  # every block outlined, few compilations
    assert [g.outer for g in handle(compiled).graphs] == [outer]
    around = {"python": "runs as FX code", "inductor": "compiled by inductor"}[outer]
    assert (f"compiled: regional: {distinct} block codes for {n_blocks} blocks; the graph around them {around}"
            in str(dit_cache_fx.explain(compiled)))
    from torch._dynamo.utils import counters
    assert len(counters["graph_break"]) == 0 and len(handle(compiled).graphs) == 1


def _conds(compiled) -> list:
    gm = handle(compiled).graphs[0].record.gm
    return [n for n in gm.graph.nodes if n.target is torch.ops.higher_order.cond]


def test_weights_are_read_by_slot_and_follow_the_model():
    """The blocks' weights reach the block code by slot, not as cond operands; a weight changed after
    compiling — in place, or a new Parameter object (as offloading hooks do) — is what the next call uses."""
    torch._dynamo.reset()
    m = MODELS["flux"]
    model = m.build()
    compiled = dit_cache_fx.compile(model, cache="F1B0_W2_R1.0", regional=True, fullgraph=True)
    inputs = m.make_inputs(torch.Generator().manual_seed(0))
    call = lambda f: f(timestep=torch.tensor([0.5]), **inputs)[0]  # noqa: E731
    with torch.no_grad():
        assert max_rel_err([call(compiled)], [call(model)]) <= 1e-5
        (cond,) = _conds(compiled)
        weights = {id(p) for p in model.parameters()}
        n_params = sum(1 for n in handle(compiled).graphs[0].record.gm.graph.nodes if n.op == "placeholder")
        assert len(cond.args[3]) < 12 < n_params  # streams, factor stacks, gap, n_valid, temb, rope
        for changed in ("in place", "new object"):
            dit_cache_fx.reset(compiled)
            lin = model.single_transformer_blocks[1].proj_out  # a block inside the cond's compute branch
            if changed == "in place":
                lin.weight.mul_(3.0)
            else:
                lin.weight = torch.nn.Parameter(lin.weight.detach() * -2.0)
            assert id(lin.weight) in weights or changed == "new object"
            assert max_rel_err([call(compiled)], [call(model)]) <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mochi", "hunyuandit"])
def test_regional_on_more_models(name):
    """Mochi's blocks have data-dependent sizes inside (its text mask): they stay inline and the model still
    matches; HunyuanDiT's long skips cross its blocks. Threshold 0 == eager, always-cache caches after warmup."""
    from extra_models import EXTRA_MODELS, cache_config
    from extra_models import run_loop as extra_loop

    m = EXTRA_MODELS[name]
    torch._dynamo.reset()
    model = m.build()
    eager = extra_loop(model, m, steps=4)
    compiled = dit_cache_fx.compile(model, cache=cache_config(m, "F1B0_W2_R0"), fullgraph=m.fullgraph, regional=True,
                                    outer="python")
    assert max_rel_err(extra_loop(compiled, m, steps=4), eager) <= m.rel_tol
    dit_cache_fx.configure(compiled, cache_config(m, "F1B0_W2_R1.0"))
    extra_loop(compiled, m, steps=4)
    assert all(r.cached_steps == [2, 3] for r in dit_cache_fx.summary(compiled).regions.values())
    assert (sum(_block_calls(compiled).values()) == 0) == (name == "mochi")
    assert {g.outer for g in handle(compiled).graphs} == {"inductor" if name == "mochi" else "python"}


def test_outer_auto_swaps_in_the_code_compiled_in_the_background():
    """The default `outer="auto"`: the first calls run the graph around the blocks as FX code while a child
    process compiles it; then it runs as inductor's code — below Dynamo (no recompile, no graph break), with
    the same outputs and cached steps."""
    torch._dynamo.reset()
    m = MODELS["flux"]
    model = m.build()
    eager = run_loop(model, m, steps=STEPS)
    spec = dit_cache_fx.CacheConfig.parse("F1B1_W2MC2_R1.0")
    refs, ora = oracle_run(model, m, spec, steps=STEPS)
    compiled = dit_cache_fx.compile(model, cache=spec.replace(residual_diff_threshold=0.0), regional=True,
                                    fullgraph=True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        assert max_rel_err(run_loop(compiled, m, steps=STEPS), eager) <= 1e-5
        (info,) = handle(compiled).graphs
        assert info.runner.compiled is info.record.gm or info.outer == "inductor"  # FX code until swapped
        assert info.outer == "inductor" or "runs as FX code (until its compile in a child process is in" in str(
            dit_cache_fx.explain(compiled))
        assert dit_cache_fx.wait_compiled(compiled, timeout=600)
        assert info.outer == "inductor" and info.runner.compiled is not info.record.gm
        assert max_rel_err(run_loop(compiled, m, steps=STEPS), eager) <= 1e-5
        dit_cache_fx.configure(compiled, residual_diff_threshold=1.0)
        outs = run_loop(compiled, m, steps=STEPS)
    assert dit_cache_fx.summary(compiled).cached_steps == ora.cached_steps()
    assert max_rel_err(outs, refs) <= 1e-4
    assert "the graph around them compiled by inductor" in str(dit_cache_fx.explain(compiled))
    from torch._dynamo.utils import counters
    assert len(counters["graph_break"]) == 0 and len(handle(compiled).graphs) == 1


def test_outer_auto_keeps_the_fx_code_when_the_background_compile_fails(monkeypatch):
    """A child that fails leaves the graph as FX code (correct, slower), said once in a warning."""
    import sys

    from dit_cache_fx import background

    monkeypatch.setattr(background, "worker_command",
                        lambda: [sys.executable, "-c", "import sys; print('no compiler here'); sys.exit(3)"])
    torch._dynamo.reset()
    m = MODELS["flux"]
    model = m.build()
    eager = run_loop(model, m, steps=4)
    compiled = dit_cache_fx.compile(model, cache="F1B1_R0", regional=True, fullgraph=True)
    failed = "in the background failed: the compiling process exited with status 3: no compiler here; it keeps "
    with pytest.warns(UserWarning, match=failed + "running as its Python code") as said:  # during the loop or the wait
        assert max_rel_err(run_loop(compiled, m, steps=4), eager) <= 1e-5
        assert not dit_cache_fx.wait_compiled(compiled, timeout=120)
    assert sum(failed in str(w.message) for w in said) == 1
    (info,) = handle(compiled).graphs
    assert info.outer == "python" and info.runner.compiled is info.record.gm and info.runner.background is None
    assert not dit_cache_fx.wait_compiled(compiled)  # said once: no second warning, nothing restarted
    assert max_rel_err(run_loop(compiled, m, steps=4), eager) <= 1e-5


def test_outer_auto_runs_the_code_outer_inductor_compiles_bit_for_bit(monkeypatch):
    """In bf16, where inductor's fusions round differently from eager (~2.5 % over 4 steps here), the code the
    child process compiled gives the very outputs `outer="inductor"` (compiled in this process) gives: same
    graph, same inductor config, nothing lost on the way."""
    import tiny_models

    made = tiny_models.denoising_inputs

    def bf16_inputs(*args, **kwargs):
        inputs, ts = made(*args, **kwargs)
        return {k: v.bfloat16() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                for k, v in inputs.items()}, ts

    monkeypatch.setattr(tiny_models, "denoising_inputs", bf16_inputs)
    m = MODELS["flux"]
    model = m.build().bfloat16()
    outs = {}
    for outer in ("inductor", "auto"):
        torch._dynamo.reset()
        compiled = dit_cache_fx.compile(model, cache="F1B1_R0", regional=True, fullgraph=True, outer=outer)
        run_loop(compiled, m, steps=4)
        assert dit_cache_fx.wait_compiled(compiled, timeout=600)
        outs[outer] = run_loop(compiled, m, steps=4)
    assert outs["auto"][0].dtype == torch.bfloat16
    assert all(torch.equal(a, b) for a, b in zip(outs["auto"], outs["inductor"]))
    assert max_rel_err(outs["auto"], run_loop(model, m, steps=4)) > 1e-3  # the comparison can fail


def test_outer_auto_swaps_while_two_threads_generate():
    """Two threads generate back to back while a third waits for the background compile: the swap lands at a
    call boundary of each thread (no call runs half FX code, half compiled code), every generation matches
    eager, and nothing recompiles."""
    import threading

    torch._dynamo.reset()
    m = MODELS["flux"]
    model = m.build()
    eager = {seed: run_loop(model, m, steps=4, seed=seed) for seed in (0, 1)}
    compiled = dit_cache_fx.compile(model, cache="F1B1_R0", regional=True, fullgraph=True)
    run_loop(compiled, m, steps=4)  # compiles the blocks; the second call started the child
    (info,) = handle(compiled).graphs
    outs, errors, started = {0: [], 1: []}, [], threading.Barrier(3)

    def generate(seed):
        try:
            started.wait(timeout=60)
            while info.outer != "inductor" and len(outs[seed]) < 200:
                outs[seed].append(run_loop(compiled, m, steps=4, seed=seed))
            outs[seed].append(run_loop(compiled, m, steps=4, seed=seed))  # one generation after the swap
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=generate, args=(seed,)) for seed in (0, 1)]
    with torch._dynamo.config.patch(error_on_recompile=True):
        for t in threads:
            t.start()
        started.wait(timeout=60)
        assert dit_cache_fx.wait_compiled(compiled, timeout=600)
        for t in threads:
            t.join(timeout=600)
    assert not errors and all(not t.is_alive() for t in threads), errors
    assert info.outer == "inductor" and len(handle(compiled).graphs) == 1
    for seed, runs in outs.items():
        assert len(runs) >= 2 and max(max_rel_err(run, eager[seed]) for run in runs) <= 1e-5


def test_a_block_code_whose_last_owner_dies_while_another_graph_outlines_it_stays(monkeypatch):
    """Model B's outlining finds model A's block code; A is collected before B's graph owns it (a test or a
    server dropping the previous model mid-compile): the code goes back into the table, B runs (it raised a
    KeyError from the table before)."""
    import gc

    from dit_cache_fx.passes import outline

    torch._dynamo.reset()
    m = MODELS["flux"]
    eager = run_loop(m.build(), m, steps=4)
    a = [dit_cache_fx.compile(m.build(), cache="F1B1_R0", regional=True, outer="python", fullgraph=True)]
    run_loop(a[0], m, steps=2)
    raced = []

    def a_dies_first(site, key, *rest):
        if not raced:
            gc.collect()  # A's handle, unreachable since the reset below, is collected now
            raced.append(key not in regional.BLOCKS)  # the code this outlining found left the table
        return replace(site, key, *rest)

    replace = outline._replace
    monkeypatch.setattr(outline, "_replace", a_dies_first)
    a.clear()
    torch._dynamo.reset()  # Dynamo's cache entries held A's graphs
    gc.disable()  # A's cycles wait for the collect inside B's outlining
    try:
        b = dit_cache_fx.compile(m.build(), cache="F1B1_R0", regional=True, outer="python", fullgraph=True)
        out = run_loop(b, m, steps=4)
    finally:
        gc.enable()
    assert raced == [True]
    assert max_rel_err(out, eager) <= 1e-5
    assert set(regional._OWNED[id(handle(b))]) <= set(regional.BLOCKS)


def test_outer_auto_is_not_started_where_a_compiled_artifact_would_be_wrong():
    """Symbolic sizes (the artifact would be specialised), a process group (ranks would swap at different
    calls) and tensor-subclass inputs keep the graph as FX code."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext

    from dit_cache_fx.background import not_eligible

    mode = FakeTensorMode(shape_env=ShapeEnv())
    static = mode.from_tensor(torch.randn(2, 3), symbolic_context=StatelessSymbolicContext(
        dynamic_sizes=[DimDynamic.STATIC, DimDynamic.STATIC]))
    dynamic = mode.from_tensor(torch.randn(2, 3), symbolic_context=StatelessSymbolicContext(
        dynamic_sizes=[DimDynamic.DYNAMIC, DimDynamic.STATIC]))
    assert not_eligible([static, 3], None) is None
    assert "dynamic shapes" in not_eligible([static, dynamic], None)
    assert "process group" in not_eligible([static], "cp_group")
    from torch.testing._internal.two_tensor import TwoTensor
    assert "tensor-subclass" in not_eligible([TwoTensor(torch.ones(2), torch.ones(2))], None)


def test_cuda_graph_modes_say_regional_mode_uses_none():
    """`mode="reduce-overhead"` asks for CUDA graphs; regional mode runs the glue uncompiled and says so."""
    model = MODELS["flux"].build()
    with pytest.warns(UserWarning, match="uses no CUDA graphs"):
        dit_cache_fx.compile(model, cache="F1B0", regional=True, mode="reduce-overhead")
