"""passes/plan.py: cutting a run into Fn | Mn | Bn."""

import pytest

import dit_cache_fx
from dit_cache_fx.passes.blocks import find_runs
from dit_cache_fx.passes.plan import plan_region

from graphs import dynamo_graph, latents, toy_inputs
from toy import ToyDiT


def test_plan_rejects_impossible_cuts():
    gm = dynamo_graph(ToyDiT(), *toy_inputs())
    (run,), _ = find_runs(gm, latents(gm))
    with pytest.raises(dit_cache_fx.CachePlanError, match=r"Fn=2 \+ Bn=2 leaves no middle blocks"):
        plan_region(gm, run, dit_cache_fx.CacheConfig(Fn_compute_blocks=2, Bn_compute_blocks=2))
