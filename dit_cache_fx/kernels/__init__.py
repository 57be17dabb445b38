"""Fused kernels of the cache region as custom ops (Triton on CUDA, plain torch ops elsewhere).

    torch.ops.dit_cache_fx.rel_l1_diff(prev, cur)                      -> 0-dim fp32
    torch.ops.dit_cache_fx.taylor_update(factors, value, gap, n_valid)  -> new [K+1, ...] stack
    torch.ops.dit_cache_fx.taylor_forecast(base, factors, k)            -> base + Taylor forecast
"""

from .ops import rel_l1_diff, taylor_forecast, taylor_update

__all__ = ["rel_l1_diff", "taylor_forecast", "taylor_update"]
