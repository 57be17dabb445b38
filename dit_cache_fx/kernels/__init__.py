"""Fused kernels of the cache region as custom ops (Triton on CUDA, plain torch ops elsewhere).

    torch.ops.dit_cache_fx.l1_sums(prev, cur)                          -> [Σ|prev−cur|, Σ|prev|] fp32
    torch.ops.dit_cache_fx.taylor_update(factors, value, gap, n_valid)  -> new [K+1, ...] stack
    torch.ops.dit_cache_fx.taylor_forecast(base, factors, k)            -> base + Taylor forecast
"""

from .ops import l1_sums, taylor_forecast, taylor_update

__all__ = ["l1_sums", "taylor_forecast", "taylor_update"]
