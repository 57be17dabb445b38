"""Fused kernels of the cache region, as custom ops (Triton on CUDA, torch ops elsewhere)."""

from .ops import rel_l1_diff, taylor_forecast, taylor_update

__all__ = ["rel_l1_diff", "taylor_forecast", "taylor_update"]
