"""Kernels: the Triton bodies under the interpreter against float64 and the torch branch, lowering to GPU
code and tracing, opcheck, torch.compile on CPU, and the TaylorSeer worked example (cache-dit §4.2)."""

import importlib.util
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

import dit_cache_fx
from dit_cache_fx.kernels import l1_sums, ops, taylor_forecast, taylor_update

HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed: no Triton kernels")
# triton reads TRITON_INTERPRET when `triton.jit` decorates a function, its own standard library (tl.zeros,
# tl.sum, ...) included, i.e. at `import triton`: the interpreter cannot be switched on in a process that has
# imported triton. So the test_interp_* tests run in a child process started with the variable set.
INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
interpreter_only = pytest.mark.skipif(not INTERPRETING, reason="Triton-interpreter test: run in a subprocess "
                                      "by test_triton_kernels_under_interpreter")
not_interpreting = pytest.mark.skipif(INTERPRETING, reason="needs the JIT (not interpreted) kernels")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SHAPES = [(1,), (7,), (1000,), (4099,), (2, 17, 33)]
# the math is fp32, outputs are rounded to the dtype: one ulp is 2^-7 relative for bf16 (the triton 3.9
# interpreter truncates fp32 -> bf16, GPUs round to nearest) and 2^-10 for fp16
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float16: dict(rtol=2e-3, atol=1e-5),
       torch.bfloat16: dict(rtol=1.6e-2, atol=1e-5)}
NAN = float("nan")


def grid(values: list) -> list:
    """Parameter values of an interpreter test: all in the interpreter process, one elsewhere (where the
    test is skipped anyway, so the main run lists one skip per test function instead of the whole grid)."""
    return values if INTERPRETING else values[:1]


@pytest.fixture
def rng() -> torch.Generator:
    """Fresh random inputs in every test; the seed is printed (pytest shows it on failure)."""
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"seed={seed}")
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def tri():
    """`ops`, whose Triton launchers run the interpreted kernels on CPU tensors."""
    from triton.runtime.interpreter import InterpretedFunction

    assert isinstance(ops._triton.taylor_update_kernel, InterpretedFunction), "TRITON_INTERPRET=1 ignored"
    return ops


def _randn(shape, dtype, rng, scale=1.0):
    return (scale * torch.randn(shape, generator=rng)).to(dtype)


def _update_ref(factors, value, gap, n_valid):
    new = [value.double()]
    for i in range(factors.shape[0] - 1):
        new.append((new[-1] - factors[i].double()) / gap if i < n_valid else torch.zeros_like(new[-1]))
    return torch.stack(new)


def _forecast_ref(base, factors, k):
    terms = (factors[i].double() * k**i / math.factorial(i) for i in range(factors.shape[0]))
    return base.double() + sum(terms)


# ---------------------------------------------------------------------------------------------------------
# Triton kernels under the interpreter, against float64 and against the torch branch


@needs_triton
@pytest.mark.skipif(INTERPRETING, reason="this is the interpreter process")
def test_triton_kernels_under_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    root = str(Path(dit_cache_fx.__file__).parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "pytest", "-q", "--tb=short", "-p", "no:cacheprovider", "-k", "test_interp_",
           __file__]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    summary = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    print(summary)
    ok = r.returncode == 0 and " passed" in summary and "skipped" not in summary
    assert ok, r.stdout[-8000:] + r.stderr[-3000:]


@needs_triton
@interpreter_only
@pytest.mark.parametrize("dtype", grid(DTYPES), ids=str)
@pytest.mark.parametrize("shape", grid(SHAPES), ids=str)
def test_interp_l1_sums(tri, rng, shape, dtype):
    prev = _randn(shape, dtype, rng)
    cur = (prev.float() + _randn(shape, torch.float32, rng, 0.3)).to(dtype)
    p, c = prev.double(), cur.double()
    ref = torch.stack([(p - c).abs().sum(), p.abs().sum()])
    # the defaults (one tile per program here), then tiny tiles over 3 programs (grid-stride loop)
    for kw in (dict(), dict(block=64, max_programs=3)):
        out = tri._l1_sums_triton(prev, cur, out=torch.full((2,), NAN), **kw)
        assert out.dtype == torch.float32 and out.shape == (2,)
        assert_close(out.double(), ref, rtol=1e-5, atol=0)  # fp32 accumulation whatever the input dtype
    assert_close(tri._l1_sums_torch(prev, cur), out, rtol=1e-5, atol=0)


