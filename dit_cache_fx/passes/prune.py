"""Mutation: DBPrune — every prunable block of a run becomes its own `torch.cond`-guarded region.

A block is prunable when it comes after the run's Fn blocks, before its Bn blocks, and is not in
`non_prune_block_ids` (`DBPruneConfig.prunable`). Each one is cut as a one-block region (`plan.plan_region` with
Fn = its index, Bn = the blocks after it), so its residual streams, hoisted values and other inputs are found
exactly as for DBCache's Mn.

Before (Flux-like run of 3 blocks, F1B0: blocks 1 and 2 prunable; names shortened)::

    h1, e1 = <block 0 nodes>(h0, e0, temb, rope, params0)
    h2, e2 = <block 1 nodes>(h1, e1, temb, rope, params1)
    h3, e3 = <block 2 nodes>(h2, e2, temb, rope, params2)

After (`r0` the region, `st` its `layout.PruneState` placeholders, `p` a block's slot among the prunable)::

    h1, e1 = <block 0 nodes>(h0, e0, temb, rope, params0)
    prune.begin_call(ctx={...}, policy={...r0 pol...}, state={...r0 st...})
    pr, b, gap, nv, restart = prune.decide_block(ctx, policy, state, 0, h1, order, group)   # block 1, slot 0
    fh, fe = prune.pick(r0_st_factors_0, b, 0), prune.pick(r0_st_factors_1, b, 0)
    r = cond(pr, r0_b1_cached, r0_b1_compute, (h1, e1, fh, fe, gap, nv, temb, rope, params1))
    h2, e2 = r[0].view_as(h1), r[1].view_as(e1)
    keep = prune.settle_block(state, b, 0, restart, [r[2].view_as(fh), r[3].view_as(fe)], group)
    prune.store(r0_st_factors_0, b, 0, r[2].view_as(fh), keep); prune.store(r0_st_factors_1, ..., keep)
    pr, b, gap, nv, restart = prune.decide_block(ctx, policy, state, 1, h2, order, group)   # block 2, slot 1
    ... the same with r0_b2_cached / r0_b2_compute ...

    r0_bj_compute / r0_bj_cached: DBCache's Mn branches (`rewrite`) over the one block: the block's nodes and
    its residual stacks updated (plain: the residual; TaylorSeer / FoCa: the calibrator's stack), or the inputs
    plus the stacks' forecast `gap` steps on (FoCa: and the advanced stack); outputs flat

New nodes get value meta here, block by block (the next block's cut reads them); none of them gets the
blocks' `nn_module_stack`.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch.fx import GraphModule, Node

from .. import _compat
from ..config import DBPruneConfig
from ..errors import CachePlanError
from ..runtime import prune
from ..runtime.layout import PruneDims
from ..runtime.policy import Decision
from .blocks import BlockRun
from .graph_utils import same_sig, value_of
from .plan import RegionPlan, Split, StreamPlan, plan_region
from .rewrite import (
    _cached_branch,
    _compute_branch,
    _safe_operands,
    _with_size_symbols,
    cond_operands,
    propagate_values,
    remap_plan,
)


@dataclass(frozen=True)
class PrunePlan(Split):
    """A DBPrune region: the run, its config and one single-block `RegionPlan` per prunable block."""

    name: str
    run: BlockRun
    config: DBPruneConfig
    blocks: tuple[tuple[int, RegionPlan], ...]  # (index in the run, its one-block region)
    streams: tuple[StreamPlan, ...]  # the streams whose residuals are cached (over all blocks), hidden first

    @property
    def fn_out(self) -> Node:
        return self.blocks[0][1].streams[0].region_in

    def split_text(self) -> str:
        names = [b.path for b in self.run.blocks]
        ids = [j for j, _ in self.blocks]
        kept = [j for j in range(self.Fn, len(names) - self.Bn) if j not in ids]
        text = (f"DBPrune: Fn={self.Fn} | {len(ids)} prunable blocks [{names[ids[0]]}..{names[ids[-1]]}] | "
                f"Bn={self.Bn}")
        if kept:
            text += f"; never pruned: {', '.join(names[j] for j in kept)}"
        return text + f"; streams cached: {', '.join(s.name for s in self.streams)}"

    def cond_blocks(self, rid: str) -> dict[str, set[str]]:
        """Compute-branch attribute of each block's cond → that block's path (for `check_graph`)."""
        return {f"{rid}_b{j}_compute": {self.run.blocks[j].path} for j, _ in self.blocks}


def plan_prune(gm: GraphModule, run: BlockRun, config: DBPruneConfig) -> PrunePlan:
    """The DBPrune region of `run`, or `CachePlanError` saying why it cannot be cut."""
    N = len(run.blocks)
    ids = config.prunable(N)
    if not ids:
        raise CachePlanError(f"no prunable block in {run.describe()}: Fn={config.Fn_compute_blocks}, "
                             f"Bn={config.Bn_compute_blocks} and non_prune_block_ids={list(config.non_prune_block_ids)} "
                             f"cover all {N} blocks")
    blocks = []
    for j in ids:
        one = config.replace(Fn_compute_blocks=j, Bn_compute_blocks=N - 1 - j, non_prune_block_ids=())
        plan = plan_region(gm, run, one)
        if plan.streams[0].name != "hidden":
            raise CachePlanError(f"block {run.blocks[j].path} of {run.describe()} does not carry the hidden stream")
        blocks.append((j, dataclasses.replace(plan, config=config)))
    streams: dict[str, StreamPlan] = {}
    for _, plan in blocks:
        for s in plan.streams:
            if s.name in streams and not same_sig(streams[s.name].region_in, s.region_in):
                raise CachePlanError(f"stream {s.name} of {run.describe()} changes shape between blocks: the "
                                     "blocks' residuals cannot share one buffer")
            streams.setdefault(s.name, s)
    ordered = tuple(sorted(streams.values(), key=lambda s: s.name != "hidden"))
    return PrunePlan(run.name, run, config, tuple(blocks), ordered)


def remap_prune(plan: PrunePlan, replaced: dict[Node, Node]) -> PrunePlan:
    """`plan` reading the nodes that replaced erased ones (an earlier region's outputs)."""
    return dataclasses.replace(plan, blocks=tuple((j, remap_plan(p, replaced)) for j, p in plan.blocks))


def prune_dims(plan: PrunePlan) -> PruneDims:
    h = value_of(plan.streams[0].region_in)
    vals = [value_of(s.region_in) for s in plan.streams]
    return PruneDims(tuple(h.shape), h.dtype, tuple(tuple(v.shape) for v in vals), tuple(v.dtype for v in vals),
                     tuple(s.order for s in plan.streams), blocks=len(plan.blocks))


def rewrite_prune(gm: GraphModule, plan: PrunePlan, rid: str, ctx: Mapping[str, Node], pol: Mapping[str, Node],
                  state: Mapping[str, Node], group: str | None = None) -> tuple[list[Node], dict[Node, Node]]:
    """Rewrite every prunable block of `plan` in place as its own cond (see the module docstring); returns the
    new nodes (with value meta) and, for each erased output the run hands on, the node that stands for it."""
    graph = gm.graph
    fake_mode = _compat.fake_mode_of([value_of(n) for n in graph.nodes if n.op == "placeholder"])
    slot_of = {s.name: k for k, s in enumerate(plan.streams)}
    shared = {k: state[k] for k in state if not k.startswith("factors_")}
    replaced: dict[Node, Node] = {}
    new: list[Node] = []
    for p, (j, block) in enumerate(plan.blocks):
        block = remap_plan(block, replaced)
        added, swaps = _rewrite_block(gm, block, f"{rid}_b{j}", p, ctx, pol, shared,
                                      [state[f"factors_{slot_of[s.name]}"] for s in block.streams], group,
                                      first=p == 0)
        propagate_values(gm, added, fake_mode)  # the next block's cut reads these values
        new += added
        replaced = {k: swaps.get(v, v) for k, v in replaced.items()}
        replaced.update(swaps)
    graph.lint()
    return new, replaced


def _rewrite_block(gm: GraphModule, plan: RegionPlan, name: str, slot: int, ctx, pol, state, factors: list[Node],
                   group: str | None, first: bool) -> tuple[list[Node], dict[Node, Node]]:
    graph = gm.graph
    head = plan.nodes[0]
    for n in plan.hoist:
        head.prepend(n)
    plan = _with_size_symbols(gm, plan)
    gm.add_submodule(f"{name}_compute", _compute_branch(plan))  # DBCache's Mn branches, over one block
    gm.add_submodule(f"{name}_cached", _cached_branch(plan))
    hidden = plan.streams[0].region_in
    new: list[Node] = []
    with graph.inserting_before(head):
        def call(fn, *args) -> Node:
            node = graph.call_function(fn, args)
            new.append(node)
            return node

        if first:
            call(prune.begin_call, dict(ctx), dict(pol), dict(state))
        decided = call(prune.decide_block, dict(ctx), dict(pol), dict(state), slot, hidden,
                       plan.config.valid_order, group)
        pruned, branch, gap, n_valid, restart = (call(operator.getitem, decided, i)
                                                 for i in range(len(Decision._fields)))
        picked = [call(prune.pick, f, branch, slot) for f in factors]
        n = len(plan.streams)
        safe = _safe_operands(graph, [*(s.region_in for s in plan.streams), *plan.ext_in], new)
        operands = cond_operands(safe[:n], picked, gap, n_valid, safe[n:])
        true_attr, false_attr = graph.get_attr(f"{name}_cached"), graph.get_attr(f"{name}_compute")
        cond = call(torch.ops.higher_order.cond, pruned, true_attr, false_attr, tuple(operands))
        cond.meta["dcf_value_like"] = [value_of(s.region_out) for s in plan.streams] + picked
        like = [s.region_in for s in plan.streams] + picked
        outs = []
        for i in range(2 * n):
            item = call(operator.getitem, cond, i)
            view = graph.call_method("view_as", (item, like[i]))
            new.append(view)
            outs.append(view)
        keep = call(prune.settle_block, dict(state), branch, slot, restart, outs[n:], group)
        for k in range(n):
            call(prune.store, factors[k], branch, slot, outs[n + k], keep)

    region = set(plan.nodes)
    for k, s in enumerate(plan.streams):
        s.region_out.replace_all_uses_with(outs[k], delete_user_cb=lambda u: u not in region)
    for node in reversed(plan.nodes):
        graph.erase_node(node)
    return new, {s.region_out: outs[k] for k, s in enumerate(plan.streams)}
