"""DBPrune: spec parsing, golden decisions from cache-dit 1.5.3's own DBPrune on tiny random models (printed by
`tests/dbprune_golden.py` in a venv with cache-dit; the tests do not need it), the eager oracle against them,
and the compiled per-block conds against the oracle (0 graph breaks, one graph across steps and generations).
"""

import dataclasses

import pytest
import torch

import dit_cache_fx
from dit_cache_fx import reference
from dit_cache_fx.config import CacheConfig, DBPruneConfig, RunSpecs, as_config
from dit_cache_fx.errors import DitCacheError

from helpers import handle, max_rel_err
from tiny_models import MODELS, run_loop

# name: (model, steps, separate CFG, spec, blocks pruned per call (a CFG run: cond, uncond, cond, ...),
#        cached steps, CFG cached steps, pruned_blocks, cfg_pruned_blocks, pruned_ratio, output sums)
GOLDEN = {
    "flux_dyn": ("flux", 8, False, "DBPrune_F1B0_W2_R0.1_DT1",  # the dynamic threshold: 1.25 x the step's diffs
                 [[], [], [1, 2, 3, 4, 5], [2, 3, 4, 5], [1, 5], [2, 3, 4], [1, 4, 5], [2, 3, 5]],
                 [2, 3, 4, 5, 6, 7], [], [0, 0, 5, 4, 2, 3, 3, 3], [], 0.4166666666666667,
                 [-74.6415, -84.2326, -89.3616, -88.8048, -89.1899, -76.4551, -88.5304, -94.6156]),
    "flux_r": ("flux", 8, False, "DBPrune_F1B0_W2_R0.1185",
               [[], [], [1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [], [1, 2, 3, 4, 5], [1, 2, 3, 4, 5], []],
               [2, 3, 5, 6], [], [0, 0, 5, 5, 0, 5, 5, 0], [], 0.4166666666666667,
               [-74.6415, -84.2326, -89.3616, -88.8438, -88.7108, -76.7558, -88.9169, -93.6036]),
    "flux_np_mc": ("flux", 10, False, "DBPrune_F1B1_W2MC1_R0.16_NP3",  # blocks 0, 3, 5 never pruned
                   [[], [], [1, 2, 4], [], [1, 2, 4], [], [1, 2, 4], [], [1, 2, 4], []],
                   [2, 4, 6, 8], [], [0, 0, 3, 0, 3, 0, 3, 0, 3, 0], [], 0.2,
                   [-74.6415, -78.2842, -73.7496, -84.874, -82.5528, -91.8855, -82.5386, -98.0176, -83.4884,
                    -94.5501]),
    "flux_m": ("flux", 10, False, "DBPrune_F2B0_W1M3_R0.2",  # the 3rd pruned step prunes one block only
               [[], [2, 3, 4, 5], [2, 3, 4, 5], [2], [], [], [], [], [], []],
               [1, 2, 3], [], [0, 4, 4, 1, 0, 0, 0, 0, 0, 0], [], 0.15,
               [-74.6415, -80.7888, -79.0284, -85.8905, -84.0069, -92.1635, -81.9106, -98.4993, -83.3446,
                -95.2929]),
    "wan_cfg": ("wan", 8, True, "DBPrune_F1B0_W2_R0.12_CFG1_DT1_DM0.2",  # uncond's threshold from cond's diffs
                [[], [], [], [], [1, 2, 3], [1, 2, 3], [2, 3], [1, 2, 3], [1], [], [2, 3], [1, 2, 3], [1],
                 [1, 2, 3], [2, 3], []],
                [2, 3, 4, 5, 6, 7], [2, 3, 5, 6], [0, 0, 3, 2, 1, 2, 1, 2], [0, 0, 3, 3, 0, 3, 3, 0], 0.34375,
                [45.5771, 40.2707, 80.5465, 62.1292, 95.7255, 74.0462, 45.4535, 94.9261]),
    "flux_foca": ("flux", 10, False, "DBPrune_F1B0_W2_R0.16_FoCa",  # each pruned block's residuals forecast by FoCa
                  [[], [], [1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [1, 2, 3, 4], [5], [1, 2, 3, 4], [1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [5]],
                  [2, 3, 4, 5, 6, 7, 8, 9], [], [0, 0, 5, 5, 4, 1, 4, 5, 5, 1], [], 0.5,
                  [-74.6414, -78.2842, -72.0099, -78.9362, -74.5296, -90.8484, -87.9413, -101.8071, -84.2862, -92.6611]),
}


def _calls(ora, steps, cfg):
    """The oracle's pruned blocks per call, in call order."""
    out = []
    for s in range(steps):
        for b in (0, 1) if cfg else (0,):
            out.append(sorted(ora.pruned(b).get(s, [])))
    return out


# ---------------------------------------------------------------------------------------------------------
# spec


def test_cache_dit_printed_name_parses():
    c = CacheConfig.parse("DBPrune_F1B0_W4I1M0MC0_R0.08")
    assert isinstance(c, DBPruneConfig) and (c.Fn_compute_blocks, c.max_warmup_steps) == (1, 4)
    assert (c.max_cached_steps, c.max_continuous_cached_steps, c.residual_diff_threshold) == (-1, -1, 0.08)
    assert str(c) == "DBPrune_F1B0_W4I1M0MC0_R0.08" and as_config(str(c)) == c
    # cache-dit's summary name adds the pruned ratio `_P41.67`; `_S<n>` too: both ignored
    assert as_config("DBPrune_F1B0_W4I1M0MC0_R0.08_P41.67_S5") == c
    assert not c.enable_dynamic_prune_threshold and c.dynamic_prune_threshold_relax_ratio == 1.25
    assert c.max_dynamic_prune_threshold is None and c.non_prune_block_ids == ()


def test_prune_fields_round_trip():
    c = as_config("DBPrune_F2B1_W4MC2_R0.1_DT1_DR1.5_DM0.3_NP7,3")
    assert c.enable_dynamic_prune_threshold and c.dynamic_prune_threshold_relax_ratio == 1.5
    assert c.max_dynamic_prune_threshold == 0.3 and c.non_prune_block_ids == (3, 7)
    assert str(c) == "DBPrune_F2B1_W4I1M0MC2_R0.1_DT1_DR1.5_DM0.3_NP3,7" and as_config(str(c)) == c
    assert c.prunable(10) == [2, 4, 5, 6, 8]
    assert "non_prune_block_ids" in DBPruneConfig.structural_fields()
    assert DBPruneConfig(non_prune_block_ids=(5, 2, 5)).non_prune_block_ids == (2, 5)
    assert type(RunSpecs.of({"transformer_blocks": "DBPrune_F1B0"}).per_list[0][1]) is DBPruneConfig


@pytest.mark.parametrize("spec, message", [
    ("F1B0_DT1", "DBPrune specs only"),
    ("F1B0_NP3", "DBPrune specs only"),
    ("DBPrune_F1B0_DR0", "relax_ratio"),
    ("DBPrune_F1B0_DM0", "max_dynamic_prune_threshold"),
    ("DBPrune_F1B0_NPx", "cannot parse"),
    ("DBPrune_F1B0_DT2", "DT takes 0 or 1"),
    ("DBPrune_DBPrune_F1", "given twice"),
])
def test_bad_specs(spec, message):
    with pytest.raises(DitCacheError, match=message):
        as_config(spec)


# ---------------------------------------------------------------------------------------------------------
# oracle == cache-dit


@pytest.mark.parametrize("name", list(GOLDEN))
def test_oracle_equals_cache_dit(name):
    key, steps, cfg, spec, calls, cached, cfg_cached, pruned_blocks, cfg_pruned_blocks, ratio, sums = GOLDEN[name]
    m = MODELS[key]
    model = m.build()
    ora = reference.EagerDBPrune.single(model, as_config(spec), m.blocks, m.pattern)
    outs = run_loop(model, m, steps=steps, cfg=cfg)
    ora.remove()
    assert _calls(ora, steps, cfg) == calls
    assert ora.cached_steps(0) == cached and ora.cached_steps(1) == cfg_cached
    assert ora.pruned_blocks(0) == pruned_blocks and ora.pruned_blocks(1) == cfg_pruned_blocks
    assert ora.pruned_ratio() == pytest.approx(ratio)
    assert [o.double().sum().item() for o in outs] == pytest.approx(sums, rel=1e-5, abs=1e-3)


# ---------------------------------------------------------------------------------------------------------
# compiled == cache-dit == oracle


def _compiled_calls(s, steps, cfg):
    return [s.branches[b].pruned.get(step, []) for step in range(steps) for b in ((0, 1) if cfg else (0,))]


@pytest.fixture(scope="module")
def compiled_runs():
    """Each golden case compiled (fullgraph) and run twice: a second generation must not recompile. Cases of the
    same model and graph share one compiled model, switched with `configure` (no recompile either)."""
    from torch._dynamo.utils import counters

    out, compiled, last = {}, None, None
    for name, (key, steps, cfg, spec, *_) in GOLDEN.items():
        m, config = MODELS[key], as_config(spec)
        shape = (key, type(config), tuple(getattr(config, f) for f in DBPruneConfig.structural_fields()))
        if shape != last:
            torch._dynamo.reset()
            counters.clear()
            compiled, last = dit_cache_fx.compile(m.build(), cache=spec, fullgraph=True), shape
            first = run_loop(compiled, m, steps=steps, cfg=cfg)
        else:
            dit_cache_fx.configure(compiled, spec)
            with torch._dynamo.config.patch(error_on_recompile=True):
                first = run_loop(compiled, m, steps=steps, cfg=cfg)
        s1 = dit_cache_fx.summary(compiled)
        with torch._dynamo.config.patch(error_on_recompile=True):
            second = run_loop(compiled, m, steps=steps, cfg=cfg)
        out[name] = dict(first=first, second=second, s1=s1, s2=dit_cache_fx.summary(compiled),
                         graphs=len(handle(compiled).graphs), breaks=len(counters["graph_break"]),
                         compiled=compiled)
    return out


@pytest.mark.parametrize("name", list(GOLDEN))
def test_compiled_equals_cache_dit(compiled_runs, name):
    key, steps, cfg, spec, calls, cached, cfg_cached, pruned_blocks, cfg_pruned_blocks, ratio, sums = GOLDEN[name]
    r = compiled_runs[name]
    assert r["graphs"] == 1 and r["breaks"] == 0
    for s in (r["s1"], r["s2"]):  # the second generation decides the same
        assert _compiled_calls(s, steps, cfg) == calls
        assert s.cached_steps == cached and s.pruned_blocks == pruned_blocks
        assert s.pruned_ratio == pytest.approx(ratio)
        if cfg:
            assert s.branches[1].cached_steps == cfg_cached and s.branches[1].pruned_blocks == cfg_pruned_blocks
    assert [o.double().sum().item() for o in r["first"]] == pytest.approx(sums, rel=1e-5, abs=1e-3)
    assert max_rel_err(r["second"], r["first"]) <= 1e-6


def test_compiled_equals_oracle_per_block_diffs(compiled_runs):
    key, steps, cfg, spec, *_ = GOLDEN["flux_dyn"]
    m = MODELS[key]
    model = m.build()
    ora = reference.EagerDBPrune.single(model, as_config(spec), m.blocks, m.pattern)
    refs = run_loop(model, m, steps=steps, cfg=cfg)
    ora.remove()
    r = compiled_runs["flux_dyn"]
    assert max_rel_err(r["first"], refs) <= 1e-5
    got = r["s1"].branches[0].block_diffs
    assert got.keys() == ora.block_diffs().keys()
    for step, diffs in ora.block_diffs().items():
        assert got[step] == pytest.approx(diffs, rel=1e-4)
    text = str(r["s1"])
    assert "DBPrune ratio 41.67% (20/48 blocks pruned, branch 0)" in text


def test_configure_cannot_switch_technique(compiled_runs):
    compiled = compiled_runs["flux_dyn"]["compiled"]
    with pytest.raises(ValueError, match="the technique"):
        dit_cache_fx.configure(compiled, "F1B0_W2_R0.1")
    with pytest.raises(ValueError, match="non_prune_block_ids"):
        dit_cache_fx.configure(compiled, "DBPrune_F1B0_W2_R0.1_NP2")
    # a keyword DBPrune field changes only itself
    dit_cache_fx.configure(compiled, dynamic_prune_threshold_relax_ratio=1.3)
    assert handle(compiled).store.configs[next(iter(handle(compiled).store.configs))] == as_config(
        GOLDEN["flux_r"][3]).replace(dynamic_prune_threshold_relax_ratio=1.3)


@pytest.mark.parametrize("mode", ["dynamic", "regional"])
def test_dynamic_and_regional_equal_cache_dit(mode):
    """`dynamic=True` (also at a second resolution, without recompiling) and `regional=True` decide as cache-dit."""
    key, steps, cfg, spec, calls, cached, _, pruned_blocks, _, ratio, sums = GOLDEN["flux_dyn"]
    m = MODELS[key]
    torch._dynamo.reset()
    kwargs = dict(dynamic=True) if mode == "dynamic" else dict(regional=True)
    compiled = dit_cache_fx.compile(m.build(), cache=spec, fullgraph=True, **kwargs)
    with torch._dynamo.config.patch(error_on_recompile=mode == "regional"):
        outs = run_loop(compiled, m, steps=steps, cfg=cfg)
    s = dit_cache_fx.summary(compiled)
    assert _compiled_calls(s, steps, cfg) == calls and s.pruned_blocks == pruned_blocks
    assert [o.double().sum().item() for o in outs] == pytest.approx(sums, rel=1e-5, abs=1e-3)
    if mode == "regional":  # and once the graph around the blocks runs compiled (outer="auto"), the same
        assert dit_cache_fx.wait_compiled(compiled, timeout=600)
        with torch._dynamo.config.patch(error_on_recompile=True):
            outs = run_loop(compiled, m, steps=steps, cfg=cfg)
        assert {g.outer for g in handle(compiled).graphs} == {"inductor"}
        assert [o.double().sum().item() for o in outs] == pytest.approx(sums, rel=1e-5, abs=1e-3)
        return
    # another image size: the same graph, a fresh per-shape state, the oracle's decisions
    small = dataclasses.replace(m, make_inputs=lambda g: {**m.make_inputs(g), "hidden_states": torch.randn(
        1, 48, 16, generator=g), "img_ids": torch.rand(48, 3, generator=g)})
    model = m.build()
    ora = reference.EagerDBPrune.single(model, as_config(spec), m.blocks, m.pattern)
    refs = run_loop(model, small, steps=steps)
    ora.remove()
    with torch._dynamo.config.patch(error_on_recompile=True):
        outs = run_loop(compiled, small, steps=steps)
    assert dit_cache_fx.summary(compiled).pruned_blocks == ora.pruned_blocks()
    assert max_rel_err(outs, refs) <= 1e-5 and len(handle(compiled).graphs) == 1


@pytest.mark.parametrize("key, spec, kwargs", [
    ("flux", "DBPrune_F1B0_W2_R0.16_T1", dict(fullgraph=True)),
    ("flux", "DBPrune_F1B1_W2_R0.2_T2", dict(dynamic=True)),
    ("wan", "DBPrune_F1B0_W2_R0.15_CFG1_FoCa", dict(regional=True)),
], ids=["taylor1", "taylor2-dynamic", "foca-cfg-regional"])
def test_calibrated_prune_equals_oracle(key, spec, kwargs):
    """A calibrator in DBPrune: each pruned block's residuals are its own TaylorSeer / FoCa forecast (per block
    and branch: the gap since that block's last computed step). The compiled conds decide and forecast as the
    oracle (whose FoCa equals cache-dit's: `flux_foca`); the forecast changes the images (against plain DBPrune
    at the same threshold), in one graph, with no break and no recompile across two generations."""
    from torch._dynamo.utils import counters

    m, steps, cfg = MODELS[key], 10, key == "wan"
    config = as_config(spec)
    model = m.build()
    plain = reference.EagerDBPrune.single(model, config.replace(taylorseer_order=0, foca=False), m.blocks, m.pattern)
    uncal = run_loop(model, m, steps=steps, cfg=cfg)
    plain.remove()
    ora = reference.EagerDBPrune.single(model, config, m.blocks, m.pattern)
    refs = run_loop(model, m, steps=steps, cfg=cfg)
    ora.remove()
    assert ora.cached_steps() and max_rel_err(refs, uncal) > 1e-3  # the forecast is not the plain residual
    torch._dynamo.reset()
    compiled = dit_cache_fx.compile(model, cache=spec, **kwargs)
    outs = run_loop(compiled, m, steps=steps, cfg=cfg)
    with torch._dynamo.config.patch(error_on_recompile=True):
        again = run_loop(compiled, m, steps=steps, cfg=cfg)
    s = dit_cache_fx.summary(compiled)
    for b in (0, 1) if cfg else (0,):
        assert s.branches[b].pruned == ora.pruned(b), b
    assert max_rel_err(outs, refs) <= 1e-4 and max_rel_err(again, refs) <= 1e-4
    assert len(handle(compiled).graphs) == 1 and len(counters["graph_break"]) == 0


# ---------------------------------------------------------------------------------------------------------
# context parallelism: every block's two diff sums are all-reduced in the graph (cache-dit raises instead)

CP_SPEC, CP_STEPS = "DBPrune_F1B0_W2_R0.1_DT1", 6


def _ranks_prune(rank: int, world: int) -> dict:
    """One rank: Flux under Ulysses, DBPrune compiled; the oracle on the full sequence in one process."""
    from diffusers import ContextParallelConfig
    from torch._dynamo.utils import counters

    from test_context_parallel import _loop, _patch_for_cpu

    _patch_for_cpu(ring=False)
    m, config = MODELS["flux"], as_config(CP_SPEC)
    single = m.build()  # one process, the full sequence: the oracle
    ora = reference.EagerDBPrune.single(single, config, m.blocks, m.pattern)
    want = _loop(single, "flux", cfg=False, steps=CP_STEPS)
    ora.remove()
    cp = m.build()
    cp.set_attention_backend("native")
    cp.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world))
    counters.clear()
    compiled = dit_cache_fx.compile(cp, cache=config)
    got = _loop(compiled, "flux", cfg=False, steps=CP_STEPS)
    s = dit_cache_fx.summary(compiled)
    return dict(pruned={str(k): v for k, v in s.branches[0].pruned.items()},
                oracle={str(k): v for k, v in ora.pruned().items()},
                err=float((got - want).norm() / want.norm()), breaks=len(counters["graph_break"]),
                group=handle(compiled).group)


def test_context_parallel_ranks_prune_together(tmp_path):
    import torch.distributed as dist

    from ranks import run_ranks

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("needs gloo")
    r0, r1 = run_ranks(_ranks_prune, tmp_path)
    assert r0["group"] is not None and r0["breaks"] == r1["breaks"] == 0
    assert r0["pruned"] == r1["pruned"] == r0["oracle"] == {"2": [1, 2, 3, 4, 5], "3": [2, 3, 4, 5], "4": [1],
                                                            "5": [2, 3, 4, 5]}
    assert r0["err"] <= 1e-4 and r1["err"] <= 1e-4


def test_mixed_regions_dbprune_and_dbcache():
    """A mapping spec: Flux's double blocks pruned block by block, its single blocks cached as DBCache; the two
    oracles side by side on the uncompiled model, the compiled model in one graph."""
    from torch._dynamo.utils import counters

    m = MODELS["flux"]
    spec = {"transformer_blocks": "DBPrune_F1B0_W2_R0.1_DT1", "single_transformer_blocks": "F1B0_W2MC2_R1.0"}
    model = m.build()
    prune = reference.EagerDBPrune(model, [(["transformer_blocks"], as_config(spec["transformer_blocks"]), 1)])
    cache = reference.EagerDBCache(model, [(["single_transformer_blocks"], as_config(spec["single_transformer_blocks"]),
                                            1)])
    refs = run_loop(model, m, steps=8)
    prune.remove()
    cache.remove()
    torch._dynamo.reset()
    counters.clear()
    compiled = dit_cache_fx.compile(model, cache=spec, fullgraph=True)
    outs = run_loop(compiled, m, steps=8)
    s = dit_cache_fx.summary(compiled)
    double, single = s.regions["transformer_blocks[0:2]"], s.regions["single_transformer_blocks[0:4]"]
    assert double.branches[0].pruned == prune.pruned() == {2: [1], 4: [1], 6: [1]}
    assert double.pruned_ratio == pytest.approx(3 / 16)
    assert single.cached_steps == cache.cached_steps() == [2, 3, 5, 6] and single.pruned_ratio is None
    assert max_rel_err(outs, refs) <= 1e-5
    assert len(handle(compiled).graphs) == 1 and len(counters["graph_break"]) == 0


def test_nonfinite_values_are_never_kept():
    """A NaN in the latents at one step: every prunable block computes and stores nothing of it (cache-dit computes
    too — its NaN diff never passes — but keeps the NaN input, so the block never prunes again); the next steps
    compute the blocks afresh and pruning resumes, in the graph as in the oracle."""
    from toy import ToyDiT

    spec = "DBPrune_F1B0_W2_R1.0"  # threshold >= 1: every consulted block prunes

    def loop(model):
        x, outs = torch.randn(1, 8, 16, generator=torch.Generator().manual_seed(1)), []
        with torch.no_grad():
            for s in range(8):
                xs = x.clone()
                if s == 3:
                    xs[0, 3, 5] = float("nan")
                outs.append(model(xs, torch.tensor([1000.0 - 45 * s])))
        return outs

    model = ToyDiT()
    ora = reference.EagerDBPrune.single(model, as_config(spec), ["transformer_blocks"], pattern=3)
    refs = loop(model)
    ora.remove()
    torch._dynamo.reset()
    compiled = dit_cache_fx.compile(model, cache=spec, fullgraph=True)
    outs = loop(compiled)
    s = dit_cache_fx.summary(compiled)
    assert s.nonfinite_steps == ora.nonfinite_steps() == [3]
    assert s.branches[0].pruned == ora.pruned() == {2: [1, 2, 3], 5: [1, 2, 3], 6: [1, 2, 3], 7: [1, 2, 3]}
    assert all(torch.isfinite(t).all() for t in handle(compiled).store.states()[0].factors)
    assert max_rel_err(outs[4:], refs[4:]) <= 1e-5 and not torch.isfinite(outs[3]).all()
