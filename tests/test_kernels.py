"""Kernels: Triton bodies under TRITON_INTERPRET=1 against float64 (subprocess, so the interpreter flag does
not leak into other tests), opcheck, torch.compile on CPU, and the TaylorSeer worked example."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dit_cache_fx
from dit_cache_fx.kernels import rel_l1_diff, taylor_forecast, taylor_update

HERE = Path(__file__).parent


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_triton_kernels_under_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    pkg_root = str(Path(dit_cache_fx.__file__).parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([pkg_root, env.get("PYTHONPATH", "")])
    r = subprocess.run([sys.executable, str(HERE / "_triton_interpret_checks.py")], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "interpreter checks passed" in r.stdout


def _args():
    g = torch.Generator().manual_seed(3)
    prev, cur = torch.randn(3, 5, 7, generator=g), torch.randn(3, 5, 7, generator=g)
    f = torch.randn(3, 3, 5, 7, generator=g)
    return {
        "rel_l1_diff": (prev, cur),
        "taylor_update": (f, cur, torch.tensor(2.0), torch.tensor(1)),
        "taylor_forecast": (cur, f, torch.tensor(3.0)),
    }


@pytest.mark.parametrize("name", ["rel_l1_diff", "taylor_update", "taylor_forecast"])
def test_opcheck(name):
    torch.library.opcheck(getattr(torch.ops.dit_cache_fx, name).default, _args()[name])


@pytest.mark.parametrize("name", ["rel_l1_diff", "taylor_update", "taylor_forecast"])
def test_compiles_without_graph_breaks(name):
    from torch._dynamo.utils import counters

    fn = {"rel_l1_diff": rel_l1_diff, "taylor_update": taylor_update, "taylor_forecast": taylor_forecast}[name]
    args = _args()[name]
    out = torch.compile(fn, fullgraph=True)(*args)
    torch.testing.assert_close(out, fn(*args))
    assert len(counters["graph_break"]) == 0


def test_rel_l1_diff_value():
    prev = torch.tensor([1.0, -2.0, 3.0, -4.0])
    cur = torch.tensor([1.5, -2.0, 2.0, -4.0])
    assert rel_l1_diff(prev, cur).item() == pytest.approx(1.5 / 10)
    assert rel_l1_diff(prev.bfloat16(), cur.bfloat16()).dtype == torch.float32


def test_taylor_worked_example_through_ops():
    """Y(s) = s² computed at s = 0..4: order 1 forecasts 23 at s=5, order 2 forecasts 24 (cache-dit §4.2)."""
    for order, want in ((1, 23.0), (2, 24.0)):
        f, n_valid = torch.zeros(order + 1, 1), 0
        for s in range(5):
            f = taylor_update(f, torch.tensor([float(s * s)]), torch.tensor(1.0), torch.tensor(n_valid))
            n_valid = min(n_valid + 1, order + 1)
        assert taylor_forecast(torch.zeros(1), f, torch.tensor(1.0)).item() == want


def test_bad_shapes_named():
    with pytest.raises(ValueError, match="shapes differ"):
        rel_l1_diff(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match=r"factors must have shape \[K\+1"):
        taylor_forecast(torch.zeros(3), torch.zeros(2, 4), torch.tensor(1.0))
