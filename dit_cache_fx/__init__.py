"""dit_cache_fx: step caching for Diffusion Transformers, done as a torch.compile graph rewrite.

    pipe.transformer = dit_cache_fx.compile(pipe.transformer, cache="F8B0")
"""

from .api import BranchStats, CacheSummary, ExplainReport, compile, configure, explain, reset, summary
from .backend import NoBlockRunError
from .config import CacheConfig
from .passes.plan import CachePlanError

__all__ = [
    "BranchStats",
    "CacheConfig",
    "CachePlanError",
    "CacheSummary",
    "ExplainReport",
    "NoBlockRunError",
    "compile",
    "configure",
    "explain",
    "reset",
    "summary",
]
__version__ = "0.1.0"