@needs_triton
@interpreter_only
@pytest.mark.parametrize("order", grid([0, 1, 3]))
@pytest.mark.parametrize("dtype", grid(DTYPES), ids=str)
@pytest.mark.parametrize("shape", grid(SHAPES), ids=str)
def test_interp_taylor_update(tri, rng, shape, dtype, order):
    for n_valid in range(order + 2):
        factors = _randn((order + 1, *shape), dtype, rng)
        factors[n_valid:] = NAN  # invalid factors must not be read (they are zeros in practice)
        value = _randn(shape, dtype, rng)
        gap = torch.randint(1, 4, (), generator=rng).float()
        nv = torch.tensor(n_valid, dtype=torch.int32 if n_valid % 2 else torch.int64)  # any integer dtype
        out = tri._taylor_update_triton(factors, value, gap, nv, out=torch.full_like(factors, NAN))
        assert_close(out.double(), _update_ref(factors, value, gap.item(), n_valid), **TOL[dtype])
        assert_close(tri._taylor_update_torch(factors, value, gap, nv), out, **TOL[dtype])


@needs_triton
@interpreter_only
@pytest.mark.parametrize("order", grid([0, 1, 3]))
@pytest.mark.parametrize("dtype", grid(DTYPES), ids=str)
@pytest.mark.parametrize("shape", grid(SHAPES), ids=str)
def test_interp_taylor_forecast(tri, rng, shape, dtype, order):
    base, factors = _randn(shape, dtype, rng), _randn((order + 1, *shape), dtype, rng, 0.5)
    k = torch.randint(0, 5, (), generator=rng).float()
    out = tri._taylor_forecast_triton(base, factors, k, out=torch.full_like(base, NAN))
    assert out.dtype == dtype
    assert_close(out.double(), _forecast_ref(base, factors, k.item()), **TOL[dtype])
    assert_close(tri._taylor_forecast_torch(base, factors, k), out, **TOL[dtype])


@needs_triton
@interpreter_only
def test_interp_non_contiguous_inputs(tri, rng):
    prev, cur = torch.randn(33, 17, generator=rng).t(), torch.randn(33, 17, generator=rng).t()
    factors = torch.randn(3, 33, 17, generator=rng).transpose(1, 2)
    gap, nv, k = torch.tensor(2.0), torch.tensor(3), torch.tensor(3.0)
    assert not (prev.is_contiguous() or factors.is_contiguous())
    assert_close(tri._l1_sums_triton(prev, cur), l1_sums(prev, cur))
    assert_close(tri._taylor_update_triton(factors, cur, gap, nv), _update_ref(factors, cur, 2.0, 3).float())
    assert_close(tri._taylor_forecast_triton(prev, factors, k), _forecast_ref(prev, factors, 3.0).float())


@needs_triton
@interpreter_only
def test_interp_l1_sums_zero_and_empty(tri):
    zero, one = torch.zeros(5), torch.ones(5)
    assert tri._l1_sums_triton(zero, one).tolist() == l1_sums(zero, one).tolist() == [5.0, 0.0]
    assert tri._l1_sums_triton(zero[:0], one[:0]).tolist() == l1_sums(zero[:0], one[:0]).tolist() == [0.0, 0.0]


# ---------------------------------------------------------------------------------------------------------
# what the interpreter cannot check: the kernels lower to GPU code, the launchers trace for torch.compile

