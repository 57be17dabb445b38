"""Mutation: rewrite the Mn region of a plan into a `torch.cond`-guarded cache region.

Before (Fn=1, Bn=0, two streams; names shortened)::

    h1, e1 = <block 0 nodes>(h0, e0, temb, rope, params0)
    h2, e2 = <block 1 nodes>(h1, e1, temb, rope, params1)        # Mn
    h3, e3 = <block 2 nodes>(h2, e2, temb, rope, params2)        # Mn
    out = norm_out(h3) ...

After (`r0` is the region's id; `ctx`, `pol`, `st` the state placeholders of `runtime.layout`)::

    h1, e1 = <block 0 nodes>(h0, e0, temb, rope, params0)
    use_cache, b, gap, n_valid, restart = policy.decide(ctx={...}, policy={...r0 pol...}, state={...r0 st...}, h0, h1)
    fh, fe = taylor.pick(r0_st_factors_0, b), taylor.pick(r0_st_factors_1, b)
    r = cond(use_cache, r0_cached, r0_compute, (h1, e1, fh, fe, gap, n_valid, temb, rope, params1, params2))
    h3, e3 = r[0].view_as(h1), r[1].view_as(e1)          # the branches return flat tensors
    keep = policy.settle(state={...r0 st...}, b, restart, [r[2].view_as(fh), r[3].view_as(fe)])
    taylor.store(r0_st_factors_0, b, r[2].view_as(fh), keep); taylor.store(r0_st_factors_1, b, r[3]..., keep)
    out = norm_out(h3) ...

    r0_compute: h3, e3 = <blocks 1-2>; returns h3, e3, update_factors(fh, h3 - h1, ...), ...
    r0_cached:  returns apply_factors(h1, fh, gap), apply_factors(e1, fe, gap), fh.clone(), fe.clone()
                (FoCa: apply_foca(h1, fh, gap, n_valid) gives the output and the advanced stack)

Steps: hoist → extract the branches → insert decide / pick / cond / store → rewire the region's outputs →
erase the region (reverse order) → lint. New nodes get value meta from `propagate_values` (run by the
pipeline); none of them gets the blocks' `nn_module_stack`.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Mapping

import torch
from torch.fx import Graph, GraphModule, Node

from .. import _compat
from ..config import FOCA
from ..runtime import policy, taylor
from ..runtime.layout import COUNTERS
from .graph_utils import value_of
from .plan import RegionPlan

_DROP_META = ("nn_module_stack", "source_fn_stack", "stack_trace", "from_node")


def rewrite_region(gm: GraphModule, plan: RegionPlan, rid: str, ctx: Mapping[str, Node], pol: Mapping[str, Node],
                   state: Mapping[str, Node], group: str | None = None) -> tuple[list[Node], dict[Node, Node]]:
    """Rewrite `plan.nodes` of `gm` in place as region `rid`; returns the new nodes and, for each erased
    region output, the node that now stands for it (later plans that read them are remapped with it).

    `ctx`, `pol`, `state`: placeholder nodes by slot name (`state` has `factors_<k>` per cached stream)."""
    graph = gm.graph
    first = plan.nodes[0]
    for n in plan.hoist:  # stream-independent values read after the span: compute them first
        first.prepend(n)
    plan = _with_size_symbols(gm, plan)
    gm.add_submodule(f"{rid}_compute", _compute_branch(plan))
    gm.add_submodule(f"{rid}_cached", _cached_branch(plan))
    factors = [state[f"factors_{k}"] for k in range(len(plan.streams))]

    new: list[Node] = []
    with graph.inserting_before(first):
        def call(fn, *args, **kwargs) -> Node:
            node = graph.call_function(fn, args, kwargs)
            new.append(node)
            return node

        def call_method(name, *args) -> Node:
            node = graph.call_method(name, args)
            new.append(node)
            return node

        counters = {k: state[k] for k in (*COUNTERS, "anchor", "log", "log_pos")}
        decided = call(policy.decide, dict(ctx), dict(pol), counters, plan.fn_entry, plan.fn_out,
                       plan.config.valid_order, group)
        use_cache, branch, gap, n_valid, restart = (call(operator.getitem, decided, policy.Decision._fields.index(f))
                                                    for f in ("use_cache", "branch", "gap", "n_valid", "restart"))
        picked = [call(taylor.pick, f, branch) for f in factors]
        safe = _safe_operands(graph, [*(s.region_in for s in plan.streams), *plan.ext_in], new)
        n = len(plan.streams)
        operands = cond_operands(safe[:n], picked, gap, n_valid, safe[n:])
        true_attr, false_attr = graph.get_attr(f"{rid}_cached"), graph.get_attr(f"{rid}_compute")
        cond = call(torch.ops.higher_order.cond, use_cache, true_attr, false_attr, tuple(operands))
        # its value, without running a branch on fake tensors: contiguous stream outputs, then factor stacks
        cond.meta["dcf_value_like"] = [value_of(s.region_out) for s in plan.streams] + picked
        # the branches return flat tensors (symbolic strides of a [B, L, D] output need not pass cond's stride
        # check); each output takes the shape of what it stands for again
        like = [s.region_in for s in plan.streams] + picked
        outs = [call_method("view_as", call(operator.getitem, cond, i), like[i]) for i in range(2 * n)]
        # non-finite values never enter the stored stacks: `settle` restarts the region instead
        keep = call(policy.settle, {k: state[k] for k in ("has_anchor", "n_valid", "log", "log_pos")}, branch,
                    restart, outs[n:], group)
        for k in range(n):
            call(taylor.store, factors[k], branch, outs[n + k], keep)

    region = set(plan.nodes)
    for k, s in enumerate(plan.streams):  # everything after the region now reads the cond's outputs
        s.region_out.replace_all_uses_with(outs[k], delete_user_cb=lambda u: u not in region)
    for node in reversed(plan.nodes):
        graph.erase_node(node)
    graph.lint()
    return new, {s.region_out: outs[k] for k, s in enumerate(plan.streams)}


def remap_plan(plan: RegionPlan, replaced: dict[Node, Node]) -> RegionPlan:
    """`plan` reading the nodes that replaced erased ones (a later region fed by an earlier one)."""
    m = lambda n: replaced.get(n, n)  # noqa: E731
    streams = tuple(dataclasses.replace(s, region_in=m(s.region_in)) for s in plan.streams)
    return dataclasses.replace(plan, streams=streams, ext_in=tuple(map(m, plan.ext_in)), fn_entry=m(plan.fn_entry),
                               fn_out=m(plan.fn_out))


def _with_size_symbols(gm: GraphModule, plan: RegionPlan) -> RegionPlan:
    """The branches compute sizes from the symbols in their operands' shapes (`(s33//2)**2` with dynamic
    shapes; `u0 + u1` for a length from boolean-mask indexing), which inductor must get as operands: add, for
    every such symbol, a node before the region that is that symbol — a SymInt input, a size Dynamo read
    (`sym_size_int`), else a new `sym_size` of a tensor with a dim of exactly that size."""
    values = [value_of(n) for n in (*(s.region_in for s in plan.streams), *plan.ext_in)]
    free = {sym for v in values if isinstance(v, torch.Tensor) for d in v.shape
            if (e := _compat.sym_expr(d)) is not None for sym in e.free_symbols}
    have = {_compat.sym_expr(value_of(n)) for n in plan.ext_in if isinstance(value_of(n), torch.SymInt)}
    missing = free - have
    if not missing:
        return plan
    first, found, dims = plan.nodes[0], {}, {}
    for n in gm.graph.nodes:
        if n is first:
            break
        v = value_of(n)
        if isinstance(v, torch.SymInt) and (e := _compat.sym_expr(v)) in missing:
            found.setdefault(e, n)
        elif isinstance(v, torch.Tensor):
            for d, size in enumerate(v.shape):
                if (e := _compat.sym_expr(size)) in missing:
                    dims.setdefault(e, (n, d))
    for sym in sorted(missing - set(found), key=str):
        if sym in dims:
            with gm.graph.inserting_before(first):
                node = found[sym] = gm.graph.call_function(torch.ops.aten.sym_size.int, dims[sym])
            node.meta["val"] = value_of(dims[sym][0]).shape[dims[sym][1]]
    extra = [found[s] for s in sorted(found, key=str)]
    return dataclasses.replace(plan, ext_in=(*plan.ext_in, *extra)) if extra else plan


def _safe_operands(graph: Graph, nodes: list[Node], new: list[Node]) -> list[Node]:
    """cond operands may not alias each other and inductor wants them contiguous: clone where needed."""
    by_storage: dict = {}
    for n in nodes:
        v = value_of(n)
        if isinstance(v, torch.Tensor) and n.op != "placeholder":
            by_storage.setdefault(_compat.storage_key(v), []).append(n)
    shared = {n for group in by_storage.values() if len(group) > 1 for n in group}
    out = []
    for n in nodes:
        v = value_of(n)
        if isinstance(v, torch.Tensor) and n.op != "placeholder" and (n in shared or not v.is_contiguous()):
            c = graph.call_method("clone", (n,), {"memory_format": torch.contiguous_format})
            new.append(c)
            out.append(c)
        else:
            out.append(n)
    return out


def cond_operands(streams: list[Node], stacks: list[Node], gap: Node, n_valid: Node, ext: list[Node]) -> list[Node]:
    """A region's cond operands, in the one order its branches' placeholders follow (`_branch_inputs`): the
    carried streams, their residual stacks, the gap and valid factors, then the other inputs of its blocks.
    The branches return the new streams, then the new stacks (flat)."""
    return [*streams, *stacks, gap, n_valid, *ext]


def _branch_inputs(g: Graph, plan: RegionPlan) -> tuple[list[Node], list[Node], Node, Node, dict[Node, Node]]:
    """A branch's placeholders, in `cond_operands` order."""
    ins = [g.placeholder(f"stream_{s.name}") for s in plan.streams]
    stacks = [g.placeholder(f"factors_{s.name}") for s in plan.streams]
    gap, n_valid = g.placeholder("gap"), g.placeholder("n_valid")
    env = {s.region_in: p for s, p in zip(plan.streams, ins)}
    for i, x in enumerate(plan.ext_in):
        env[x] = g.placeholder(f"ext{i}")
    for old, p in env.items():
        p.meta = {k: v for k, v in old.meta.items() if k not in _DROP_META}
    return ins, stacks, gap, n_valid, env


