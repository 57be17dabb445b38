"""Mutation: rewrite the Mn region of a plan into a `torch.cond`-guarded cache region.

Before (Fn=1, Bn=0, two streams; names shortened)::

    h1, e1 = <block 0 nodes>(h0, e0, temb, rope, params0)
    h2, e2 = <block 1 nodes>(h1, e1, temb, rope, params1)        # Mn
    h3, e3 = <block 2 nodes>(h2, e2, temb, rope, params2)        # Mn
    out = norm_out(h3) ...

After::

    h1, e1 = <block 0 nodes>(h0, e0, temb, rope, params0)
    use_cache, b, dt, n_valid = runtime.decide(ctl, tst, prm, mask, anchor, log, timestep, h0, h1)
    fh, fe = runtime.pick(stack_h, b), runtime.pick(stack_e, b)
    r = cond(use_cache, cached_branch, compute_branch, (h1, e1, fh, fe, dt, n_valid, temb, rope, params1, params2))
    h3, e3 = r[0], r[1]
    runtime.store(stack_h, b, r[2]); runtime.store(stack_e, b, r[3])
    out = norm_out(h3) ...

    compute_branch: h3, e3 = <blocks 1-2>; returns h3, e3, taylor_update(fh, h3 - h1, ...), ...
    cached_branch:  returns taylor_forecast(h1, fh, dt), taylor_forecast(e1, fe, dt), fh.clone(), fe.clone()

With TaylorSeer off (K=0) the factor stack is just the residual, the update stores `h3 - h1` and the
forecast is `h1 + residual`. Steps: hoist → extract branches → insert state placeholders → insert
decide/cond/store → rewire → erase the region (reverse order) → lint.
"""

from __future__ import annotations

import operator

import torch
from torch.fx import Graph, GraphModule, Node

from .. import _compat, runtime
from .plan import RegionPlan


def rewrite_cache_region(gm: GraphModule, plan: RegionPlan, orders: list[int]) -> list[Node]:
    """Rewrite `plan.region` in `gm` in place; returns the new state placeholders, in `RegionState.tensors`
    order (ctl, tst, prm, mask, log, anchor, one factor stack per stream). `orders`: Taylor order per stream."""
    graph = gm.graph
    first = plan.region[0]
    for n in plan.hoist:  # stream-independent values read after the span: compute them first
        first.prepend(n)

    state = _add_state_placeholders(graph, len(plan.stream_in))
    ctl, tst, prm, mask, log, anchor, *stacks = state
    n_streams = len(plan.stream_in)
    compute_gm = _compute_branch(plan, orders)
    cached_gm = _cached_branch(plan, orders)
    gm.add_submodule("dit_cache_compute", compute_gm)
    gm.add_submodule("dit_cache_cached", cached_gm)

    with graph.inserting_before(first):
        dec = _call(graph, runtime.decide, (ctl, tst, prm, mask, anchor, log, plan.timestep, plan.fn_entry, plan.fn_out),
                    meta_from=plan.fn_out)
        use_cache, b, dt, n_valid = (_call(graph, operator.getitem, (dec, i), meta_from=None) for i in range(4))
        picked = [_call(graph, runtime.pick, (s, b), meta_from=None) for s in stacks]
        operands = [*_safe_operands(graph, plan.stream_in), *picked, dt, n_valid,
                    *_safe_operands(graph, plan.ext_in)]
        true_attr = graph.get_attr("dit_cache_cached")
        false_attr = graph.get_attr("dit_cache_compute")
        cond = _call(graph, torch.ops.higher_order.cond, (use_cache, true_attr, false_attr, tuple(operands)),
                     meta_from=None)
        outs = [_call(graph, operator.getitem, (cond, i), meta_from=None) for i in range(2 * n_streams)]
        for k in range(n_streams):
            _call(graph, runtime.store, (stacks[k], b, outs[n_streams + k]), meta_from=None)

    # rewire: everything after the region now reads the cond outputs
    region_set = set(plan.region)
    for k, old in enumerate(plan.stream_out):
        # keep the value meta; the node itself no longer belongs to a block
        outs[k].meta = {key: v for key, v in old.meta.items() if key not in ("nn_module_stack", "source_fn_stack")}
        old.replace_all_uses_with(outs[k], delete_user_cb=lambda u: u not in region_set)
    for n in reversed(plan.region):
        graph.erase_node(n)
    graph.lint()
    gm.recompile()
    return state


