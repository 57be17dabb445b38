"""The eager reference: DBCache (+ TaylorSeer) written plainly, the oracle every test compares with.

It knows nothing of graphs. Like cache-dit, it is told which block lists form the run and their
forward pattern, wraps each block's forward, and decides in Python after the Fn blocks:

    H_entry ─ Fn blocks ─ H_fn ── decide(|R_fn − anchor| / |anchor| < R, warmup, M, MC) ──┐
                                   computed: Mn blocks, store R = H_m − H_fn (Taylor update) │
                                   cached:   H_m ≈ H_fn + R (or its Taylor forecast)         │
                                 ─ Bn blocks ─ output ◄──────────────────────────────────────┘

Semantics are cache-dit's with the fixes listed in the README (MC counts consecutive cached steps,
no sentinel diffs, a new generation is detected from the timestep).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .config import CacheConfig


@dataclass
class BranchState:
    n_cached: int = 0
    n_cont: int = 0
    anchor: torch.Tensor | None = None  # Fn residual of the last computed step
    last_computed: int = 0
    factors: list[torch.Tensor | None] = field(default_factory=list)  # per stream: stacked Taylor factors
    n_valid: int = 0
    cached_steps: list[int] = field(default_factory=list)
    diffs: dict[int, float] = field(default_factory=dict)


class Policy:
    """Step counting, CFG branches, new generations and the cache decision (cache-dit order)."""

    def __init__(self, config: CacheConfig) -> None:
        self.config = config
        self.ncalls = 0
        self.last_t = math.nan
        self.last_t0 = math.nan
        self.last_branch = 0
        self.cfg_seen = False
        self.step = -1
        self.generation = 0
        self.reset_requested = False
        self.branches = [BranchState(), BranchState()]

    def begin_call(self, t: float) -> tuple[int, int]:
        """Returns (step, branch) of this call."""
        mode = self.config.enable_separate_cfg
        has_last = self.ncalls > 0
        repeat = has_last and t == self.last_t
        cfg_on = mode is True or (mode is None and self.cfg_seen)
        expect_uncond = cfg_on and has_last and self.last_branch == 0
        detect = mode is None and not self.cfg_seen and repeat and self.ncalls == 1
        uncond = expect_uncond if mode is True else (expect_uncond and repeat) or detect
        new_gen = self.reset_requested or not has_last or (not uncond and not t < self.last_t0)
        if new_gen:
            self.ncalls, self.step, self.cfg_seen, self.reset_requested = 0, 0, False, False
            self.generation += 1
            self.branches = [BranchState(), BranchState()]
        elif not uncond:
            self.step += 1
        self.cfg_seen = self.cfg_seen or detect
        self.ncalls += 1
        self.last_branch = int(uncond)
        self.last_t = t
        if not uncond:
            self.last_t0 = t
        return self.step, int(uncond)

    def decide(self, branch: int, fn_res: torch.Tensor) -> bool:
        c, s, st = self.config, self.step, self.branches[branch]
        in_warmup = s < c.effective_warmup and s % c.warmup_interval == 0
        mask = c.steps_computation_mask or ()
        must_compute = s < len(mask) and mask[s] == 1
        static_cache = (s < len(mask) and mask[s] == 0 and c.steps_computation_policy == "static"
                        and st.anchor is not None)
        consulted = (not in_warmup and not must_compute and not static_cache and st.anchor is not None
                     and not (c.max_cached_steps >= 0 and st.n_cached >= c.max_cached_steps)
                     and not (c.max_continuous_cached_steps >= 0 and st.n_cont >= c.max_continuous_cached_steps)
                     and c.residual_diff_threshold > 0)
        cached = static_cache
        if consulted:
            prev = st.anchor.float()
            diff = ((prev - fn_res.float()).abs().mean() / prev.abs().mean()).item()
            st.diffs[s] = diff
            cached = diff < c.residual_diff_threshold or c.residual_diff_threshold >= 1
        if cached:
            st.n_cached += 1
            st.n_cont += 1
            st.cached_steps.append(s)
        else:
            st.n_cont = 0
            st.anchor = fn_res
        return cached


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


class EagerDBCache:
    """Apply the reference cache to `model` in place (until `remove()`).

    Args:
        blocks: attribute names of the block lists that form the run, in call order.
        pattern: cache-dit's ForwardPattern of the blocks (0: returns (h, e); 1: (e, h); 2, 3: h).
    """

    def __init__(self, model: torch.nn.Module, config: CacheConfig, blocks: Sequence[str], pattern: int,
                 timestep_arg: str = "timestep") -> None:
        self.config, self.pattern = config, pattern
        self.policy = Policy(config)
        self.blocks = [b for name in blocks for b in getattr(model, name)]
        N, Fn, Bn = len(self.blocks), config.Fn_compute_blocks, config.Bn_compute_blocks
        if Fn + Bn >= N:
            raise ValueError(f"Fn + Bn = {Fn + Bn} >= {N} blocks")
        self.first_mn, self.last_mn = Fn, N - Bn - 1
        self._handles = [model.register_forward_pre_hook(self._begin, with_kwargs=True)]
        self._originals = []
        for i, block in enumerate(self.blocks):
            self._originals.append((block, block.__dict__.get("forward")))
            block.forward = self._wrap(i, block.forward)
        self.timestep_arg = timestep_arg
        self._branch = 0
        self._cached = False

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        for block, fwd in self._originals:  # leave the blocks exactly as found (compiled code guards on it)
            if fwd is None:
                del block.forward
            else:
                block.forward = fwd

    def reset(self) -> None:
        self.policy.reset_requested = True

    # ---- stats ----
    def cached_steps(self, branch: int = 0) -> list[int]:
        return self.policy.branches[branch].cached_steps

    def residual_diffs(self, branch: int = 0) -> dict[int, float]:
        return self.policy.branches[branch].diffs

    # ---- hooks ----
    def _begin(self, module, args, kwargs):
        bound = inspect.signature(module.forward).bind_partial(*args, **kwargs).arguments
        t = bound.get(self.timestep_arg, kwargs.get(self.timestep_arg))
        t = float(t.reshape(-1)[0].float()) if isinstance(t, torch.Tensor) else float(t)
        _, self._branch = self.policy.begin_call(t)
        self._cached = False

    def _streams(self, args, kwargs):
        h = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        if self.pattern in (0, 1, 2):
            e = kwargs["encoder_hidden_states"] if "encoder_hidden_states" in kwargs else args[1]
        else:
            e = None
        return h, e

    def _pack(self, h, e):
        return {0: (h, e), 1: (e, h)}.get(self.pattern, h)

    def _unpack(self, out):
        if self.pattern == 0:
            return out[0], out[1]
        if self.pattern == 1:
            return out[1], out[0]
        return (out[0] if isinstance(out, tuple) else out), None

    def _wrap(self, i: int, forward):
        def run(*args, **kwargs):
            st = self.policy.branches[self._branch]
            h, e = self._streams(args, kwargs)
            if self.first_mn <= i <= self.last_mn and self._cached:
                if i < self.last_mn:
                    return self._pack(h, e)  # skipped: pass the streams through
                k = float(self.policy.step - st.last_computed)
                h2 = taylor_forecast(h, st.factors[0], k)
                e2 = taylor_forecast(e, st.factors[1], k) if e is not None and st.factors[1] is not None else e
                return self._pack(h2, e2)
            if i == 0:
                self._entry = h
            if i == self.first_mn:
                self._mn_in = (h, e)
            out = forward(*args, **kwargs)
            ho, eo = self._unpack(out)
            if i == self.first_mn - 1:
                self._cached = self.policy.decide(self._branch, ho - self._entry)
            if i == self.last_mn:
                self._store(st, ho, eo)
            return out

        return run

    def _store(self, st: BranchState, ho, eo) -> None:
        gap = float(self.policy.step - st.last_computed)
        res = [ho - self._mn_in[0],
               eo - self._mn_in[1] if eo is not None and self._mn_in[1] is not None else None]
        if not st.factors:
            st.factors = [None, None]
        for k, r in enumerate(res):
            if r is None:
                st.factors[k] = None
                continue
            K = self.config.taylorseer_order if k == 0 or self.config.taylorseer_encoder else 0
            old = st.factors[k] if st.factors[k] is not None else torch.zeros((K + 1, *r.shape), dtype=r.dtype)
            st.factors[k] = taylor_update(old, r, gap, st.n_valid)
        st.n_valid = min(st.n_valid + 1, self.config.taylorseer_order + 1)
        st.last_computed = self.policy.step


def decision_string(config: CacheConfig, steps: int, diffs: Sequence[float] | float = 0.0) -> str:
    """Golden-test helper: '1' computed / '0' cached per step when the Fn residual diff is `diffs`."""
    policy = Policy(config)
    out = []
    for s in range(steps):
        policy.begin_call(float(steps - s))
        d = diffs if isinstance(diffs, float) else diffs[s]
        st = policy.branches[0]
        # a residual whose relative L1 distance to the anchor is `d`
        fn_res = torch.ones(4) if st.anchor is None else st.anchor * (1 + d)
        out.append("0" if policy.decide(0, fn_res) else "1")
    return "".join(out)
