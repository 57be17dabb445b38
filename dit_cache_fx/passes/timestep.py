"""Analysis only: which graph input is the model's timestep.

It is the input that feeds the timestep embedding: a small tensor (0-d or one value per sample, or per
token) from which the graph computes a sinusoidal embedding (`sin`/`cos` of the timestep times
frequencies), whatever it is called (`timestep`, `timesteps`, `t`, `sigma`), float or integer, scaled or
not. RoPE position ids also reach `sin`/`cos`, and so does a guidance scale: among several candidates the
one named like a timestep wins, then the one with fewer dimensions, then the earliest argument. A model
without a sinusoidal embedding falls back to an input named like a timestep.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.fx import GraphModule, Node

from .graph_utils import placeholders, value_of

NAME_HINTS = ("timestep", "timesteps", "t", "sigma", "sigmas", "time", "times")
_TRIG = {torch.sin, torch.cos, "sin", "cos"}
_MAX_DEPTH = 40


def feeds_sinusoid(p: Node) -> bool:
    """Does a sin/cos node descend from `p` within a few ops?"""
    frontier, seen = [p], {p}
    for _ in range(_MAX_DEPTH):
        nxt = []
        for n in frontier:
            for u in n.users:
                if u.target in _TRIG:
                    return True
                if u not in seen:
                    seen.add(u)
                    nxt.append(u)
        frontier = nxt
        if not frontier:
            break
    return False


def find_timestep(gm: GraphModule, input_name: Callable[[Node], str | None], signature: Sequence[str] = (),
                  override: str | None = None) -> Node | None:
    """The timestep placeholder, or None.

    Args:
        input_name: the model-argument name a placeholder comes from (None for parameters, buffers and
            values that are not model inputs).
        signature: the model's argument names in order (ranks candidates).
        override: `CacheConfig.timestep_arg`: take the input of that name.
    """
    inputs = [p for p in placeholders(gm) if input_name(p) is not None and isinstance(value_of(p), torch.Tensor)]
    if override is not None:
        return next((p for p in inputs if input_name(p) == override), None)
    candidates = [p for p in inputs if value_of(p).dim() <= 2 and feeds_sinusoid(p)]
    if not candidates:  # no sinusoidal embedding (e.g. a toy model): an input named like a timestep
        candidates = [p for p in inputs if input_name(p) in NAME_HINTS]
    if not candidates:
        return None
    order = {name: i for i, name in enumerate(signature)}

    def rank(p: Node) -> tuple:
        name = input_name(p)
        return (name not in NAME_HINTS and "time" not in name, value_of(p).dim() > 1, order.get(name, len(order)))

    return min(candidates, key=rank)
