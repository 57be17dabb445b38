"""The cache state, declared once: every tensor the compiled graph reads or updates.

Each state group is a dataclass whose fields are `slot(...)`s: dtype, shape rule, per-branch or not,
initial value and a one-line doc. Allocation (real or fake tensors), the flatten order, the graph's
placeholder names and the docs table (`state_table()`) are all derived from these declarations.

    StepContext   one per compiled module: which call, step, branch and generation this is
    RegionPolicy  one per cache region: the config's runtime fields as typed 0-dim tensors (configure())
    RegionState   one per cache region and input shape: per-branch counters, the Fn anchor, the Mn
                  residual / TaylorSeer factor / FoCa stacks, and a log ring buffer
    PrunePolicy   a DBPrune region's RegionPolicy plus its dynamic-threshold fields
    PruneState    one per DBPrune region and input shape: per-branch counters, each prunable block's input
                  and residuals at its last computed step, the step's diff statistics, and a log

Branches are CFG branches: 0 = cond (or no CFG), 1 = uncond.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..config import FOCA, MAX_MASK_STEPS, CacheConfig, as_prune

BRANCHES = 2
LOG_LEN = 4096
# nonfinite: the Fn residual, its diff or the stored stacks were not finite; the step computed and the region's
# stacks restarted (`policy.settle`)
LOG_COLUMNS = ("call", "gen", "step", "branch", "cached", "consulted", "diff", "nonfinite")
# a FoCa stack's rows: the two most recent residuals (computed or forecast) and the two most recent computed ones
FOCA_ROWS = ("F_k", "F_km1", "F_full", "F_full_prev")


def stack_depth(code: int) -> int:
    """Rows of a stream's `factors` stack for its calibrator code (`CacheConfig.taylor_order_for`)."""
    return len(FOCA_ROWS) if code == FOCA else code + 1


def slot(dtype: torch.dtype | None, doc: str, *, shape: Callable[[Any], tuple] = lambda d: (),
         per_branch: bool = False, per_stream: bool = False, init: float = 0) -> Any:
    """A state tensor. `dtype=None`: the dtype of the stream it mirrors. `shape(dims)` (or
    `shape(dims, k)` for a `per_stream` slot, one tensor per cached stream k); `per_branch` adds a leading
    dimension of size 2."""
    return field(metadata=dict(dtype=dtype, doc=doc, shape=shape, per_branch=per_branch, per_stream=per_stream,
                               init=init))


class StateGroup:
    """Generic allocate / flatten / name for a dataclass of `slot`s."""

    prefix: ClassVar[str]

    @classmethod
    def slots(cls) -> tuple[dataclasses.Field, ...]:
        return dataclasses.fields(cls)

    @classmethod
    def allocate(cls, device: torch.device | str, dims: Any = None, factory: Callable = torch.full):
        """A new group with every slot at its initial value. `factory(shape, value, dtype=, device=)` makes
        each tensor (`torch.full`; the backend passes a fake-mode factory for example values)."""
        def make(m: dict, shape: tuple, dtype: torch.dtype) -> Tensor:
            lead = (BRANCHES,) if m["per_branch"] else ()
            return factory(lead + tuple(shape), m["init"], dtype=dtype, device=device)

        values = {}
        for f in cls.slots():
            m = f.metadata
            if m["per_stream"]:
                values[f.name] = tuple(make(m, m["shape"](dims, k), m["dtype"] or dims.stream_dtypes[k])
                                       for k in range(len(dims.streams)))
            else:
                values[f.name] = make(m, m["shape"](dims), m["dtype"] or dims.hidden_dtype)
        return cls(**values)

    def flat(self) -> Iterator[tuple[str, Tensor]]:
        """(name, tensor) in graph-input order; a per-stream slot gives `name_0`, `name_1`, ..."""
        for f in self.slots():
            value = getattr(self, f.name)
            if f.metadata["per_stream"]:
                yield from ((f"{f.name}_{k}", t) for k, t in enumerate(value))
            else:
                yield f.name, value

    def tensors(self) -> list[Tensor]:
        return [t for _, t in self.flat()]

    def tensor(self, name: str) -> Tensor:
        """The tensor `flat()` names `name` (`factors_1`: stream 1's of a per-stream slot)."""
        for slot, t in self.flat():
            if slot == name:
                return t
        raise KeyError(f"{type(self).__name__} has no tensor {name!r}")

    def reinit(self) -> None:
        """Every slot back to its initial value, in place."""
        for f in self.slots():
            value = getattr(self, f.name)
            for t in value if f.metadata["per_stream"] else (value,):
                t.fill_(f.metadata["init"])