# kernel: (signature, {t} = element type; constexprs). Pointers and sizes divisible by 16, as the JIT
# specializes them for most DiT activations.
_SIGNATURES = {
    "l1_sums_partial_kernel": ({"prev_ptr": "*{t}", "cur_ptr": "*{t}", "partial_ptr": "*fp32", "n": "i32"},
                               {"BLOCK": ops.BLOCK}),
    "l1_sums_finish_kernel": ({"partial_ptr": "*fp32", "out_ptr": "*fp32", "n_partial": "i32"},
                              {"BLOCK": ops.MAX_PROGRAMS}),
    "taylor_update_kernel": ({"f_ptr": "*{t}", "y_ptr": "*{t}", "gap_ptr": "*fp32", "n_valid_ptr": "*i64",
                              "out_ptr": "*{t}", "n": "i64"}, {"ORDER": 2, "BLOCK": ops.BLOCK}),
    "taylor_forecast_kernel": ({"base_ptr": "*{t}", "f_ptr": "*{t}", "k_ptr": "*fp32", "out_ptr": "*{t}",
                                "n": "i32"}, {"ORDER": 3, "BLOCK": ops.BLOCK}),
}


@needs_triton
@not_interpreting
@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("name", list(_SIGNATURES))
def test_kernel_lowers_to_cubin(name, dtype, arch, tmp_path, monkeypatch):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("TRITON_DEFAULT_FP_FUSION", "1")
    kernel = getattr(ops._triton, name)
    sig, consts = _SIGNATURES[name]
    sig = {a: t.format(t=dtype) for a, t in sig.items()} | {c: "constexpr" for c in consts}
    idx = {a: (kernel.arg_names.index(a),) for a in sig}
    aligned = {idx[a]: [["tt.divisibility", 16]] for a, t in sig.items() if t[0] == "*" or a[0] == "n"}
    src = ASTSource(kernel, sig, constexprs={idx[c]: v for c, v in consts.items()}, attrs=aligned)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32))
    assert compiled.asm["cubin"]
    assert re.search(r"ld\.global(\.\w+)*\.v[24]\.", compiled.asm["ptx"]), "aligned loads are not vectorized"


@needs_triton
@not_interpreting
@pytest.mark.parametrize("tracing_mode", ["fake", "symbolic"])
def test_launchers_trace_to_triton_kernel_nodes(tracing_mode):
    """What torch.compile does with an op body on CUDA: the launcher traces into triton_kernel_wrapper
    nodes (fake tensors, so no kernel runs), with static or symbolic shapes."""
    from torch.fx.experimental.proxy_tensor import make_fx

    x, f = torch.randn(4099), torch.randn(3, 4099)
    gap, nv, k = torch.tensor(2.0), torch.tensor(2), torch.tensor(1.0)
    launches = [(lambda p, c: ops._l1_sums_triton(p, c), (x, x), 2),
                (lambda f, y, g, n: ops._taylor_update_triton(f, y, g, n), (f, x, gap, nv), 1),
                (lambda b, f, k: ops._taylor_forecast_triton(b, f, k), (x, f, k), 1)]
    allowed = {"aten.empty.memory_format", "aten.sym_numel.default", "aten.sym_size.int"}
    for launch, args, n_kernels in launches:
        gm = make_fx(launch, tracing_mode=tracing_mode)(*args)
        targets = [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]
        assert sum("triton_kernel_wrapper" in t for t in targets) == n_kernels, gm.code
        assert {t for t in targets if t.startswith("aten.")} <= allowed, gm.code  # no torch-branch math


# ---------------------------------------------------------------------------------------------------------
# the ops: opcheck, torch.compile on CPU, TaylorSeer golden numbers, input checks

OPS = {"l1_sums": l1_sums, "taylor_update": taylor_update, "taylor_forecast": taylor_forecast}


def _op_args(name, rng, dtype=torch.float32):
    shape = (3, 5, 7)
    a, b, f = _randn(shape, dtype, rng), _randn(shape, dtype, rng), _randn((3, *shape), dtype, rng)
    return {"l1_sums": (a, b),
            "taylor_update": (f, b, torch.tensor(2.0), torch.tensor(2)),
            "taylor_forecast": (a, f, torch.tensor(3.0))}[name]


@pytest.mark.parametrize("name", list(OPS))
def test_opcheck(name, rng):
    torch.library.opcheck(getattr(torch.ops.dit_cache_fx, name).default, _op_args(name, rng))


