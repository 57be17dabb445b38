"""Dynamo graphs of the toy models for the pass tests: the graph a backend gets, its latent inputs, the passes run on it."""

import torch

from dit_cache_fx import _compat
from dit_cache_fx.config import RunSpecs
from dit_cache_fx.passes.graph_utils import placeholders, value_of
from dit_cache_fx.passes.pipeline import run_passes


def dynamo_graph(model, *args):
    """The graph Dynamo hands a backend (a recording backend keeps it)."""
    graphs = []
    torch.compile(model, backend=lambda gm, ex: graphs.append(gm) or gm.forward, fullgraph=True)(*args)
    assert len(graphs) == 1
    return _compat.copy_dynamo_graph(graphs[0])


def latents(gm, name="hidden_states"):
    return [p for p in placeholders(gm) if _compat.dynamo_source_name(p) == f"L['{name}']"]


def toy_inputs(dual=False):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 8, 16, generator=g)
    return (x, torch.randn(1, 8, 16, generator=g), torch.tensor([500.0])) if dual else (x, torch.tensor([500.0]))


def rewritten(model, spec, *args):
    gm = dynamo_graph(model, *args)
    mode = _compat.fake_mode_of([value_of(p) for p in placeholders(gm)])
    return run_passes(gm, RunSpecs.of(spec), latents(gm), mode)
