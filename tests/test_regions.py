"""A cache region per block run: models whose block lists do not chain (Chroma, AuraFlow, Flux2) and Flux
split per list by a mapping spec get one region per run, each with its own decision, equal to the eager
oracle with the same regions (a later region's Fn input is the earlier region's approximated output)."""

import pytest
import torch

import dit_cache_fx
from dit_cache_fx.reference import EagerDBCache

from extra_models import EXTRA_MODELS
from extra_models import run_loop as extra_loop
from helpers import handle, max_rel_err
from tiny_models import MODELS
from tiny_models import run_loop as tiny_loop

STEPS = 12
BASE = dit_cache_fx.CacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, max_warmup_steps=2,
                                max_continuous_cached_steps=3)
# model: the regions as (block lists, forward pattern) in call order
CASES = {
    "chroma": [(("transformer_blocks",), 1), (("single_transformer_blocks",), 3)],
    "auraflow": [(("joint_transformer_blocks",), 1), (("single_transformer_blocks",), 3)],
    "flux2": [(("transformer_blocks",), 1), (("single_transformer_blocks",), 3)],
    # one chained run in the graph, cut at the list boundary by naming the lists in the spec
    "flux": [(("transformer_blocks",), 1), (("single_transformer_blocks",), 1)],
}


def _model(name):
    m = EXTRA_MODELS.get(name) or MODELS[name]
    loop = extra_loop if name in EXTRA_MODELS else tiny_loop
    return m, m.build(), (lambda model: loop(model, m, steps=STEPS))


def _oracle(model, loop, regions, configs):
    ora = EagerDBCache(model, [(lists, c, p) for (lists, p), c in zip(regions, configs)])
    try:
        outs = loop(model)
    finally:
        ora.remove()
    return outs, ora


def _pick_thresholds(model, loop, regions):
    """Per region, a threshold at which the oracle caches some steps, every consulted diff at least 0.5%
    away from it (region k is chosen with regions < k at their thresholds, regions > k always caching)."""
    configs = [BASE.replace(residual_diff_threshold=0.999) for _ in regions]
    for k in range(len(regions)):
        _, ora = _oracle(model, loop, regions, configs)
        diffs = sorted(ora.residual_diffs(region=k).values())
        for q in (0.5, 0.4, 0.6, 0.3, 0.7):
            trial = [*configs[:k], BASE.replace(residual_diff_threshold=diffs[int(q * (len(diffs) - 1))] * 1.01),
                     *configs[k + 1:]]
            _, ora = _oracle(model, loop, regions, trial)
            safe = all(abs(d - c.residual_diff_threshold) > 5e-3 * c.residual_diff_threshold
                       for j, c in enumerate(trial[:k + 1]) for b in (0, 1) for d in ora.residual_diffs(b, j).values())
            if safe and 0 < len(ora.cached_steps(region=k)) < STEPS:
                configs = trial
                break
        else:
            raise AssertionError(f"no safe threshold for region {k} among {diffs}")
    return configs


@pytest.mark.parametrize("name", list(CASES))
def test_regions_match_oracle(name):
    torch._dynamo.reset()
    m, model, loop = _model(name)
    regions = CASES[name]
    eager = loop(model)
    configs = _pick_thresholds(model, loop, regions)
    refs, ora = _oracle(model, loop, regions, configs)
    spec = {"+".join(lists): c for (lists, _), c in zip(regions, configs)}
    compiled = dit_cache_fx.compile(model, cache=spec, fullgraph=True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(2):  # two generations
            outs = loop(compiled)
            s = dit_cache_fx.summary(compiled)
            assert len(s.regions) == len(regions)
            for k, (name_k, r) in enumerate(s.regions.items()):
                assert name_k.split("[")[0] == regions[k][0][0]
                assert r.cached_steps == ora.cached_steps(region=k), name_k
                assert r.residual_diffs.keys() == ora.residual_diffs(region=k).keys()
                for step, d in ora.residual_diffs(region=k).items():
                    assert r.residual_diffs[step] == pytest.approx(d, rel=1e-4)
            assert max_rel_err(outs, refs) <= 1e-4
    assert max_rel_err(outs, eager) > 1e-4
    from torch._dynamo.utils import counters
    assert len(counters["graph_break"]) == 0 and counters["stats"]["unique_graphs"] == 1
    assert len(handle(compiled).graphs) == 1


def test_a_run_left_uncached():
    torch._dynamo.reset()
    m, model, loop = _model("chroma")
    cfg = BASE.replace(residual_diff_threshold=1.0)
    refs, ora = _oracle(model, loop, [(("single_transformer_blocks",), 3)], [cfg])
    compiled = dit_cache_fx.compile(model, cache={"transformer_blocks": None, "single_transformer_blocks": cfg})
    outs = loop(compiled)
    s = dit_cache_fx.summary(compiled)
    assert list(s.regions) == ["single_transformer_blocks[0:4]"] and s.cached_steps == ora.cached_steps()
    assert max_rel_err(outs, refs) <= 1e-4
    report = dit_cache_fx.explain(compiled)
    assert "transformer_blocks[0:2]: not cached by the spec" in report.skipped
    assert [r.name for r in report.regions] == ["single_transformer_blocks[0:4]"]
