"""dit_cache_fx: step caching for Diffusion Transformers, done as a torch.compile graph rewrite.

    pipe.transformer = dit_cache_fx.compile(pipe.transformer, cache="F1B0_R0.12")
"""

from .api import compile, configure, release, reset
from .config import CacheConfig, RunSpecs
from .errors import CachePlanError, DitCacheError, NoBlockRunError, ShapeChangedError
from .explain import ExplainReport, explain
from .summary import BranchStats, CacheSummary, RegionSummary, summary

__all__ = [
    "BranchStats",
    "CacheConfig",
    "CachePlanError",
    "CacheSummary",
    "DitCacheError",
    "ExplainReport",
    "NoBlockRunError",
    "RegionSummary",
    "RunSpecs",
    "ShapeChangedError",
    "compile",
    "configure",
    "explain",
    "release",
    "reset",
    "summary",
]
__version__ = "0.2.0"
