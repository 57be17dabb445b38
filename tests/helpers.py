"""Shared test helpers: choosing thresholds, comparing runs, counting compiles."""

from __future__ import annotations

import torch

import dit_cache_fx
from dit_cache_fx.reference import EagerDBCache

from tiny_models import TinyModel, run_loop


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def max_rel_err(outs: list[torch.Tensor], refs: list[torch.Tensor]) -> float:
    assert len(outs) == len(refs)
    return max(rel_err(a, b) for a, b in zip(outs, refs))


def toy_loop(model, steps: int = 8, call=None, dt: float = 110.0, euler: bool = False, seed: int = 1) -> list[torch.Tensor]:
    """The toy models' denoising loop (tests/toy.py): latents [1, 8, 16] drawn from `seed`, timesteps
    1000 − dt·s, no grad; `call(model, x, t, s)` for a model that takes more inputs (default `model(x, t)`);
    with `euler` each output moves the latents (x −= out / steps), else the latents stay fixed."""
    x = torch.randn(1, 8, 16, generator=torch.Generator().manual_seed(seed))
    call = call or (lambda m, x, t, s: m(x, t))
    outs = []
    with torch.no_grad():
        for s in range(steps):
            out = call(model, x, torch.tensor([1000.0 - dt * s]), s)
            outs.append(out)
            if euler:
                x = x - out / steps
    return outs


def oracle_run(model, m: TinyModel, config: dit_cache_fx.CacheConfig, steps: int = 28, cfg: bool = False):
    ora = EagerDBCache.single(model, config, m.blocks, m.pattern)
    try:
        outs = run_loop(model, m, steps=steps, cfg=cfg)
    finally:
        ora.remove()
    return outs, ora


def pick_threshold(model, m: TinyModel, config: dit_cache_fx.CacheConfig, steps: int = 28, cfg: bool = False):
    """A threshold at which the oracle caches some but not all steps, with every consulted diff at least
    0.5% away from it (so compiled-vs-eager rounding cannot flip a decision)."""
    _, ora = oracle_run(model, m, config.replace(residual_diff_threshold=0.999), steps, cfg)
    diffs = sorted(ora.residual_diffs().values())
    assert diffs, "no diffs recorded"
    for q in (0.5, 0.4, 0.6, 0.3, 0.7, 0.2, 0.8):
        thr = diffs[int(q * (len(diffs) - 1))] * 1.01
        c = config.replace(residual_diff_threshold=thr)
        _, ora = oracle_run(model, m, c, steps, cfg)
        seen = [d for b in (0, 1) for d in ora.residual_diffs(b).values()]
        cached = ora.cached_steps(0)
        if 0 < len(cached) < steps and all(abs(d - thr) > 5e-3 * thr for d in seen):
            return thr
    raise AssertionError(f"no safe threshold found among diffs {diffs}")


def handle(module) -> dit_cache_fx.handle.CacheHandle:
    return dit_cache_fx.api.handle_of(module)


def n_states(module) -> int:
    """Per-shape region states allocated so far."""
    return len(handle(module).store.states())
