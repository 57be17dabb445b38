"""Fused kernels of the cache region as custom ops (Triton on CUDA, plain torch ops elsewhere).

    torch.ops.dit_cache_fx.l1_sums(prev, cur)                          -> [Σ|prev−cur|, Σ|prev|] fp32
    torch.ops.dit_cache_fx.taylor_update(factors, value, gap, n_valid)  -> new [K+1, ...] stack
    torch.ops.dit_cache_fx.taylor_forecast(base, factors, k)            -> base + Taylor forecast

and FoCa's two, plain torch functions (inductor fuses each; see `ops`):

    foca_update(stack, value)                 -> new [4, ...] stack
    foca_forecast(base, stack, k, n_valid)    -> (base + FoCa forecast, new stack)
"""

from .ops import foca_forecast, foca_update, l1_sums, taylor_forecast, taylor_update

__all__ = ["foca_forecast", "foca_update", "l1_sums", "taylor_forecast", "taylor_update"]