# ---------------------------------------------------------------------------------------------------------


@dataclass
class StepContext(StateGroup):
    """Per compiled module, updated once per call by `step.classify_call` and read by every region."""

    prefix: ClassVar[str] = "ctx"
    cfg_mode: Tensor = slot(torch.int64, "separate CFG: -1 detect, 0 off, 1 on (CacheConfig.enable_separate_cfg)",
                            init=-1)
    reset: Tensor = slot(torch.bool, "a new generation was asked for (dit_cache_fx.reset)")
    pending: Tensor = slot(torch.bool, "a call began and is not classified yet (set by the host, cleared by the "
                           "first graph that runs)")
    call: Tensor = slot(torch.int64, "calls since the module was compiled (orders log rows)")
    gen: Tensor = slot(torch.int64, "generation id of the current call (0 before the first call)")
    calls: Tensor = slot(torch.int64, "calls in the current generation")
    step: Tensor = slot(torch.int64, "denoising step of the current call (both CFG branches share it)")
    branch: Tensor = slot(torch.int64, "CFG branch of the current call: 0 cond, 1 uncond")
    cfg_seen: Tensor = slot(torch.bool, "separate CFG detected in this generation")
    last_t: Tensor = slot(torch.float32, "timestep of the previous call", init=float("nan"))
    last_cond_t: Tensor = slot(torch.float32, "timestep of the previous branch-0 call", init=float("nan"))
    direction: Tensor = slot(torch.float32, "timestep direction of this generation: 0 unknown, +1 or -1")
    hint: Tensor = slot(torch.int64, "CFG branch the pipeline named for the call (diffusers' `cache_context`): "
                        "-1 none, 0 cond, 1 uncond", init=-1)
    ambiguous: Tensor = slot(torch.bool, "a branch-0 call repeated the generation's only timestep so far: its "
                             "timesteps cannot show where one generation ends and the next begins")


@dataclass
class RegionPolicy(StateGroup):
    """Per region: the runtime fields of its CacheConfig, as typed 0-dim tensors (`configure` writes them)."""

    prefix: ClassVar[str] = "pol"
    threshold: Tensor = slot(torch.float32, "residual_diff_threshold")
    warmup: Tensor = slot(torch.int64, "max_warmup_steps, cut to the mask's leading 1s")
    interval: Tensor = slot(torch.int64, "warmup_interval", init=1)
    max_cached: Tensor = slot(torch.int64, "max_cached_steps (-1 unlimited)", init=-1)
    max_cont: Tensor = slot(torch.int64, "max_continuous_cached_steps (-1 unlimited)", init=-1)
    mask: Tensor = slot(torch.bool, "steps_computation_mask: True = always compute (zero-padded)",
                        shape=lambda d: (MAX_MASK_STEPS,))
    mask_len: Tensor = slot(torch.int64, "length of the mask (0 = none)")
    static: Tensor = slot(torch.bool, "steps_computation_policy == 'static'")

    def load(self, config: CacheConfig) -> None:
        """Write `config`'s runtime fields in place (no recompilation: the graph reads these tensors)."""
        mask = config.steps_computation_mask or ()
        self.threshold.fill_(config.residual_diff_threshold)
        self.warmup.fill_(config.effective_warmup)
        self.interval.fill_(config.warmup_interval)
        self.max_cached.fill_(config.max_cached_steps)
        self.max_cont.fill_(config.max_continuous_cached_steps)
        self.mask.zero_()
        if mask:
            self.mask[: len(mask)] = torch.tensor(mask, dtype=torch.bool)
        self.mask_len.fill_(len(mask))
        self.static.fill_(config.steps_computation_policy == "static")


@dataclass(frozen=True)
class RegionDims:
    """Concrete (or symbolic) sizes of one region's streams: what a RegionState is allocated for."""

    hidden: tuple  # shape of the hidden stream (the Fn residual)
    hidden_dtype: torch.dtype
    streams: tuple[tuple, ...]  # shape of each cached stream, region order
    stream_dtypes: tuple[torch.dtype, ...]
    orders: tuple[int, ...]  # calibrator code per stream: TaylorSeer order (0 = plain residual) or config.FOCA


