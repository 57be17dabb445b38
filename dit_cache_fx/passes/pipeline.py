"""The pass pipeline for one Dynamo graph, in a fixed order (passes/README.md):

    find_runs → plan_region per run (or run part) → add the step context inputs and, when the graph takes the
    timestep, the call's classification (`step.classify_pending`, first) → per region: add its state inputs,
    rewrite_region, propagate_values → check_graph

A run that cannot be cut (too short for Fn + Bn, not a residual stream, ...) is skipped with its reason;
a graph without regions is compiled as it is.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch.fx import GraphModule, Node

from .. import _compat
from ..config import RunSpecs, as_prune
from ..errors import CachePlanError
from ..runtime import step
from ..runtime.layout import RegionDims, StateGroup, StepContext, policy_group, state_group
from .blocks import BlockRun, Rejected, find_runs
from .graph_utils import check_graph, ordered, placeholders, value_of
from .plan import RegionPlan, plan_region
from .prune import PrunePlan, plan_prune, prune_dims, remap_prune, rewrite_prune
from .rewrite import propagate_values, remap_plan, rewrite_region


class InputSlot(NamedTuple):
    """One tensor input the passes added to the graph: its group's prefix (`layout`: ctx, pol, st), its
    region (None for the step context) and its slot name in the group (`StateGroup.flat`)."""

    group: str
    rid: str | None
    slot: str


@dataclass(frozen=True)
class RegionRecord:
    rid: str  # id inside this graph: "r0", "r1", ...
    plan: RegionPlan
    dims: RegionDims  # sizes of its streams in this graph (symbolic with dynamic shapes)


@dataclass
class PipelineRecord:
    """What the passes found and did to one graph."""

    code_before: str
    runs: list[BlockRun] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (run part, why it is not cached)
    regions: list[RegionRecord] = field(default_factory=list)
    # the graph's signature past Dynamo's inputs: the added inputs in graph order; the runner binds by it
    inputs: list[InputSlot] = field(default_factory=list)
    classifies: bool = False  # the graph classifies a pending call itself (it takes the timestep)
    gm: GraphModule | None = None


def placeholder_name(group: str, rid: str | None, slot: str) -> str:
    return "dcf_" + "_".join(x for x in (rid, group, slot) if x)


def region_dims(plan: RegionPlan) -> RegionDims:
    h = value_of(plan.fn_out)
    vals = [value_of(s.region_in) for s in plan.streams]
    return RegionDims(tuple(h.shape), h.dtype, tuple(tuple(v.shape) for v in vals), tuple(v.dtype for v in vals),
                      tuple(s.order for s in plan.streams))


def run_passes(gm: GraphModule, specs: RunSpecs, hidden_inputs: Collection[Node], fake_mode,
               group: str | None = None, timestep: Node | None = None) -> PipelineRecord:
    """Rewrite every cacheable run of `gm` in place (see the module docstring)."""
    record = PipelineRecord(gm.code)
    record.runs, record.rejected = find_runs(gm, hidden_inputs)
    plans: list[RegionPlan] = []
    for run in record.runs:
        for lists, config in specs.assign(list(run.lists)):
            part = run if len(lists) == len(run.lists) else run.split(lists)
            if config is None:
                record.skipped.append((part.name, "not cached by the spec"))
                continue
            try:
                plans.append((plan_prune if as_prune(config) else plan_region)(gm, part, config))
            except CachePlanError as e:
                record.skipped.append((part.name, str(e)))
    if not plans:
        return record

    device = value_of(plans[0].fn_out).device
    ctx = _add_inputs(gm, record, StepContext, None, device, None, fake_mode)
    new: list[Node] = []
    if timestep is not None and isinstance(value_of(timestep), torch.Tensor):
        with gm.graph.inserting_after(placeholders(gm)[-1]):
            new.append(gm.graph.call_function(step.classify_pending, (dict(ctx), timestep)))
        propagate_values(gm, new, fake_mode)
        record.classifies = True
    replaced: dict[Node, Node] = {}
    for i, plan in enumerate(plans):
        pruned = isinstance(plan, PrunePlan)  # DBPrune: a cond per block (passes/prune.py)
        plan = (remap_prune if pruned else remap_plan)(plan, replaced)
        rid, dims = f"r{i}", (prune_dims if pruned else region_dims)(plan)
        pol = _add_inputs(gm, record, policy_group(plan.config), rid, device, None, fake_mode)
        state = _add_inputs(gm, record, state_group(dims), rid, device, dims, fake_mode)
        added, swaps = (rewrite_prune if pruned else rewrite_region)(gm, plan, rid, ctx, pol, state, group)
        if not pruned:  # rewrite_prune gives its nodes their values block by block
            propagate_values(gm, ordered(set(added), gm.graph), fake_mode)  # the next region may read these values
        new += added
        replaced.update(swaps)
        record.regions.append(RegionRecord(rid, plan, dims))
    mn_blocks = {f"{r.rid}_compute": {b.path for b in r.plan.run.blocks[r.plan.Fn:len(r.plan.run.blocks) - r.plan.Bn]}
                 for r in record.regions if not isinstance(r.plan, PrunePlan)}
    for r in record.regions:
        if isinstance(r.plan, PrunePlan):
            mn_blocks.update(r.plan.cond_blocks(r.rid))
    check_graph(gm, mn_blocks, [*new, *(p for p in placeholders(gm) if p.name.startswith("dcf_"))])
    gm.recompile()
    record.gm = gm
    return record


def _add_inputs(gm: GraphModule, record: PipelineRecord, group: type[StateGroup], rid: str | None, device,
                dims: RegionDims | None, fake_mode) -> dict[str, Node]:
    """Placeholders for every tensor of `group`, appended after the graph's inputs, with fake values."""
    with fake_mode:
        fakes = group.allocate(device, dims, factory=lambda shape, value, dtype, device:
                               torch.empty(shape, dtype=dtype, device=device))
    after = placeholders(gm)[-1]
    nodes = {}
    for slot, fake in input_order(fakes):
        with gm.graph.inserting_after(after):
            p = gm.graph.placeholder(placeholder_name(group.prefix, rid, slot))
        _compat.mark_stateful_placeholder(p)
        p.meta["val"] = p.meta["example_value"] = fake
        nodes[slot] = after = p
        record.inputs.append(InputSlot(group.prefix, rid, slot))
    return nodes


def input_order(group: StateGroup) -> list[tuple[str, torch.Tensor]]:
    """The order in which a group's tensors become graph inputs (declared here only: the runner binds by
    `PipelineRecord.inputs`)."""
    return list(group.flat())
