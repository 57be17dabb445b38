"""`@in_graph`: the Python functions the rewritten graph calls, in one list.

Inductor's FX graph cache and AOTAutograd's cache refuse graphs that call Python functions they do not
know; `backend` marks these as cacheable under a hash of the files that define them (and of the kernels),
so a change to any of them misses the caches. Registering here is what keeps that list and that hash in
step: there is no second list to forget.
"""

from __future__ import annotations

import functools
import hashlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

F = TypeVar("F", bound=Callable)

IN_GRAPH: list[Callable] = []


def in_graph(fn: F) -> F:
    """Mark `fn` as called from compiled graphs, directly or by another in-graph function (pure tensor code,
    no Python state)."""
    IN_GRAPH.append(fn)
    return fn


@functools.cache
def source_version() -> str:
    """Hash of torch's version, the modules defining `IN_GRAPH` functions and the kernels."""
    from .. import kernels

    files = {Path(sys.modules[fn.__module__].__file__) for fn in IN_GRAPH}
    files |= set(Path(kernels.__file__).parent.glob("*.py"))
    h = hashlib.sha256(torch.__version__.encode())
    for f in sorted(files):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return "dit_cache_fx-" + h.hexdigest()[:16]