@dataclass
class RegionState(StateGroup):
    """Per region and input shape. Counters are per branch and belong to generation `gen` (a branch whose
    `gen` is not the step context's starts from scratch)."""

    prefix: ClassVar[str] = "st"
    gen: Tensor = slot(torch.int64, "generation these counters belong to (-1: never used)", per_branch=True, init=-1)
    n_cached: Tensor = slot(torch.int64, "cached steps in this generation", per_branch=True)
    n_cont: Tensor = slot(torch.int64, "consecutive cached steps up to the last call", per_branch=True)
    has_anchor: Tensor = slot(torch.bool, "a computed step stored the anchor and residuals", per_branch=True)
    last_computed: Tensor = slot(torch.int64, "step of the last computed step", per_branch=True)
    n_valid: Tensor = slot(torch.int64, "valid TaylorSeer factors (0..K+1); FoCa: computed steps (0..2)",
                           per_branch=True)
    anchor: Tensor = slot(None, "Fn residual (hidden stream) of the last computed step", per_branch=True,
                          shape=lambda d: d.hidden)
    factors: tuple = slot(None, "Mn residual of stream k and its divided differences: [K+1, *stream]; FoCa: "
                          f"[{len(FOCA_ROWS)}, *stream] = {', '.join(FOCA_ROWS)}", per_branch=True, per_stream=True,
                          shape=lambda d, k: (stack_depth(d.orders[k]), *d.streams[k]))
    log: Tensor = slot(torch.float32, f"ring buffer of calls: {', '.join(LOG_COLUMNS)}",
                       shape=lambda d: (LOG_LEN, len(LOG_COLUMNS)), init=float("nan"))
    log_pos: Tensor = slot(torch.int64, "rows written to the log")

    def records(self) -> Tensor:
        """Logged calls, oldest first (one host sync)."""
        n = int(self.log_pos)
        log = self.log.cpu()
        if n <= LOG_LEN:
            return log[:n]
        k = n % LOG_LEN
        return torch.cat([log[k:], log[:k]])


COUNTERS = ("gen", "n_cached", "n_cont", "has_anchor", "last_computed", "n_valid")


# ---------------------------------------------------------------------------------------------------------
# DBPrune: one decision per prunable block (`runtime.prune`)

PRUNE_LOG_LEN = 1024
# per call of a DBPrune region: blocks pruned, diffs consulted (`log_diffs` / `log_pruned` hold each block's)
# nonfinite: blocks whose input, diff or new residuals were not finite (they computed and stored nothing)
PRUNE_LOG_COLUMNS = ("call", "gen", "step", "branch", "pruned", "consulted", "nonfinite")
PRUNE_COUNTERS = ("gen", "n_cached", "n_cont", "last_cached", "call_pruned")


@dataclass
class PrunePolicy(RegionPolicy):
    """A DBPrune region's policy: RegionPolicy's fields and the dynamic threshold's (`configure` writes them)."""

    dynamic: Tensor = slot(torch.bool, "enable_dynamic_prune_threshold")
    relax: Tensor = slot(torch.float32, "dynamic_prune_threshold_relax_ratio", init=1.25)
    max_dynamic: Tensor = slot(torch.float32, "max_dynamic_prune_threshold (NaN: 2 x threshold)", init=float("nan"))

    def load(self, config: CacheConfig) -> None:
        super().load(config)
        self.dynamic.fill_(bool(config.enable_dynamic_prune_threshold))
        self.relax.fill_(config.dynamic_prune_threshold_relax_ratio)
        cap = config.max_dynamic_prune_threshold
        self.max_dynamic.fill_(float("nan") if cap is None else cap)


@dataclass(frozen=True)
class PruneDims(RegionDims):
    """RegionDims of a DBPrune region: `hidden` is the hidden stream entering a block, `streams` the streams
    whose residuals are cached (hidden first), `blocks` the number of prunable blocks."""

    blocks: int = 1