def _contiguous(g: Graph, n: Node) -> Node:
    return g.call_method("clone", (n,), {"memory_format": torch.contiguous_format})


def _flat(g: Graph, n: Node) -> Node:
    return g.call_method("reshape", (n, -1))


def _compute_branch(plan: RegionPlan) -> GraphModule:
    g = Graph()
    ins, stacks, gap, n_valid, env = _branch_inputs(g, plan)
    for n in plan.nodes:
        env[n] = g.node_copy(n, lambda x: env[x])
    outs, new_stacks = [], []
    for k, s in enumerate(plan.streams):
        out = _contiguous(g, env[s.region_out])
        residual = g.call_function(operator.sub, (out, ins[k]))
        outs.append(out)
        new_stacks.append(g.call_function(taylor.update_factors, (stacks[k], residual, gap, n_valid, s.order)))
    g.output(tuple(_flat(g, x) for x in outs + new_stacks))
    return GraphModule(torch.nn.Module(), g)


def _cached_branch(plan: RegionPlan) -> GraphModule:
    g = Graph()
    ins, stacks, gap, n_valid, env = _branch_inputs(g, plan)
    outs, keep = [], []
    for k, s in enumerate(plan.streams):
        if s.order == FOCA:  # the forecast also advances the stack
            r = g.call_function(taylor.apply_foca, (ins[k], stacks[k], gap, n_valid))
            outs.append(g.call_function(operator.getitem, (r, 0)))
            keep.append(g.call_function(operator.getitem, (r, 1)))
        else:
            outs.append(g.call_function(taylor.apply_factors, (ins[k], stacks[k], gap, s.order)))
            keep.append(_contiguous(g, stacks[k]))
    g.output(tuple(_flat(g, x) for x in outs + keep))
    return GraphModule(torch.nn.Module(), g)


