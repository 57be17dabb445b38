"""The eager reference: DBCache (+ TaylorSeer or FoCa) written plainly, the oracle every test compares with.

It knows nothing of graphs. Like cache-dit, it is told which block lists form each region and their
forward pattern, wraps each block's forward, and decides in Python after each region's Fn blocks:

    H_entry ─ Fn blocks ─ H_fn ── should_cache(|R_fn − anchor| / |anchor| < R, warmup, M, MC) ──┐
                                   computed: Mn blocks, store R = H_m − H_fn (Taylor update)      │
                                   cached:   H_m ≈ H_fn + R (or its Taylor forecast)              │
                                 ─ Bn blocks ─ output ◄───────────────────────────────────────────┘

Its functions are the twins of the in-graph ones: `classify_call` (runtime.step), `should_cache` and
`update_counters` (runtime.policy), `taylor_update` / `taylor_forecast` and `foca_update` /
`foca_forecast` (kernels). Several regions share
one step context; a later region's Fn input is the earlier region's (possibly approximated) output.
Semantics are cache-dit's with the fixes listed in the README.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .config import CFG_BRANCH_OF_NAME, FOCA, CacheConfig


@dataclass
class StepState:
    """Twin of `runtime.layout.StepContext`."""

    call: int = 0
    gen: int = 0
    calls: int = 0
    step: int = 0
    branch: int = 0
    cfg_seen: bool = False
    last_t: float = math.nan
    last_cond_t: float = math.nan
    direction: float = 0.0
    reset: bool = False
    ambiguous: bool = False


def classify_call(ctx: StepState, t: float, cfg_mode: bool | None, hint: int = -1) -> bool:
    """Advance `ctx` for a call at timestep `t` (`hint`: the branch the pipeline named, -1 none); returns
    whether it starts a new generation."""
    has_last = ctx.call > 0
    repeat = has_last and t == ctx.last_t
    cfg_on = cfg_mode is True or (cfg_mode is None and ctx.cfg_seen)
    expect_uncond = cfg_on and has_last and ctx.branch == 0
    detect = cfg_mode is None and not ctx.cfg_seen and repeat and ctx.calls == 1 and hint < 0
    uncond = expect_uncond if cfg_mode is True else (expect_uncond and repeat) or detect
    if hint >= 0:
        uncond = hint == 1
        detect = uncond
    moved = math.nan if math.isnan(ctx.last_cond_t) else float((t > ctx.last_cond_t) - (t < ctx.last_cond_t))
    against = ctx.direction != 0 and moved == -ctx.direction
    new_gen = ctx.reset or not has_last or (not uncond and against)
    ctx.ambiguous = ctx.ambiguous or (not new_gen and not uncond and moved == 0 and ctx.direction == 0)
    moved = 0.0 if math.isnan(moved) else moved
    if new_gen:
        ctx.direction, ctx.step, ctx.calls, ctx.cfg_seen = 0.0, 0, 1, False
        ctx.gen += 1
    else:
        if not uncond and ctx.direction == 0 and moved != 0:
            ctx.direction = moved
        ctx.step += 0 if uncond else 1
        ctx.calls += 1
        ctx.cfg_seen = ctx.cfg_seen or detect
    ctx.call += 1
    ctx.branch = int(uncond)
    if not uncond:
        ctx.last_cond_t = t
    ctx.last_t = t
    ctx.reset = False
    return new_gen


@dataclass
class Counters:
    """Twin of `runtime.policy.Counters` (one branch of one region)."""

    n_cached: int = 0
    n_cont: int = 0
    has_anchor: bool = False
    last_computed: int = 0
    n_valid: int = 0


def should_cache(c: CacheConfig, n: Counters, step: int, diff) -> tuple[bool, bool]:
    """(use_cache, consulted); `diff()` is called only when consulted."""
    in_warmup = step < c.effective_warmup and step % c.warmup_interval == 0
    mask = c.steps_computation_mask or ()
    must_compute = step < len(mask) and mask[step] == 1
    static_cache = (not in_warmup and step < len(mask) and not must_compute
                    and c.steps_computation_policy == "static" and n.has_anchor)
    consulted = (not in_warmup and not must_compute and not static_cache and n.has_anchor
                 and not (c.max_cached_steps >= 0 and n.n_cached >= c.max_cached_steps)
                 and not (c.max_continuous_cached_steps >= 0 and n.n_cont >= c.max_continuous_cached_steps)
                 and c.residual_diff_threshold > 0)
    use_cache = static_cache or (consulted and (diff() < c.residual_diff_threshold or c.residual_diff_threshold >= 1))
    return use_cache, consulted


def update_counters(n: Counters, use_cache: bool, step: int, order: int) -> Counters:
    return Counters(n_cached=n.n_cached + use_cache, n_cont=(n.n_cont + 1) * use_cache,
                    has_anchor=n.has_anchor or not use_cache,
                    last_computed=n.last_computed if use_cache else step,
                    n_valid=n.n_valid if use_cache else min(n.n_valid + 1, order + 1))


def rel_l1(prev: torch.Tensor, cur: torch.Tensor) -> float:
    """mean|prev − cur| / mean|prev| in float64."""
    p = prev.double()
    return ((p - cur.double()).abs().sum() / p.abs().sum()).item()


def taylor_update(factors: torch.Tensor, value: torch.Tensor, gap: float, n_valid: int) -> torch.Tensor:
    """New divided-difference stack: F0 = value, F(i+1) = (F_i(new) − F_i(old)) / gap for valid old F_i."""
    new = torch.zeros_like(factors)
    new[0] = value
    for i in range(factors.shape[0] - 1):
        if i < n_valid:
            new[i + 1] = (new[i] - factors[i]) / gap
    return new


def taylor_forecast(base: torch.Tensor, factors: torch.Tensor, k: float) -> torch.Tensor:
    out = base.clone()
    for i in range(factors.shape[0]):
        out = out + factors[i] * (k ** i / math.factorial(i))
    return out


def foca_update(stack: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """FoCa after a computed step (cache-dit's `FoCaState.update`): stack = [F_k, F_km1, F_full, F_full_prev];
    the rolling pair and the computed pair both move on to `value`."""
    return torch.stack([value, stack[0], value, stack[2]])


def foca_forecast(base: torch.Tensor, stack: torch.Tensor, k: float, n_valid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """FoCa on a cached step `k` steps after the last computed one (cache-dit's `FoCaState.approximate`):
    (base + P, the new stack). With fewer than two computed steps P = F_full and nothing moves."""
    f_k, f_km1, f_full, f_full_prev = stack
    if n_valid < 2:
        return base + f_full, stack
    deriv = (f_full - f_full_prev) + (f_k - f_km1)
    if k <= 3:
        p = f_full + (k / 2.0) * deriv
    else:  # damped toward the anchor beyond a horizon of 3 steps
        w = 3.0 / k
        p = w * (f_full + 1.5 * deriv) + (1.0 - w) * f_full
    return base + p, torch.stack([p, f_k, f_full, f_full_prev])


# ---------------------------------------------------------------------------------------------------------


@dataclass
class BranchState:
    counters: Counters = field(default_factory=Counters)
    anchor: torch.Tensor | None = None  # Fn residual of the last computed step
    factors: list[torch.Tensor | None] = field(default_factory=lambda: [None, None])  # hidden, encoder
    cached_steps: list[int] = field(default_factory=list)
    diffs: dict[int, float] = field(default_factory=dict)
    nonfinite_steps: list[int] = field(default_factory=list)  # steps that restarted the stacks (non-finite)


@dataclass
class Region:
    """One region of the reference: its blocks (modules, in call order), pattern and config."""

    config: CacheConfig
    blocks: list[torch.nn.Module]
    pattern: int  # cache-dit's ForwardPattern: 0 returns (h, e); 1 (e, h); 2, 3: h
    branches: list[BranchState] = field(default_factory=lambda: [BranchState(), BranchState()])
    cached: bool = False  # the current call serves Mn from the cache
    entry: torch.Tensor | None = None
    mn_in: tuple = (None, None)
    mn_out: tuple = (None, None)  # the streams a cached step hands to the first Bn block
    before: Counters | None = None  # the current branch's counters before this call's decision
    restart: bool = False  # the current call restarts the branch's stacks (non-finite values)
    shapes: tuple = ()  # the last two distinct shapes of the hidden stream at the region's entry

    @property
    def first_mn(self) -> int:
        return self.config.Fn_compute_blocks

    @property
    def last_mn(self) -> int:
        return len(self.blocks) - self.config.Bn_compute_blocks - 1


class EagerDBCache:
    """Apply the reference cache to `model` in place (until `remove()`).

    Args:
        regions: `(block-list names, config, pattern)` per region in call order; the lists of a region run
            one after the other (Flux: `("transformer_blocks", "single_transformer_blocks")`).
        timestep_arg: the forward argument carrying the timestep.
    """

    def __init__(self, model: torch.nn.Module, regions: Sequence[tuple[Sequence[str], CacheConfig, int]],
                 timestep_arg: str = "timestep", cfg_mode: bool | None = None) -> None:
        self.regions = []
        for names, config, pattern in regions:
            blocks = [b for name in names for b in model.get_submodule(name)]
            if config.Fn_compute_blocks + config.Bn_compute_blocks >= len(blocks):
                raise ValueError(f"Fn + Bn >= {len(blocks)} blocks of {names}")
            self.regions.append(Region(config, blocks, pattern))
        self.ctx, self.cfg_mode, self.timestep_arg = StepState(), cfg_mode, timestep_arg
        self._handles = [model.register_forward_pre_hook(self._begin, with_kwargs=True)]
        self._originals = []
        self.call_name: str | None = None  # the pipeline's `cache_context` name for the current call
        if callable(getattr(model, "cache_context", None)):
            self._originals.append((model, "cache_context", model.__dict__.get("cache_context")))
            model.cache_context = self._naming(model.cache_context)
        for region in self.regions:
            for i, block in enumerate(region.blocks):
                self._originals.append((block, "forward", block.__dict__.get("forward")))
                block.forward = self._wrap(region, i, block.forward)

    @classmethod
    def single(cls, model: torch.nn.Module, config: CacheConfig, blocks: Sequence[str], pattern: int,
               timestep_arg: str = "timestep") -> EagerDBCache:
        """One region over the lists `blocks`."""
        return cls(model, [(blocks, config, pattern)], timestep_arg, config.enable_separate_cfg)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        for m, attr, fn in self._originals:  # leave the modules exactly as found (compiled code guards on it)
            if fn is None:
                del m.__dict__[attr]
            else:
                setattr(m, attr, fn)

    def _naming(self, cache_context):
        @contextlib.contextmanager
        def named(name: str, **kwargs):
            before, self.call_name = self.call_name, name
            try:
                with cache_context(name, **kwargs):
                    yield
            finally:
                self.call_name = before
        return named

    def reset(self) -> None:
        self.ctx.reset = True

    # ---- stats (of the first region unless given) ----
    def cached_steps(self, branch: int = 0, region: int = 0) -> list[int]:
        return self.regions[region].branches[branch].cached_steps

    def residual_diffs(self, branch: int = 0, region: int = 0) -> dict[int, float]:
        return self.regions[region].branches[branch].diffs

    def nonfinite_steps(self, branch: int = 0, region: int = 0) -> list[int]:
        return self.regions[region].branches[branch].nonfinite_steps

    # ---- hooks ----
    def _begin(self, module, args, kwargs):
        bound = inspect.signature(module.forward).bind_partial(*args, **kwargs).arguments
        t = bound.get(self.timestep_arg, kwargs.get(self.timestep_arg))
        t = float(t.detach().reshape(-1).float().amax()) if isinstance(t, torch.Tensor) else float(t)
        t = float(torch.tensor(t, dtype=torch.float32))  # the graph compares fp32 timesteps
        self._start_call(classify_call(self.ctx, t, self.cfg_mode, CFG_BRANCH_OF_NAME.get(self.call_name, -1)))

    def _start_call(self, new_generation: bool) -> None:
        """Each call: a new generation empties every region's branches; nothing is served from the cache yet."""
        for r in self.regions:
            if new_generation:
                r.branches = [BranchState(), BranchState()]
            r.cached = False

    @staticmethod
    def _streams(region: Region, args, kwargs):
        h = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        e = None
        if region.pattern in (0, 1, 2):
            e = kwargs["encoder_hidden_states"] if "encoder_hidden_states" in kwargs else args[1]
        return h, e

    @staticmethod
    def _pack(region: Region, h, e):
        return {0: (h, e), 1: (e, h)}.get(region.pattern, h)

    @staticmethod
    def _unpack(region: Region, out):
        if region.pattern == 0:
            return out[0], out[1]
        if region.pattern == 1:
            return out[1], out[0]
        return (out[0] if isinstance(out, tuple) else out), None

    @staticmethod
    def _replace(region: Region, args, kwargs, h, e):
        """`args`, `kwargs` of a block call with its streams replaced by `h`, `e` (the inverse of `_streams`)."""
        args, kwargs = list(args), dict(kwargs)
        for key, pos, v in (("hidden_states", 0, h), ("encoder_hidden_states", 1, e)):
            if v is None or (pos == 1 and region.pattern not in (0, 1, 2)):
                continue
            if key in kwargs:
                kwargs[key] = v
            else:
                args[pos] = v
        return tuple(args), kwargs

    def _wrap(self, region: Region, i: int, forward):
        """Block i's forward under the cache. Glue (what the model does to the streams between block i and
        i + 1, e.g. adding ControlNet samples) belongs to block i: the decision reads the streams entering
        the first Mn block, the Mn residual is what enters the first Bn block minus what entered Mn, and on a
        cached step the first Bn block gets the cached output whatever the skipped blocks' glue did. (After
        the run's last block there is no block to see glue at: with Bn = 0 it runs after the forecast.)"""
        def run(*args, **kwargs):
            h, e = self._streams(region, args, kwargs)
            if i == 0:
                shape = tuple(h.shape)  # a shape not among the last two (CFG branches may differ): start over
                if region.shapes and shape not in region.shapes:  # the state at a new shape: this branch's
                    region.branches[self.ctx.branch] = BranchState()
                if not region.shapes or region.shapes[-1] != shape:
                    region.shapes = (*region.shapes[-1:], shape)
                region.entry = h
            st = region.branches[self.ctx.branch]
            if i == region.first_mn:
                region.cached = self._decide(region, st, h - region.entry)
                region.mn_in = (h, e)
            if i == region.last_mn + 1:  # the first Bn block
                if region.cached:
                    args, kwargs = self._replace(region, args, kwargs, *region.mn_out)
                else:
                    self._store(region, st, h, e)
                    self._settle(region, st, self.ctx.step)
            if region.first_mn <= i <= region.last_mn and region.cached:
                h, e = region.mn_in
                if i < region.last_mn:
                    return self._pack(region, h, e)  # skipped: pass the streams through
                k = float(self.ctx.step - st.counters.last_computed)
                h2 = self._forecast(region, st, 0, h, k)
                e2 = self._forecast(region, st, 1, e, k) if e is not None and st.factors[1] is not None else e
                self._settle(region, st, self.ctx.step)  # a forecast that advances the stack (FoCa) may overflow
                region.mn_out = (h2, e2)
                return self._pack(region, h2, e2)
            out = forward(*args, **kwargs)
            if i == region.last_mn == len(region.blocks) - 1:  # Bn = 0: the run's output
                self._store(region, st, *self._unpack(region, out))
                self._settle(region, st, self.ctx.step)
            return out

        return run

    def _decide(self, region: Region, st: BranchState, fn_res: torch.Tensor) -> bool:
        step = self.ctx.step
        diff: list[float] = []
        use_cache, consulted = should_cache(region.config, st.counters, step,
                                            lambda: diff.append(rel_l1(st.anchor, fn_res)) or diff[0])
        if consulted:
            st.diffs[step] = diff[0]
        # a non-finite Fn residual, or a non-finite diff consulted (0/0, x/0): compute, restart the stacks
        region.restart = not bool(torch.isfinite(fn_res).all()) or (consulted and not math.isfinite(diff[0]))
        use_cache = use_cache and not region.restart
        if use_cache:
            st.cached_steps.append(step)
        else:
            st.anchor = fn_res
        region.before = st.counters
        st.counters = update_counters(st.counters, use_cache, step, region.config.valid_order)
        return use_cache

    @staticmethod
    def _forecast(region: Region, st: BranchState, k: int, base: torch.Tensor, gap: float) -> torch.Tensor:
        """Stream `k`'s output on a cached step: `base` + its cached (or forecast) residual."""
        if region.config.taylor_order_for("hidden" if k == 0 else "encoder") == FOCA:
            out, st.factors[k] = foca_forecast(base, st.factors[k], gap, st.counters.n_valid)
            return out
        return taylor_forecast(base, st.factors[k], gap)

    @staticmethod
    def _settle(region: Region, st: BranchState, step: int) -> None:
        """Twin of `runtime.policy.settle`: after the call, a restart or a non-finite stack leaves the branch
        with no anchor and no valid factors (nothing non-finite is kept); the step is counted non-finite."""
        if region.restart or any(f is not None and not bool(torch.isfinite(f).all()) for f in st.factors):
            st.anchor, st.factors = None, [None, None]
            st.counters = dataclasses.replace(st.counters, has_anchor=False, n_valid=0)
            st.nonfinite_steps.append(step)

    def _store(self, region: Region, st: BranchState, ho, eo) -> None:
        res = [ho - region.mn_in[0],
               eo - region.mn_in[1] if eo is not None and region.mn_in[1] is not None else None]
        update_stacks(region.config, st, res, self.ctx.step, region.before)


def update_stacks(config: CacheConfig, st: BranchState, residuals: Sequence[torch.Tensor | None], step: int,
                  before: Counters) -> None:
    """`st.factors` after a computed step whose residual of stream k is `residuals[k]` (`before`: the
    counters before this step: the gap since the last computed step and the valid factors)."""
    gap = float(step - before.last_computed)
    for k, r in enumerate(residuals):
        if r is None:
            st.factors[k] = None
            continue
        K = config.taylor_order_for("hidden" if k == 0 else "encoder")
        depth = 4 if K == FOCA else K + 1
        old = st.factors[k] if st.factors[k] is not None else torch.zeros((depth, *r.shape), dtype=r.dtype)
        st.factors[k] = foca_update(old, r) if K == FOCA else taylor_update(old, r, gap, before.n_valid)


def decision_string(config: CacheConfig, steps: int, diffs: Sequence[float] | float = 0.0) -> str:
    """Golden-test helper: '1' computed / '0' cached per step when the Fn residual diff is `diffs`."""
    n, out = Counters(), []
    for s in range(steps):
        d = diffs if isinstance(diffs, float) else diffs[s]
        use_cache, _ = should_cache(config, n, s, lambda d=d: d)
        n = update_counters(n, use_cache, s, config.valid_order)
        out.append("0" if use_cache else "1")
    return "".join(out)


# ---------------------------------------------------------------------------------------------------------
# DBPrune: one decision per block (cache-dit's `PrunedBlocks_Pattern_Base.compute_or_prune`)

PRUNE_DYN_DIFFS = 5  # cache-dit's dynamic threshold reads the first 5 diffs recorded in the step


@dataclass
class PruneCounters:
    """One branch's DBPrune counters (twin of `runtime.prune`'s): steps with a pruned block, and the run of
    consecutive such steps before the current one."""

    n_cached: int = 0
    n_cont: int = 0
    last_cached: int = -1  # the last step with a pruned block
    call_pruned: int = 0  # blocks pruned so far in the current call


@dataclass
class DynStats:
    """The diffs the cond branch recorded so far in one step: how many, and the sum and count of the positive
    ones among the first `PRUNE_DYN_DIFFS` (cache-dit's `residual_diffs[step][:5]`, `d > 0`)."""

    gen: int = -1
    step: int = -1
    n: int = 0
    total: float = 0.0
    count: int = 0


def prune_threshold(c, dyn: DynStats, gen: int, step: int) -> float:
    """The threshold of a block (cache-dit's `PrunedContext.get_residual_diff_threshold`): R, or with the
    dynamic threshold the mean of this step's earlier positive diffs × relax ratio when that is below the cap
    (`max_dynamic_prune_threshold`, default 2R), never below R."""
    thr = c.residual_diff_threshold
    if c.enable_dynamic_prune_threshold and dyn.gen == gen and dyn.step == step and dyn.count > 0:
        relaxed = dyn.total / dyn.count * c.dynamic_prune_threshold_relax_ratio
        cap = 2 * thr if c.max_dynamic_prune_threshold is None else c.max_dynamic_prune_threshold
        if relaxed < cap:
            thr = max(relaxed, thr)
    return thr


def should_prune(c, n: PruneCounters, step: int, has_buffer: bool, thr: float, diff) -> tuple[bool, bool]:
    """(prune, consulted) for one block, in cache-dit's `can_cache` order: warmup → mask → M → MC →
    threshold → buffer present; `diff()` is called only when consulted (with `thr >= 1` it is not: cache-dit
    records -1 then and prunes)."""
    in_warmup = step < c.effective_warmup and step % c.warmup_interval == 0
    mask = c.steps_computation_mask or ()
    must_compute = step < len(mask) and mask[step] == 1
    static_cache = (not in_warmup and step < len(mask) and not must_compute
                    and c.steps_computation_policy == "static" and has_buffer)
    before = n.n_cont - (n.call_pruned > 0)  # the streak of earlier steps: this step's own hit does not count
    consulted = (not in_warmup and not must_compute and not static_cache and has_buffer
                 and not (c.max_cached_steps >= 0 and n.n_cached >= c.max_cached_steps)
                 and not (c.max_continuous_cached_steps >= 0 and before >= c.max_continuous_cached_steps)
                 and thr > 0)
    prune = static_cache or (consulted and (thr >= 1 or diff() < thr))
    return prune, consulted


@dataclass
class PruneBranch:
    counters: PruneCounters = field(default_factory=PruneCounters)
    inputs: dict[int, torch.Tensor] = field(default_factory=dict)  # block → its input at its last computed step
    # block → its residual stacks (hidden, encoder) and their counters (`last_computed`, `n_valid`): a DBCache
    # branch of one block
    blocks: dict[int, BranchState] = field(default_factory=dict)
    cached_steps: list[int] = field(default_factory=list)  # steps with a pruned block
    pruned_blocks: list[int] = field(default_factory=list)  # per call: blocks pruned
    pruned: dict[int, list[int]] = field(default_factory=dict)  # step → the blocks pruned
    diffs: dict[int, list[float]] = field(default_factory=dict)  # step → the diffs recorded, in block order
    nonfinite_steps: list[int] = field(default_factory=list)  # steps where a block's values were not finite


@dataclass
class PruneRegion:
    config: CacheConfig
    blocks: list[torch.nn.Module]
    pattern: int
    branches: list[PruneBranch] = field(default_factory=lambda: [PruneBranch(), PruneBranch()])
    dyn: DynStats = field(default_factory=DynStats)
    shapes: tuple = ()

    @property
    def prunable(self) -> set[int]:
        return set(self.config.prunable(len(self.blocks)))


class EagerDBPrune(EagerDBCache):
    """The DBPrune reference, applied to `model` in place (until `remove()`): like cache-dit, each prunable
    block compares its input hidden stream with its input at the last step it was computed, and when pruned
    adds its cached residuals (hidden, and the encoder stream where the block carries one) to its inputs.

    Args as `EagerDBCache`; the configs are `DBPruneConfig`s.
    """

    def __init__(self, model: torch.nn.Module, regions: Sequence[tuple[Sequence[str], CacheConfig, int]],
                 timestep_arg: str = "timestep", cfg_mode: bool | None = None) -> None:
        super().__init__(model, [], timestep_arg, cfg_mode)
        for names, config, pattern in regions:
            blocks = [b for name in names for b in model.get_submodule(name)]
            if not config.prunable(len(blocks)):
                raise ValueError(f"no prunable block in the {len(blocks)} blocks of {names}")
            region = PruneRegion(config, blocks, pattern)
            self.regions.append(region)
            for i, block in enumerate(blocks):
                self._originals.append((block, "forward", block.__dict__.get("forward")))
                block.forward = self._wrap_prune(region, i, block.forward)

    def _start_call(self, new_generation: bool) -> None:
        if new_generation:
            for r in self.regions:
                r.branches, r.dyn = [PruneBranch(), PruneBranch()], DynStats()

    # ---- stats (of the first region unless given) ----
    def pruned_blocks(self, branch: int = 0, region: int = 0) -> list[int]:
        return self.regions[region].branches[branch].pruned_blocks

    def pruned(self, branch: int = 0, region: int = 0) -> dict[int, list[int]]:
        return self.regions[region].branches[branch].pruned

    def block_diffs(self, branch: int = 0, region: int = 0) -> dict[int, list[float]]:
        return self.regions[region].branches[branch].diffs

    def nonfinite_steps(self, branch: int = 0, region: int = 0) -> list[int]:
        return self.regions[region].branches[branch].nonfinite_steps

    def pruned_ratio(self, branch: int = 0, region: int = 0) -> float | None:
        r = self.regions[region]
        calls = r.branches[branch].pruned_blocks
        return sum(calls) / (len(calls) * len(r.blocks)) if calls else None

    def _wrap_prune(self, region: PruneRegion, i: int, forward):
        def run(*args, **kwargs):
            h, e = self._streams(region, args, kwargs)
            ctx = self.ctx
            if i == 0:
                shape = tuple(h.shape)  # as EagerDBCache: a shape not among the last two starts the branch over
                if region.shapes and shape not in region.shapes:
                    region.branches[ctx.branch] = PruneBranch()
                if not region.shapes or region.shapes[-1] != shape:
                    region.shapes = (*region.shapes[-1:], shape)
                self._begin_call(region)
            st = region.branches[ctx.branch]
            if i in region.prunable:
                prune, restart = self._decide_block(region, st, i, h)
                blk = st.blocks.get(i)
                if prune:
                    gap = float(ctx.step - blk.counters.last_computed)
                    h2 = self._forecast(region, blk, 0, h, gap)
                    e2 = self._forecast(region, blk, 1, e, gap) if e is not None and blk.factors[1] is not None else e
                    out = self._pack(region, h2, e2)
                    bad = False
                else:
                    out = forward(*args, **kwargs)
                    ho, eo = self._unpack(region, out)
                    res = (ho - h, eo - e if eo is not None and e is not None else None)
                    bad = restart or any(r is not None and not bool(torch.isfinite(r).all()) for r in res)
                    if not bad:
                        blk = blk or BranchState()
                        before = blk.counters
                        update_stacks(region.config, blk, res, ctx.step, before)
                        blk.counters = update_counters(before, False, ctx.step, region.config.valid_order)
                        st.inputs[i], st.blocks[i] = h, blk
                # nothing non-finite is kept (a residual, a divided difference, a FoCa forecast): the next call
                # computes the block
                if bad or (blk is not None and any(f is not None and not bool(torch.isfinite(f).all()) for f in blk.factors)):
                    st.inputs.pop(i, None)
                    st.blocks.pop(i, None)
                    if ctx.step not in st.nonfinite_steps:
                        st.nonfinite_steps.append(ctx.step)
            else:
                out = forward(*args, **kwargs)
            if i == len(region.blocks) - 1:
                st.pruned_blocks.append(st.counters.call_pruned)
            return out

        return run

    def _begin_call(self, region: PruneRegion) -> None:
        """cache-dit's `mark_step_begin`: a step right after a step with no pruned block breaks the streak."""
        ctx, st = self.ctx, region.branches[self.ctx.branch]
        c = st.counters
        st.counters = dataclasses.replace(c, n_cont=c.n_cont if c.last_cached == ctx.step - 1 else 0,
                                          call_pruned=0)
        if ctx.branch == 0 and (region.dyn.gen, region.dyn.step) != (ctx.gen, ctx.step):
            region.dyn = DynStats(ctx.gen, ctx.step)

    def _decide_block(self, region: PruneRegion, st: PruneBranch, i: int, h: torch.Tensor) -> tuple[bool, bool]:
        """(prune, restart): restart when the block's input or its consulted diff is not finite (it computes
        and keeps nothing; cache-dit computes too, as its NaN diff never passes, but stores the values)."""
        ctx, c = self.ctx, st.counters
        thr = prune_threshold(region.config, region.dyn, ctx.gen, ctx.step)
        prev = st.inputs.get(i)
        diff: list[float] = []
        prune, consulted = should_prune(region.config, c, ctx.step, prev is not None, thr,
                                        lambda: diff.append(rel_l1(prev, h)) or diff[0])
        restart = not bool(torch.isfinite(h).all()) or (consulted and thr < 1 and not math.isfinite(diff[0]))
        prune = prune and not restart
        if consulted:
            value = -1.0 if thr >= 1 else diff[0]  # what cache-dit records
            st.diffs.setdefault(ctx.step, []).append(value)
            dyn = region.dyn
            if ctx.branch == 0:
                if dyn.n < PRUNE_DYN_DIFFS and value > 0:
                    dyn.total, dyn.count = dyn.total + value, dyn.count + 1
                dyn.n += 1
        if prune:
            first = c.call_pruned == 0
            st.counters = dataclasses.replace(c, n_cached=c.n_cached + first, n_cont=c.n_cont + first,
                                              last_cached=ctx.step, call_pruned=c.call_pruned + 1)
            if first:
                st.cached_steps.append(ctx.step)
            st.pruned.setdefault(ctx.step, []).append(i)
        return prune, restart
