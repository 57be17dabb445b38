"""dit_cache_fx: step caching for Diffusion Transformers, done as a torch.compile graph rewrite.

    pipe.transformer = dit_cache_fx.compile(pipe.transformer, cache="F1B0_R0.12")

The public names load on first use (PEP 562), so `import dit_cache_fx` and the CLI's `--help` do not
import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import compile, configure, release, reset, wait_compiled
    from .config import CacheConfig, DBPruneConfig, RunSpecs
    from .errors import (
        CachePlanError,
        DitCacheError,
        InferenceOnlyError,
        NoBlockRunError,
        OffloadError,
        ShapeChangedError,
        UnsupportedTorchError,
        UnsupportedWeightsError,
    )
    from .explain import ExplainReport, explain
    from .summary import BranchStats, CacheSummary, RegionSummary, summary

_EXPORTS = {
    "compile": "api", "configure": "api", "release": "api", "reset": "api", "wait_compiled": "api",
    "CacheConfig": "config", "DBPruneConfig": "config", "RunSpecs": "config",
    "CachePlanError": "errors", "DitCacheError": "errors", "InferenceOnlyError": "errors", "NoBlockRunError": "errors",
    "OffloadError": "errors", "ShapeChangedError": "errors", "UnsupportedWeightsError": "errors",
    "UnsupportedTorchError": "errors",
    "ExplainReport": "explain", "explain": "explain",
    "BranchStats": "summary", "CacheSummary": "summary", "RegionSummary": "summary", "summary": "summary",
}
__all__ = [
    "BranchStats", "CacheConfig", "CachePlanError", "CacheSummary", "DBPruneConfig", "DitCacheError", "ExplainReport",
    "InferenceOnlyError", "NoBlockRunError", "OffloadError", "RegionSummary", "RunSpecs", "ShapeChangedError", "UnsupportedTorchError", "UnsupportedWeightsError",
    "compile",
    "configure", "explain", "release", "reset", "summary", "wait_compiled",
]
__version__ = "0.2.0"


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dit_cache_fx' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # after the submodule import, which bound the module under the same name
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