def propagate_values(gm: GraphModule, nodes: list[Node], fake_mode) -> None:
    """Give each of `nodes` (new, in graph order) its value meta, by running its target on the fake
    values of its inputs (placeholders and earlier nodes must have theirs). A cond's value is made from the
    values it stands for (`meta["dcf_value_like"]`), not by tracing its branches again."""
    def val(a):
        if isinstance(a, Node):
            return getattr(gm, a.target) if a.op == "get_attr" else value_of(a)
        return a

    with fake_mode:
        for node in nodes:
            like = node.meta.pop("dcf_value_like", None)
            if like is not None:
                value = tuple(torch.empty_like(val(x), memory_format=torch.contiguous_format).reshape(-1) for x in like)
            else:
                args = torch.fx.node.map_aggregate(node.args, val)
                kwargs = torch.fx.node.map_aggregate(node.kwargs, val)
                if node.op == "call_method":
                    value = getattr(args[0], node.target)(*args[1:], **kwargs)
                else:
                    value = node.target(*args, **kwargs)
            node.meta["val"] = node.meta["example_value"] = value  # under both keys, as Dynamo's nodes


# ---------------------------------------------------------------------------------------------------------
# tensor-subclass operands (torchao's quantized weights): the cond carries their plain inner tensors


@dataclasses.dataclass(frozen=True)
class SubclassSpec:
    """How one tensor-subclass value crosses a cond: its `__tensor_flatten__` names and context, nested specs
    for inner tensors that are subclasses themselves, and the outer size and stride to rebuild it with."""

    cls: type
    ctx: object
    inner: tuple[tuple[str, SubclassSpec | None], ...]
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def leaves(self) -> list[tuple[str, ...]]:
        """Attribute paths of the plain inner tensors, in the order the cond carries them."""
        return [(name, *rest) for name, sub in self.inner for rest in (sub.leaves() if sub else [()])]


