"""Cache state as tensors, and the in-graph step logic that reads and updates it.

The functions `decide`, `pick` and `store` are called from the rewritten graph (they are traced by
AOTAutograd like any torch code), so every decision is tensor math: no `.item()`, no Python branch on
data, nothing Dynamo could guard on. State lives in a few tensors passed to the compiled graph as
extra inputs and updated in place.

Per graph:  ctl   int64[CTL]    counters (layout below)
            tst   float32[2]    last timestep seen, last timestep of branch 0
            prm   float32[9]    policy: threshold, W (cut by the mask), I, M, MC, cfg mode (-1 auto, 0 off,
                                 1 on), Taylor order K, mask length, static mask policy
            mask  float32[1024] steps computation mask (1 compute, 0 cache allowed), zero-padded
            log   float32[L, 6] ring buffer of per-call records: gen, step, branch, cached, consulted, diff
Per branch (CFG cond = 0, uncond = 1): anchor float[2, *hidden]  the Fn residual of the last computed step
            and per cached stream a factor stack float[2, K+1, *stream] (K = TaylorSeer order; K=0: the residual)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .config import MAX_MASK_STEPS, CacheConfig

# ctl layout
NCALLS, LAST_BRANCH, CFG_SEEN, STEP, GEN, RESET, LOGPOS = range(7)
N_CACHED, N_CONT, HAS_PREV, LAST_COMPUTED, N_VALID = 7, 9, 11, 13, 15  # each [2], per branch
CTL = 17
LOG_LEN = 4096
LOG_COLS = ("gen", "step", "branch", "cached", "consulted", "diff")


def params_tensor(cfg: CacheConfig, device: torch.device) -> torch.Tensor:
    mode = {None: -1.0, False: 0.0, True: 1.0}[cfg.enable_separate_cfg]
    mask_len = len(cfg.steps_computation_mask or ())
    static = float(cfg.steps_computation_policy == "static")
    return torch.tensor([cfg.residual_diff_threshold, cfg.effective_warmup, cfg.warmup_interval,
                         cfg.max_cached_steps, cfg.max_continuous_cached_steps, mode, cfg.taylorseer_order,
                         mask_len, static], dtype=torch.float32, device=device)


def mask_tensor(cfg: CacheConfig, device: torch.device) -> torch.Tensor:
    """The steps computation mask, zero-padded to MAX_MASK_STEPS (entries past `mask_len` are unused)."""
    out = torch.zeros(MAX_MASK_STEPS, dtype=torch.float32, device=device)
    if cfg.steps_computation_mask:
        out[: len(cfg.steps_computation_mask)] = torch.tensor(cfg.steps_computation_mask, dtype=torch.float32)
    return out


def _rel_l1(prev: torch.Tensor, cur: torch.Tensor) -> torch.Tensor:
    from .kernels import rel_l1_diff

    return rel_l1_diff(prev, cur)


def decide(ctl: torch.Tensor, tst: torch.Tensor, prm: torch.Tensor, mask: torch.Tensor, anchor: torch.Tensor,
           log: torch.Tensor, timestep: torch.Tensor, fn_entry: torch.Tensor, fn_out: torch.Tensor):
    """One call's bookkeeping: branch, new generation, and whether to serve Mn from the cache.

    Returns (use_cache: bool[], branch: int64[], dt: float32[] steps since the branch's last
    computed step, n_valid: int64[] valid Taylor factors of the branch before this step).
    """
    t = timestep.reshape(-1)[0].to(torch.float32)
    thr, W, interval, M, MC, mode, K, mask_len, static = prm.unbind()
    has_last = ctl[NCALLS] > 0
    repeat = has_last & (t == tst[0])
    cfg_on = (mode == 1) | ((mode < 0) & (ctl[CFG_SEEN] > 0))
    expect_uncond = cfg_on & has_last & (ctl[LAST_BRANCH] == 0)
    detect = (mode < 0) & (ctl[CFG_SEEN] == 0) & repeat & (ctl[NCALLS] == 1)
    uncond = torch.where(mode == 1, expect_uncond, (expect_uncond & repeat) | detect)
    # a cond call whose timestep does not move forward (timesteps decrease) starts a new generation
    new_gen = (ctl[RESET] > 0) | ~has_last | (~uncond & ~(t < tst[1]))
    keep = (~new_gen).long()
    b = uncond.long()
    step = torch.where(new_gen, 0, torch.where(uncond, ctl[STEP], ctl[STEP] + 1))

    per = ctl[N_CACHED:CTL].view(5, 2) * keep  # per-branch counters, zeroed on a new generation
    n_cached, n_cont, has_prev, last_comp, n_valid = (x.gather(0, b.view(1)).squeeze(0) for x in per.unbind())

    fn_res = fn_out - fn_entry
    prev = anchor.index_select(0, b.view(1)).squeeze(0)
    diff = _rel_l1(prev, fn_res)
    in_warmup = (step < W) & (torch.remainder(step, interval.long()) == 0)
    in_mask = step < mask_len
    m = mask.gather(0, torch.clamp(step, max=mask.shape[0] - 1).view(1)).squeeze(0)
    must_compute = in_mask & (m > 0)
    static_cache = in_mask & (m == 0) & (static > 0) & (has_prev > 0)  # a fixed schedule: no diff, no caps
    consulted = (~in_warmup & ~must_compute & ~static_cache & (has_prev > 0) & ~((M >= 0) & (n_cached >= M))
                 & ~((MC >= 0) & (n_cont >= MC)) & (thr > 0))
    use_cache = static_cache | (~in_warmup & consulted & ((diff < thr) | (thr >= 1)))
    cached = use_cache.long()

    # ---- state updates (in place) ----
    anchor.index_copy_(0, b.view(1), torch.where(use_cache, prev, fn_res).unsqueeze(0).to(anchor.dtype))
    new_vals = torch.stack([n_cached + cached, (n_cont + 1) * cached, has_prev | (1 - cached),
                            torch.where(use_cache, last_comp, step),
                            torch.where(use_cache, n_valid, torch.clamp(n_valid + 1, max=K.long() + 1))])
    per.scatter_(1, b.view(1, 1).expand(5, 1), new_vals.view(5, 1))
    dt = (step - last_comp).to(torch.float32)
    head = torch.stack([torch.where(new_gen, 1, ctl[NCALLS] + 1), b, torch.where(new_gen, 0, ctl[CFG_SEEN]) | detect.long(),
                        step, ctl[GEN] + new_gen.long(), torch.zeros_like(ctl[RESET]), ctl[LOGPOS] + 1])
    pos = torch.remainder(ctl[LOGPOS], log.shape[0])
    row = torch.stack([(ctl[GEN] + new_gen.long()).float(), step.float(), b.float(), cached.float(),
                       consulted.float(), torch.where(consulted, diff.float(), torch.nan)])
    log.index_copy_(0, pos.view(1), row.view(1, -1))
    ctl.copy_(torch.cat([head, per.view(-1)]))
    tst.copy_(torch.stack([t, torch.where(uncond, tst[1], t)]))
    return use_cache, b, dt, n_valid


def pick(stack: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The branch's slice of a per-branch state tensor (a copy: cond operands must not alias)."""
    return stack.index_select(0, b.view(1)).squeeze(0)