def _add_state_placeholders(graph: Graph, n_streams: int) -> list[Node]:
    last_ph = [n for n in graph.nodes if n.op == "placeholder"][-1]
    names = ["dit_cache_ctl", "dit_cache_tst", "dit_cache_prm", "dit_cache_mask", "dit_cache_log", "dit_cache_anchor"]
    names += [f"dit_cache_stack{k}" for k in range(n_streams)]
    nodes = []
    with graph.inserting_after(last_ph):
        for name in reversed(names):
            p = graph.placeholder(name)
            _compat.mark_stateful_placeholder(p)
            nodes.append(p)
    return list(reversed(nodes))


def _call(graph: Graph, fn, args: tuple, meta_from: Node | None) -> Node:
    node = graph.call_function(fn, args)
    if meta_from is not None:
        node.meta.update({k: v for k, v in meta_from.meta.items() if k in ("nn_module_stack", "stack_trace")})
    return node


def _safe_operands(graph: Graph, nodes: list[Node]) -> list[Node]:
    """cond operands may not alias each other and inductor wants them contiguous: clone where needed."""
    by_storage: dict = {}
    for n in nodes:
        v = n.meta.get("example_value")
        if isinstance(v, torch.Tensor) and n.op != "placeholder":
            by_storage.setdefault(_compat.storage_key(v), []).append(n)
    shared = {n for group in by_storage.values() if len(group) > 1 for n in group}
    out = []
    for n in nodes:
        v = n.meta.get("example_value")
        if isinstance(v, torch.Tensor) and n.op != "placeholder" and (n in shared or not v.is_contiguous()):
            c = graph.call_method("clone", (n,), {"memory_format": torch.contiguous_format})
            c.meta = dict(n.meta)
            out.append(c)
        else:
            out.append(n)
    return out


def _branch_inputs(g: Graph, plan: RegionPlan) -> tuple[list[Node], list[Node], Node, Node, dict[Node, Node]]:
    ins = [g.placeholder(f"stream{k}") for k in range(len(plan.stream_in))]
    stacks = [g.placeholder(f"stack{k}") for k in range(len(plan.stream_in))]
    dt, n_valid = g.placeholder("dt"), g.placeholder("n_valid")
    env = dict(zip(plan.stream_in, ins))
    for i, x in enumerate(plan.ext_in):
        env[x] = g.placeholder(f"ext{i}")
        env[x].meta = dict(x.meta)
    for old, new in zip(plan.stream_in, ins):
        new.meta = dict(old.meta)
    return ins, stacks, dt, n_valid, env


def _contiguous(g: Graph, n: Node) -> Node:
    return g.call_method("clone", (n,), {"memory_format": torch.contiguous_format})


def _compute_branch(plan: RegionPlan, orders: list[int]) -> GraphModule:
    g = Graph()
    ins, stacks, dt, n_valid, env = _branch_inputs(g, plan)
    for n in plan.region:
        env[n] = g.node_copy(n, lambda x: env[x])
    outs, new_stacks = [], []
    for k, o in enumerate(plan.stream_out):
        out = _contiguous(g, env[o])
        residual = g.call_function(operator.sub, (out, ins[k]))
        outs.append(out)
        new_stacks.append(g.call_function(_taylor_update, (stacks[k], residual, dt, n_valid, orders[k])))
    g.output(tuple(outs + new_stacks))
    return GraphModule(torch.nn.Module(), g)


def _cached_branch(plan: RegionPlan, orders: list[int]) -> GraphModule:
    g = Graph()
    ins, stacks, dt, n_valid, env = _branch_inputs(g, plan)
    outs = [g.call_function(_taylor_forecast, (ins[k], stacks[k], dt, orders[k])) for k in range(len(ins))]
    keep = [_contiguous(g, s) for s in stacks]
    g.output(tuple(outs + keep))
    return GraphModule(torch.nn.Module(), g)


def _taylor_update(stack: torch.Tensor, residual: torch.Tensor, dt: torch.Tensor, n_valid: torch.Tensor,
                   order: int) -> torch.Tensor:
    if order == 0:
        return residual.unsqueeze(0).to(stack.dtype)
    from ..kernels import taylor_update

    return taylor_update(stack, residual, dt, n_valid)


def _taylor_forecast(base: torch.Tensor, stack: torch.Tensor, dt: torch.Tensor, order: int) -> torch.Tensor:
    if order == 0:
        return (base + stack[0]).contiguous()
    from ..kernels import taylor_forecast

    return taylor_forecast(base, stack, dt)