@dataclass
class PruneState(StateGroup):
    """Per DBPrune region and input shape. Counters are per branch and belong to generation `gen`; a step
    counts as pruned (`n_cached`, `n_cont`) when at least one of its blocks was."""

    prefix: ClassVar[str] = "st"
    gen: Tensor = slot(torch.int64, "generation these counters belong to (-1: never used)", per_branch=True, init=-1)
    n_cached: Tensor = slot(torch.int64, "steps with a pruned block in this generation", per_branch=True)
    n_cont: Tensor = slot(torch.int64, "consecutive steps with a pruned block, up to this call", per_branch=True)
    last_cached: Tensor = slot(torch.int64, "the last step with a pruned block (-1: none)", per_branch=True, init=-1)
    call_pruned: Tensor = slot(torch.int64, "blocks pruned so far in the current call", per_branch=True)
    has_input: Tensor = slot(torch.bool, "the block was computed (its input and residuals are stored)",
                             per_branch=True, shape=lambda d: (d.blocks,))
    inputs: Tensor = slot(None, "input hidden stream of each prunable block at its last computed step",
                          per_branch=True, shape=lambda d: (d.blocks, *d.hidden))
    last_computed: Tensor = slot(torch.int64, "each prunable block's last computed step", per_branch=True,
                                 shape=lambda d: (d.blocks,))
    n_valid: Tensor = slot(torch.int64, "each prunable block's valid TaylorSeer factors; FoCa: its computed steps",
                           per_branch=True, shape=lambda d: (d.blocks,))
    factors: tuple = slot(None, "each prunable block's residual stack of stream k at its last computed step, as "
                          "RegionState.factors", per_branch=True, per_stream=True,
                          shape=lambda d, k: (d.blocks, stack_depth(d.orders[k]), *d.streams[k]))
    dyn_gen: Tensor = slot(torch.int64, "generation of the step's diff statistics (branch 0)", init=-1)
    dyn_step: Tensor = slot(torch.int64, "step of the diff statistics (branch 0)", init=-1)
    dyn_n: Tensor = slot(torch.int64, "diffs recorded in that step (branch 0)")
    dyn_sum: Tensor = slot(torch.float32, "sum of the positive ones among the first 5 of them")
    dyn_cnt: Tensor = slot(torch.int64, "count of the positive ones among the first 5 of them")
    log: Tensor = slot(torch.float32, f"ring buffer of calls: {', '.join(PRUNE_LOG_COLUMNS)}",
                       shape=lambda d: (PRUNE_LOG_LEN, len(PRUNE_LOG_COLUMNS)), init=float("nan"))
    log_diffs: Tensor = slot(torch.float32, "per logged call, each prunable block's recorded diff (-1: threshold "
                             ">= 1; NaN: not consulted)", shape=lambda d: (PRUNE_LOG_LEN, d.blocks), init=float("nan"))
    log_pruned: Tensor = slot(torch.bool, "per logged call, which prunable blocks were pruned",
                              shape=lambda d: (PRUNE_LOG_LEN, d.blocks))
    log_pos: Tensor = slot(torch.int64, "calls written to the log")

    def records(self) -> tuple[Tensor, Tensor, Tensor]:
        """(log, log_diffs, log_pruned) of the logged calls, oldest first (one host sync)."""
        n = int(self.log_pos)
        logs = [self.log.cpu(), self.log_diffs.cpu(), self.log_pruned.cpu()]
        if n <= PRUNE_LOG_LEN:
            return tuple(x[:n] for x in logs)
        k = n % PRUNE_LOG_LEN
        return tuple(torch.cat([x[k:], x[:k]]) for x in logs)


def policy_group(config: CacheConfig) -> type[RegionPolicy]:
    """The policy group of a region under `config`."""
    return PrunePolicy if as_prune(config) else RegionPolicy


def state_group(dims: RegionDims) -> type[StateGroup]:
    """The per-shape state group of a region of these dims."""
    return PruneState if isinstance(dims, PruneDims) else RegionState


def state_table() -> str:
    """Markdown table of every state tensor (README / docs)."""
    rows = ["| group | tensor | dtype | shape | meaning |", "|---|---|---|---|---|"]
    base = {f.name for f in RegionPolicy.slots()}
    for group in (StepContext, RegionPolicy, RegionState, PrunePolicy, PruneState):
        for f in group.slots():
            if group is PrunePolicy and f.name in base:
                continue
            m = f.metadata
            dtype = str(m["dtype"]).replace("torch.", "") if m["dtype"] else "stream's"
            shapes = {"anchor": "hidden", "factors": "K+1 or 4, stream", "log": f"{LOG_LEN}, {len(LOG_COLUMNS)}",
                      "mask": str(MAX_MASK_STEPS)}
            if group is PruneState:
                shapes = {"has_input": "P", "last_computed": "P", "n_valid": "P", "inputs": "P, hidden",
                          "factors": "P, K+1 or 4, stream",
                          "log": f"{PRUNE_LOG_LEN}, {len(PRUNE_LOG_COLUMNS)}", "log_diffs": f"{PRUNE_LOG_LEN}, P",
                          "log_pruned": f"{PRUNE_LOG_LEN}, P"}
            shape = shapes.get(f.name, "")
            shape = "[" + ", ".join(x for x in ("2" if m["per_branch"] else "", shape) if x) + "]"
            rows.append(f"| {group.__name__} | `{f.name}` | {dtype} | {shape} | {m['doc']} |")
    return "\n".join(rows)