@pytest.mark.parametrize("name", list(OPS))
def test_compiles_fullgraph_on_cpu(name, rng):
    op, args = OPS[name], _op_args(name, rng, torch.bfloat16)

    def fn(*a):
        return op(*a)

    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch.compile(fn, backend=record, fullgraph=True)(*args)
    assert len(graphs) == 1  # one graph, no breaks, and it calls the op
    targets = [n.target for n in graphs[0].graph.nodes if n.op == "call_function"]
    assert targets == [getattr(torch.ops.dit_cache_fx, name).default]
    out = torch.compile(fn, backend="inductor", fullgraph=True)(*args)
    assert_close(out, op(*args), **TOL[torch.bfloat16])


def _taylorseer_run(update, forecast, order):
    """Y(s) = s²: computed at s = 0..4 and 6, forecast at 5, 7, 8 (cache-dit §4.2, worked example)."""
    f, n_valid, last, got = torch.zeros(order + 1, 1), 0, 0, {}
    for s in range(9):
        if s in (5, 7, 8):
            got[s] = forecast(torch.zeros(1), f, torch.tensor(float(s - last))).item()
            continue
        gap = torch.tensor(float(max(s - last, 1)))
        f = update(f, torch.tensor([float(s * s)]), gap, torch.tensor(n_valid))
        n_valid, last = min(n_valid + 1, order + 1), s
    return got


def _check_worked_example(update, forecast):
    # order 1: D1 = 16 - 9 = 7 -> 23; after the gap of 2, D1 = (36 - 16) / 2 = 10 -> 46, and 56 at k = 2
    assert _taylorseer_run(update, forecast, 1) == {5: 23.0, 7: 46.0, 8: 56.0}
    # order 2: 16 + 7 + (7 - 5) / 2 = 24; after the gap, D2 = (10 - 7) / 2 -> 36 + 10 + 0.75, 36 + 20 + 3
    assert _taylorseer_run(update, forecast, 2) == {5: 24.0, 7: 46.75, 8: 59.0}


def test_taylorseer_worked_example():
    _check_worked_example(taylor_update, taylor_forecast)


@needs_triton
@interpreter_only
def test_interp_taylorseer_worked_example(tri):
    _check_worked_example(tri._taylor_update_triton, tri._taylor_forecast_triton)


def test_l1_sums_value_and_dtype():
    prev, cur = torch.tensor([1.0, -2.0, 3.0, -4.0]), torch.tensor([1.5, -2.0, 2.0, -4.0])
    assert l1_sums(prev, cur).tolist() == [1.5, 10.0]
    out = l1_sums(prev.bfloat16(), cur.bfloat16())
    assert out.dtype == torch.float32 and out.shape == (2,)


def test_bad_inputs_are_named():
    x, f, one, zero = torch.zeros(3, 4), torch.zeros(2, 3, 4), torch.tensor(1.0), torch.tensor(0)
    cases = [
        (lambda: l1_sums(x, torch.zeros(4, 3)), r"l1_sums: prev and cur must have the same shape"),
        (lambda: l1_sums(x.long(), x.long()), r"l1_sums: prev must be a floating-point tensor"),
        (lambda: taylor_update(torch.zeros(2, 3, 5), x, one, zero),
         r"taylor_update: factors must have shape \[K\+1, \*value.shape\] = \[K\+1, 3, 4\]"),
        (lambda: taylor_update(f, x, torch.tensor([1.0]), zero), r"gap must be a 0-dim floating"),
        (lambda: taylor_update(f, x, one, torch.tensor(0.0)), r"n_valid must be a 0-dim integer"),
        (lambda: taylor_forecast(x, torch.zeros(0, 3, 4), one), r"taylor_forecast: factors must have shape"),
        (lambda: taylor_forecast(x, f, torch.tensor(1)), r"taylor_forecast: k must be a 0-dim floating"),
        (lambda: taylor_forecast(x, f, one.to("meta")), r"k is on meta but the data is on cpu"),
    ]
    for call, msg in cases:
        with pytest.raises(ValueError, match=msg):
            call()