def subclass_spec(value: object, where: str = "") -> SubclassSpec | None:
    """Analysis: the spec of a tensor-subclass value, None for a plain tensor or a non-tensor; a subclass
    without the flatten protocol raises `UnsupportedWeightsError`."""
    if not _compat.is_dispatch_subclass(value):
        return None
    if not _compat.is_traceable_subclass(value):
        from ..errors import UnsupportedWeightsError

        raise UnsupportedWeightsError(
            f"dit_cache_fx: the cache region reads {where or 'a tensor'} of type {type(value).__qualname__}, a tensor "
            "subclass without __tensor_flatten__/__tensor_unflatten__, which the whole-graph mode cannot pass "
            "into its torch.cond; compile with dit_cache_fx.compile(..., regional=True), which keeps the weights "
            "outside the cond")
    names, ctx = value.__tensor_flatten__()
    inner = tuple((n, subclass_spec(getattr(value, n), f"{where}.{n}")) for n in names)
    return SubclassSpec(type(value), ctx, inner, tuple(map(int, value.shape)), tuple(map(int, value.stride())))


def _rebuilder(spec: SubclassSpec):
    """The function a branch calls to rebuild the subclass from its plain inner tensors (a closure: the
    context is any Python object, which FX code cannot spell as a literal)."""

    def build(s: SubclassSpec, leaves: list) -> torch.Tensor:
        inner = {name: (build(sub, leaves) if sub else leaves.pop(0)) for name, sub in s.inner}
        return s.cls.__tensor_unflatten__(inner, s.ctx, s.size, s.stride)

    def rebuild(*leaves: torch.Tensor) -> torch.Tensor:
        return build(spec, list(leaves))

    rebuild.__name__ = rebuild.__qualname__ = f"dcf_rebuild_{spec.cls.__name__}"
    return rebuild


def flatten_subclass_operands(gm: GraphModule) -> int:
    """Mutation: every cond operand of `gm` whose value is a tensor subclass (the `__tensor_flatten__`
    protocol: torchao's Int8Tensor, Float8Tensor, ...) is replaced by its plain inner tensors (`getattr`
    nodes), and each branch rebuilds it from them (`__tensor_unflatten__`) before its first use. `torch.cond`
    has no rule for subclass operands; plain ones it traces as any other. Returns how many were replaced."""
    done = 0
    for cond in [n for n in gm.graph.nodes if n.op == "call_function" and n.target is torch.ops.higher_order.cond]:
        operands = list(cond.args[3])
        specs = [subclass_spec(value_of(o), o.name) if isinstance(o, Node) else None for o in operands]
        if not any(specs):
            continue
        carried: list = []
        with gm.graph.inserting_before(cond):
            for o, spec in zip(operands, specs):
                carried += [o] if spec is None else [_leaf_node(gm.graph, o, path) for path in spec.leaves()]
        for attr in cond.args[1:3]:
            branch = getattr(gm, attr.target)
            _rebuild_in_branch(branch, specs)
        cond.args = (*cond.args[:3], tuple(carried))
        done += sum(s is not None for s in specs)
    if done:
        gm.graph.lint()
        gm.recompile()
    return done


def _leaf_node(graph: Graph, node: Node, path: tuple[str, ...]) -> Node:
    for name in path:
        value = getattr(value_of(node), name)
        node = graph.call_function(getattr, (node, name))
        node.meta["val"] = node.meta["example_value"] = value
    return node


def _rebuild_in_branch(branch: GraphModule, specs: list[SubclassSpec | None]) -> None:
    g = branch.graph
    phs = [n for n in g.nodes if n.op == "placeholder"]
    rebuilt: list[tuple[Node, list[Node], SubclassSpec]] = []
    for ph, spec in zip(phs, specs):
        if spec is None:
            continue
        value = value_of(ph)
        leaves = []
        with g.inserting_before(ph):
            for path in spec.leaves():
                leaf = g.placeholder(f"{ph.name}_{'_'.join(path)}")
                v = value
                for name in path:
                    v = getattr(v, name) if v is not None else None
                if v is not None:
                    leaf.meta["val"] = v
                leaves.append(leaf)
        rebuilt.append((ph, leaves, spec))
    last = [n for n in g.nodes if n.op == "placeholder"][-1]
    for ph, leaves, spec in rebuilt:
        with g.inserting_after(last):
            node = g.call_function(_rebuilder(spec), tuple(leaves))
        node.meta = dict(ph.meta)
        ph.replace_all_uses_with(node)
        g.erase_node(ph)
    g.lint()
    branch.recompile()