def store(stack: torch.Tensor, b: torch.Tensor, value: torch.Tensor) -> None:
    stack.index_copy_(0, b.view(1), value.unsqueeze(0).to(stack.dtype))


# ---------------------------------------------------------------------------------------------
# host side


@dataclass
class RegionState:
    """The tensors of one rewritten graph, in the order the graph takes them."""

    config: CacheConfig
    ctl: torch.Tensor
    tst: torch.Tensor
    prm: torch.Tensor
    mask: torch.Tensor
    log: torch.Tensor
    anchor: torch.Tensor
    stacks: list[torch.Tensor] = field(default_factory=list)
    description: str = ""

    @classmethod
    def allocate(cls, config: CacheConfig, hidden: tuple, streams: list[tuple], orders: list[int],
                 device) -> RegionState:
        shape, dtype = hidden
        return cls(
            config=config,
            ctl=torch.zeros(CTL, dtype=torch.int64, device=device),
            tst=torch.zeros(2, dtype=torch.float32, device=device),
            prm=params_tensor(config, device),
            mask=mask_tensor(config, device),
            log=torch.full((LOG_LEN, len(LOG_COLS)), float("nan"), dtype=torch.float32, device=device),
            anchor=torch.zeros((2, *shape), dtype=dtype, device=device),
            stacks=[torch.zeros((2, k + 1, *s), dtype=d, device=device) for (s, d), k in zip(streams, orders)],
        )

    @property
    def tensors(self) -> list[torch.Tensor]:
        return [self.ctl, self.tst, self.prm, self.mask, self.log, self.anchor, *self.stacks]

    def reset(self) -> None:
        self.ctl[RESET] = 1

    def set_policy(self, config: CacheConfig) -> None:
        self.config = config
        self.prm.copy_(params_tensor(config, self.prm.device))
        self.mask.copy_(mask_tensor(config, self.mask.device))

    def records(self) -> torch.Tensor:
        """All logged calls, oldest first (one host sync)."""
        n = int(self.ctl[LOGPOS])
        log = self.log.cpu()
        if n <= LOG_LEN:
            return log[:n]
        k = n % LOG_LEN
        return torch.cat([log[k:], log[:k]])
