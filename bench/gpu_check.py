"""One prepared GPU check: the kernels, the compiled cache and the compile modes -> bench/gpu_check.md.

    python bench/gpu_check.py                        # on a CUDA machine: every section, under 8 minutes
    python bench/gpu_check.py --sections kernels     # pick sections (kernels,cache,modes)
    python bench/gpu_check.py --device cpu --smoke --out /tmp/gpu_check.md   # tiny sizes (tests/test_gpu_check.py)

Every section and every row is guarded: a failure becomes a row saying `error: ...` and the other rows
still run; rows after `--budget-s` (a soft budget for the whole run) are recorded as skipped; rows that
need CUDA say `skipped: needs CUDA` on other devices. The report is rewritten after every section, so a
run cut short still leaves what it measured. Timings: CUDA events (perf_counter on CPU) around windows
bracketed by `torch.cuda.synchronize()`, after warm-up, median of repeats.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

REPO = Path(__file__).resolve().parents[1]
SECTIONS = {"kernels": "## 1. Kernels", "cache": "## 2. The compiled cache", "modes": "## 3. Modes"}
OPS = ("l1_sums", "taylor_update", "taylor_forecast")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
FLUX_LISTS = ("transformer_blocks", "single_transformer_blocks")
NEEDS_CUDA = "skipped: needs CUDA"


# ---------------------------------------------------------------------------------------------------------
# sizes


@dataclass(frozen=True)
class ModelSize:
    heads: int
    head_dim: int
    double: int
    single: int
    img: int  # image tokens (a square grid)
    txt: int
    joint_dim: int
    pooled_dim: int
    steps: int
    repeats: int  # timed generations per variant
    dtype: torch.dtype

    @property
    def hidden(self) -> int:
        return self.heads * self.head_dim

    @property
    def blocks(self) -> int:
        return self.double + self.single

    def text(self) -> str:
        dt = str(self.dtype).removeprefix("torch.")
        return (f"FluxTransformer2DModel, hidden {self.hidden} = {self.heads} heads × {self.head_dim}, "
                f"{self.double} double + {self.single} single blocks, {self.img} image + {self.txt} text tokens, "
                f"{dt}, random weights, {self.steps}-step loop")


@dataclass(frozen=True)
class Sizes:
    name: str
    accuracy: tuple[tuple[str, tuple[int, ...]], ...]  # (label, shape) for the float64 comparison
    timing: tuple[tuple[str, tuple[int, ...], torch.dtype], ...]  # (label, shape, dtype) for GB/s
    block: ModelSize  # one transformer block of this size, against l1_sums on its (img + txt) stream
    model: ModelSize  # section 2
    modes_model: ModelSize  # section 3 (compiled once per mode, in a child process)
    order: int = 2  # TaylorSeer order K of the kernel cases
    kernel_repeats: int = 10
    kernel_inner: int = 5
    budget_s: float = 420.0
    child_timeout_s: float = 300.0


FLUX_TOKENS = (1, 4096 + 512, 3072)  # FLUX.1 at 1024²: the largest stream a Flux region sees
VIDEO_TOKENS = (1, 75_600, 5_120)  # Wan 2.1 14B at 720p, 81 frames

FULL = Sizes(
    name="full",
    accuracy=(("1 element", (1,)), ("odd", (1, 77, 3071)), ("odd, 3-d", (3, 1021, 1023)),
              ("Flux 1×(4096+512)×3072", FLUX_TOKENS), ("video 1×75600×5120", VIDEO_TOKENS)),
    timing=(("Flux", FLUX_TOKENS, torch.bfloat16), ("video", VIDEO_TOKENS, torch.bfloat16)),
    block=ModelSize(24, 128, 1, 1, 4096, 512, 4096, 768, 1, 10, torch.bfloat16),
    model=ModelSize(24, 128, 4, 8, 4096, 512, 4096, 768, 28, 3, torch.bfloat16),
    modes_model=ModelSize(12, 128, 1, 2, 1024, 256, 1024, 256, 28, 2, torch.bfloat16),
)
SMOKE = Sizes(
    name="smoke",
    accuracy=(("1 element", (1,)), ("odd", (3, 1001))),
    timing=(("tiny", (1, 24, 129), torch.float32),),
    block=ModelSize(2, 32, 1, 1, 16, 8, 32, 32, 1, 3, torch.float32),
    model=ModelSize(2, 32, 1, 1, 16, 8, 32, 32, 4, 1, torch.float32),
    modes_model=ModelSize(2, 32, 1, 1, 16, 8, 32, 32, 4, 1, torch.float32),
    kernel_repeats=3,
    kernel_inner=2,
    budget_s=240.0,
    child_timeout_s=200.0,
)


def cached_spec(steps: int) -> str:
    """A spec whose cached steps are known in advance: R1.0 caches every step it may (after warmup, MC)."""
    return "F1B0_W8MC3_R1.0" if steps >= 16 else "F1B0_W1MC2_R1.0"


def uncached_spec(steps: int) -> str:
    return f"F1B0_W{steps}_R0"  # threshold 0 never caches; the cond and the diff still run


# ---------------------------------------------------------------------------------------------------------
# the run: device, budget, report


@dataclass
class Budget:
    limit_s: float
    start: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.limit_s - self.elapsed()

    def exceeded(self) -> bool:
        return self.left() <= 0


@dataclass
class Ctx:
    device: str
    sizes: Sizes
    budget: Budget
    argv: list[str]

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"


class Skip(Exception):
    """A row that cannot run here: its status is `skipped: <message>`."""


class Table:
    """A markdown table whose rows are added one at a time; column 2 is always the row's status."""

    def __init__(self, *columns: str) -> None:
        self.columns = columns
        self.rows: list[list[str]] = []

    def add(self, *cells: Any) -> None:
        cells = [_cell(c) for c in cells]
        self.rows.append(cells + ["-"] * (len(self.columns) - len(cells)))

    def guarded(self, ctx: Ctx, name: str, fn: Callable[[], list[Any]], need_s: float = 0.0) -> None:
        """Add the row `[name, *fn()]`, or a skipped / error row; never raises."""
        skip = budget_skip(ctx, need_s)
        if skip:
            return self.add(name, skip)
        try:
            self.add(name, *fn())
        except Skip as e:
            self.add(name, f"skipped: {e}")
        except Exception as e:  # one row's failure is the row's result
            self.add(name, error_text(e))
            free_memory(ctx)

    def lines(self) -> list[str]:
        return ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns),
                *("| " + " | ".join(r) + " |" for r in self.rows)]


def budget_skip(ctx: Ctx, need_s: float = 0.0) -> str | None:
    """The status of a row the budget leaves out (None: it may run)."""
    if ctx.budget.exceeded():
        return f"skipped: over the time budget ({ctx.budget.limit_s:.0f} s)"
    if ctx.budget.left() < need_s:
        return f"skipped: needs about {need_s:.0f} s, {ctx.budget.left():.0f} s left in the budget"
    return None


def _cell(x: Any) -> str:
    if isinstance(x, float):
        x = f"{x:.3g}" if math.isfinite(x) else str(x)
    return str(x).replace("|", "/").replace("\n", " ")


def error_text(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return f"error: {type(e).__name__}: {msg[:300]}"


def free_memory(ctx: Ctx) -> None:
    if ctx.cuda:
        torch.cuda.empty_cache()


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------------------
# timing


def window_s(fn: Callable[[], Any], device: str, inner: int = 1) -> float:
    """Seconds per call of `inner` back-to-back calls: CUDA events on CUDA, perf_counter elsewhere."""
    sync(device)
    if device != "cuda":
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        return (time.perf_counter() - t0) / inner
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(inner):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / inner


def time_interleaved(fns: dict[str, Callable[[], Any]], device: str, repeats: int, inner: int) -> dict[str, float]:
    """Median seconds per call of each fn after one warm-up call each; the fns take turns every repeat."""
    for fn in fns.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(window_s(fn, device, inner))
    return {name: statistics.median(s) for name, s in samples.items()}


def wall_s(fn: Callable[[], Any], device: str) -> float:
    """Wall seconds of one call, device work included (for first calls: compile time)."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------------------
# 1. kernels


def op_args(op: str, shape: tuple[int, ...], dtype: torch.dtype, device: str, order: int,
            n_valid: int | None = None) -> tuple:
    """Inputs of one op call (consecutive residuals are close: cur = prev + small noise)."""
    g = torch.Generator(device).manual_seed(0)

    def rand(*s: int) -> Tensor:
        return torch.randn(*s, generator=g, device=device).to(dtype)

    if op == "l1_sums":
        prev = rand(*shape)
        return prev, (prev.float() + 0.05 * torch.randn(shape, generator=g, device=device)).to(dtype)
    nv = order + 1 if n_valid is None else n_valid
    if op == "taylor_update":
        return (rand(order + 1, *shape), rand(*shape), torch.tensor(2.0, device=device),
                torch.tensor(nv, device=device))
    return rand(*shape), rand(order + 1, *shape), torch.tensor(3.0, device=device)


def bytes_moved(op: str, numel: int, elem: int, order: int) -> int:
    """What one fused pass must read and write."""
    return {"l1_sums": 2, "taylor_update": 2 * order + 2, "taylor_forecast": order + 3}[op] * numel * elem


def ref_l1_sums(prev: Tensor, cur: Tensor) -> Tensor:
    p = prev.double()
    return torch.stack([(p - cur.double()).abs().sum(), p.abs().sum()])


def ref_taylor_update(factors: Tensor, value: Tensor, gap: Tensor, n_valid: Tensor) -> Tensor:
    new, out = value.double(), [value.double()]
    for i in range(factors.shape[0] - 1):
        new = (new - factors[i].double()) / float(gap) if i < int(n_valid) else torch.zeros_like(new)
        out.append(new)
    return torch.stack(out)


def ref_taylor_forecast(base: Tensor, factors: Tensor, k: Tensor) -> Tensor:
    acc, coef = base.double(), 1.0
    for i in range(factors.shape[0]):
        acc = acc + coef * factors[i].double()
        coef *= float(k) / (i + 1)
    return acc


REFERENCES = {"l1_sums": ref_l1_sums, "taylor_update": ref_taylor_update, "taylor_forecast": ref_taylor_forecast}


def tolerance(op: str, dtype: torch.dtype, interpreted: bool = False) -> float:
    """l1_sums returns fp32 sums: accumulation error only. The others compute in fp32 and round once to
    `dtype`: at most half an ulp, 2^-8 (bf16) / 2^-11 (fp16) of max |ref|; Triton's interpreter truncates
    bf16 stores instead (a whole ulp, 2^-7)."""
    if op == "l1_sums":
        return 1e-4
    bf16 = 8e-3 if interpreted else 4e-3
    return {torch.float32: 1e-5, torch.bfloat16: bf16, torch.float16: 5e-4}[dtype]


def max_rel_err(out: Tensor, ref: Tensor) -> float:
    """max |out − ref| / max |ref| (l1_sums: the worse of its two sums, each against itself)."""
    ref = ref.double()
    if ref.numel() == 2 and out.numel() == 2:
        return float(((out.double() - ref).abs() / ref.abs().clamp_min(1e-300)).max())
    return float((out.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-300))


def custom_op(name: str) -> Callable:
    """`torch.ops.dit_cache_fx.<name>` (registered when dit_cache_fx.kernels is imported)."""
    import dit_cache_fx.kernels  # noqa: F401

    return getattr(torch.ops.dit_cache_fx, name)


def kernel_path(ctx: Ctx) -> tuple[str, Callable[[str], Callable]]:
    """What the accuracy rows run: the op (Triton on CUDA), the launcher under TRITON_INTERPRET=1 on CPU,
    else the op's torch branch."""
    from dit_cache_fx.kernels import ops

    if ctx.cuda:
        return "the op on CUDA, i.e. its Triton kernel", custom_op
    if os.environ.get("TRITON_INTERPRET") == "1" and ops._triton is not None:
        return "the Triton launcher under TRITON_INTERPRET=1", lambda op: getattr(ops, f"_{op}_triton")
    return f"the op on {ctx.device}, i.e. its torch branch (no Triton launch off CUDA)", custom_op


def accuracy_cell(ctx: Ctx, fn: Callable, op: str, shape: tuple[int, ...], dtype: torch.dtype,
                  n_valid: int | None) -> str:
    try:
        args = op_args(op, shape, dtype, ctx.device, ctx.sizes.order, n_valid)
        err = max_rel_err(fn(*args), REFERENCES[op](*args))
        tol = tolerance(op, dtype, interpreted=not ctx.cuda and os.environ.get("TRITON_INTERPRET") == "1")
        return f"{err:.1e} ok" if err <= tol else f"{err:.1e} OVER {tol:.0e}"
    except Exception as e:  # the cell records it; the row's other dtypes still run
        free_memory(ctx)
        return error_text(e)[:120]


def accuracy_row(ctx: Ctx, fn: Callable, op: str, label: str, shape: tuple[int, ...],
                 n_valid: int | None) -> list[str]:
    cells = [accuracy_cell(ctx, fn, op, shape, d, n_valid) for d in DTYPES]
    return ["ok" if all(c.endswith(" ok") for c in cells) else "see cells", f"{label} {tuple(shape)}", *cells]


def accuracy_table(ctx: Ctx) -> list[str]:
    what, pick = kernel_path(ctx)
    table = Table("op", "status", "shape", *(str(d).removeprefix("torch.") for d in DTYPES))
    cases = [(label, shape, None) for label, shape in ctx.sizes.accuracy]
    cases.insert(2, (ctx.sizes.accuracy[1][0] + ", n_valid=1", ctx.sizes.accuracy[1][1], 1))  # partial stack
    for op in OPS:
        for label, shape, n_valid in cases:
            if n_valid is not None and op != "taylor_update":
                continue
            table.guarded(ctx, op, partial(accuracy_row, ctx, pick(op), op, label, shape, n_valid))
    return [f"### Accuracy against float64: max |out − ref| / max |ref| of {what}", "",
            "Inputs are rounded to the dtype first and the float64 reference takes the same rounded inputs, so",
            "the error is the kernel's own: accumulation and output rounding. Taylor order K = "
            f"{ctx.sizes.order}; `n_valid=1`:",
            "a stack with one valid factor (the others must come out 0). Tolerances: l1_sums 1e-4 (fp32 sums);",
            "elementwise one rounding of the output: fp32 1e-5, bf16 4e-3 (8e-3 under Triton's interpreter, which",
            "truncates bf16 stores), fp16 5e-4.", "", *table.lines()]


def timing_fns(ctx: Ctx, op: str, args: tuple, nbytes: int) -> dict[str, Callable[[], Any]]:
    from dit_cache_fx.kernels import ops

    src = torch.ones(nbytes // 2, dtype=torch.uint8, device=ctx.device)  # copying it moves nbytes
    dst = torch.empty_like(src)
    torch_branch = getattr(ops, f"_{op}_torch")
    fns = {"op": partial(custom_op(op), *args), "copy": partial(dst.copy_, src),
           "eager": partial(torch_branch, *args),
           "compiled": partial(torch.compile(torch_branch, dynamic=False), *args)}
    if ctx.cuda:
        fns["launcher"] = partial(getattr(ops, f"_{op}_triton"), *args)
    return fns


def timing_row(ctx: Ctx, op: str, shape: tuple[int, ...], dtype: torch.dtype) -> list[Any]:
    args = op_args(op, shape, dtype, ctx.device, ctx.sizes.order)
    nbytes = bytes_moved(op, math.prod(shape), args[0].element_size(), ctx.sizes.order)
    t = time_interleaved(timing_fns(ctx, op, args, nbytes), ctx.device, ctx.sizes.kernel_repeats,
                         ctx.sizes.kernel_inner)

    def rate(name: str) -> str:
        return f"{t[name] * 1e6:.1f} µs, {nbytes / t[name] / 1e9:.0f} GB/s" if name in t else NEEDS_CUDA

    dt = str(dtype).removeprefix("torch.")
    return ["ok", f"{tuple(shape)} {dt}", f"{nbytes / 1e6:.1f}", rate("op"), rate("launcher"), rate("copy"),
            rate("eager"), rate("compiled"), f"{t['copy'] / t['op']:.2f}", f"{t['eager'] / t['op']:.2f}x",
            f"{t['compiled'] / t['op']:.2f}x"]


def timing_table(ctx: Ctx) -> list[str]:
    table = Table("op", "status", "case", "MB moved", "op (eager call)", "Triton launcher", "copy of the bytes",
                  "unfused torch ops (eager)", "torch branch, torch.compile", "copy time / op time",
                  "eager / op", "compiled / op")
    for label, shape, dtype in ctx.sizes.timing:
        for op in OPS:
            table.guarded(ctx, f"{op} ({label})", partial(timing_row, ctx, op, shape, dtype))
            free_memory(ctx)
    op_is = "its Triton kernel" if ctx.cuda else f"its torch branch on {ctx.device} (no Triton)"
    return [f"### Bandwidth: the op runs {op_is}", "",
            "MB moved: what one fused pass must read and write; GB/s = MB moved / time in every column, so the",
            "unfused ops, which move more, show a lower effective rate. `copy time / op time`: the op's share of",
            "a device-to-device copy's bandwidth (1.00 = as fast as copying its bytes). Medians of "
            f"{ctx.sizes.kernel_repeats} interleaved",
            f"repeats of {ctx.sizes.kernel_inner} back-to-back calls (Flux-sized tensors partly fit in L2; so "
            "does the copy).", "", *table.lines()]


def cuda_kernel_names(fn: Callable[[], Any]) -> list[str]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sorted({e.key for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA})


def dispatch_row(ctx: Ctx, op: str) -> list[Any]:
    args = op_args(op, (4099,), torch.bfloat16, ctx.device, ctx.sizes.order)
    fn = custom_op(op)
    compiled = torch.compile(lambda *a: fn(*a), dynamic=False)
    compiled(*args)  # compile outside the profiled window
    seen = {"eager": cuda_kernel_names(partial(fn, *args)), "compiled": cuda_kernel_names(partial(compiled, *args))}
    ok = all(any(op in n for n in names) for names in seen.values())  # inductor keeps user kernels' names
    return ["ok" if ok else "NOT the Triton kernel", ", ".join(seen["eager"]), ", ".join(seen["compiled"])]


def dispatch_table(ctx: Ctx) -> list[str]:
    table = Table("op", "status", "CUDA kernels of an eager call", "CUDA kernels under torch.compile")
    for op in OPS:
        if ctx.cuda:
            table.guarded(ctx, op, partial(dispatch_row, ctx, op))
        else:
            table.add(op, NEEDS_CUDA)
    return ["### Which code ran (torch.profiler, one bf16 call of 4099 elements)", "", *table.lines()]


def rope_axes(head_dim: int) -> tuple[int, int, int]:
    return head_dim // 8, 7 * head_dim // 16, 7 * head_dim // 16  # FLUX.1 at 128: (16, 56, 56)


def image_ids(n: int, device: str) -> Tensor:
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"image tokens must form a square grid, got {n}")
    rows = torch.arange(side, device=device).repeat_interleave(side)
    cols = torch.arange(side, device=device).repeat(side)
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=1).float()


def seeded_randn(device: str, dtype: torch.dtype, seed: int = 0) -> Callable[..., Tensor]:
    g = torch.Generator(device).manual_seed(seed)
    return lambda *shape: torch.randn(*shape, generator=g, device=device).to(dtype)


def block_inputs(b: ModelSize, device: str) -> tuple:
    from diffusers.models.transformers.transformer_flux import FluxPosEmbed

    rand = seeded_randn(device, b.dtype)
    ids = torch.cat([torch.zeros(b.txt, 3, device=device), image_ids(b.img, device)])
    rotary = FluxPosEmbed(theta=10000, axes_dim=list(rope_axes(b.head_dim)))(ids)
    return rand(1, b.img, b.hidden), rand(1, b.txt, b.hidden), rand(1, b.hidden), rotary


def block_row(ctx: Ctx, cls_name: str) -> list[Any]:
    from diffusers.models.transformers import transformer_flux

    b = ctx.sizes.block
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if ctx.cuda else []):
        torch.manual_seed(0)
        with torch.device(ctx.device):
            block = getattr(transformer_flux, cls_name)(b.hidden, b.heads, b.head_dim)
    block = block.to(b.dtype).eval()
    stream = seeded_randn(ctx.device, b.dtype, 1)(1, b.img + b.txt, b.hidden)
    l1 = partial(custom_op("l1_sums"), stream, stream * 0.99)
    with torch.no_grad():
        t = time_interleaved({"block": partial(block, *block_inputs(b, ctx.device)), "l1": l1}, ctx.device,
                             b.repeats, 3)
    return ["ok", f"{t['block'] * 1e3:.3f}", f"{t['l1'] * 1e6:.1f}", f"{t['l1'] / t['block'] * 100:.3f} %"]


def block_table(ctx: Ctx) -> list[str]:
    b = ctx.sizes.block
    table = Table("block", "status", "block ms (eager)", f"l1_sums µs on 1×{b.img + b.txt}×{b.hidden}",
                  "l1_sums / block")
    for cls_name in ("FluxTransformerBlock", "FluxSingleTransformerBlock"):
        table.guarded(ctx, cls_name, partial(block_row, ctx, cls_name))
        free_memory(ctx)
    dt = str(b.dtype).removeprefix("torch.")
    return [f"### l1_sums against one transformer block (hidden {b.hidden} = {b.heads} × {b.head_dim}, "
            f"{b.img} + {b.txt} tokens, {dt}, eager, random weights)", "",
            "The diff a cache region adds per step is one l1_sums over the Fn residual; here on the largest stream",
            "a Flux region sees (image + text tokens), against one block's forward. Medians of interleaved repeats.",
            "", *table.lines()]


def kernels_section(ctx: Ctx) -> list[str]:
    return [*subsection(accuracy_table, ctx), "", *subsection(dispatch_table, ctx), "",
            *subsection(timing_table, ctx), "", *subsection(block_table, ctx)]


def subsection(fn: Callable[[Ctx], list[str]], ctx: Ctx) -> list[str]:
    try:
        return fn(ctx)
    except Exception as e:  # the report records it; the next table still runs
        free_memory(ctx)
        return [f"### {fn.__name__}", "", f"crashed: {error_text(e)}"]


# ---------------------------------------------------------------------------------------------------------
# 2. the compiled cache


@dataclass
class Flux:
    model: torch.nn.Module
    latents: Tensor
    timesteps: Tensor  # on the device: the loop slices it, no host-to-device copy per step
    cond: dict[str, Any]
    size: ModelSize


def build_flux(size: ModelSize, device: str, seed: int = 0) -> Flux:
    from diffusers import FluxTransformer2DModel

    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if device == "cuda" else []):
        torch.manual_seed(seed)
        with torch.device(device):  # initialised on the device: seconds, not minutes, for billions of weights
            model = FluxTransformer2DModel(
                patch_size=1, in_channels=64, num_layers=size.double, num_single_layers=size.single,
                attention_head_dim=size.head_dim, num_attention_heads=size.heads, joint_attention_dim=size.joint_dim,
                pooled_projection_dim=size.pooled_dim, guidance_embeds=False, axes_dims_rope=rope_axes(size.head_dim))
    model = model.to(size.dtype).eval()
    rand = seeded_randn(device, size.dtype, seed)
    cond = dict(encoder_hidden_states=rand(1, size.txt, size.joint_dim), pooled_projections=rand(1, size.pooled_dim),
                img_ids=image_ids(size.img, device), txt_ids=torch.zeros(size.txt, 3, device=device), return_dict=False)
    timesteps = torch.linspace(1.0, 1.0 / size.steps, size.steps, device=device)  # sigmas, as Flux pipelines pass
    return Flux(model, rand(1, size.img, 64), timesteps, cond, size)


def denoise_step(model: Callable, flux: Flux, x: Tensor, t: Tensor) -> Tensor:
    return x - model(hidden_states=x, timestep=t, **flux.cond)[0] / flux.size.steps


def generation(model: Callable, flux: Flux) -> Tensor:
    x = flux.latents
    with torch.no_grad():
        for t in flux.timesteps.split(1):
            x = denoise_step(model, flux, x, t)
    return x


def warm_up(model: Callable, flux: Flux, device: str) -> float:
    """One generation; returns the wall seconds of its first call (for a compiled model: the compile)."""
    ts = flux.timesteps.split(1)
    with torch.no_grad():
        sync(device)
        t0 = time.perf_counter()
        x = denoise_step(model, flux, flux.latents, ts[0])
        sync(device)
        first = time.perf_counter() - t0
        for t in ts[1:]:
            x = denoise_step(model, flux, x, t)
    sync(device)
    return first


def timed_generation(model: Callable, flux: Flux, device: str) -> tuple[float, Tensor]:
    out: list[Tensor] = []
    return window_s(lambda: out.append(generation(model, flux)), device), out[0]


SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")


def host_syncs(ctx: Ctx, fn: Callable[[], Any], steps: int) -> tuple[str, str]:
    """(host syncs, device-to-host copies) per step of one profiled run of `fn`."""
    if not ctx.cuda:
        return NEEDS_CUDA, NEEDS_CUDA
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
    counts = {e.key: e.count for e in prof.key_averages()}
    syncs = sum(counts.get(k, 0) for k in SYNC_CALLS)
    dtoh = sum(c for k, c in counts.items() if "DtoH" in k)
    return f"{syncs / steps:.2f}", f"{dtoh / steps:.2f}"


def call_times(ctx: Ctx, model: Callable, flux: Flux) -> tuple[str, str]:
    """(host µs, device µs) per call, medians over one generation: the wall time until the call returns
    (what the host spends issuing it, no sync inside the loop) and CUDA-event time around it. Host above device
    means the step waits on Python."""
    ts, x, host, events = flux.timesteps.split(1), flux.latents, [], []
    with torch.no_grad():
        for t in ts:
            start = torch.cuda.Event(enable_timing=True) if ctx.cuda else None
            end = torch.cuda.Event(enable_timing=True) if ctx.cuda else None
            t0 = time.perf_counter()
            if start is not None:
                start.record()
            x = denoise_step(model, flux, x, t)
            if end is not None:
                end.record()
            host.append((time.perf_counter() - t0) * 1e6)
            events.append((start, end))
    sync(ctx.device)
    device = (f"{statistics.median(a.elapsed_time(b) * 1e3 for a, b in events):.0f}" if ctx.cuda else NEEDS_CUDA)
    return f"{statistics.median(host):.0f}", device


@dataclass
class Result:
    ms_step: float
    x: Tensor
    first_s: float | None = None
    cached: list[int] | None = None
    syncs: tuple[str, str] = ("-", "-")
    call_us: tuple[str, str] = ("-", "-")  # host µs / device µs per call
    fnbn: int = 1  # blocks a cached step still computes (Fn + Bn, summed over cache contexts)
    note: str = ""


def measure(ctx: Ctx, model: Callable, flux: Flux, *, first_call: bool,
            cached_of: Callable[[], list[int] | None] | None = None) -> Result:
    """Warm-up generation (its first call timed when `first_call`), timed generations, one profiled one."""
    first = warm_up(model, flux, ctx.device)
    graphs = unique_graphs()
    runs = [timed_generation(model, flux, ctx.device) for _ in range(flux.size.repeats)]
    cached = cached_of() if cached_of else None
    syncs = host_syncs(ctx, partial(generation, model, flux), flux.size.steps)
    call_us = call_times(ctx, model, flux)
    late = unique_graphs() - graphs
    return Result(statistics.median(t for t, _ in runs) / flux.size.steps * 1e3, runs[-1][1],
                  first if first_call else None, cached, syncs, call_us,
                  note=f"{late} graphs compiled after the warm-up" if late else "")


Outcome = Result | str  # a str: the row's status (skipped or error)


def attempt(ctx: Ctx, fn: Callable[[], Result], need_s: float = 0.0) -> Outcome:
    """`fn()`, or the status of a row that did not run: over the budget, skipped, or its error."""
    skip = budget_skip(ctx, need_s)
    if skip:
        return skip
    try:
        return fn()
    except Skip as e:
        return f"skipped: {e}"
    except Exception as e:  # the row records it
        free_memory(ctx)
        return error_text(e)


def notes(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def unique_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def run_dcf_uncached(ctx: Ctx, flux: Flux, holder: dict, regional: bool = False) -> Result:
    import dit_cache_fx

    m = dit_cache_fx.compile(flux.model, cache=uncached_spec(flux.size.steps), regional=regional)
    holder["dcf regional" if regional else "dcf"] = m
    return measure(ctx, m, flux, first_call=True, cached_of=lambda: dit_cache_fx.summary(m).cached_steps)


def run_dcf_cached(ctx: Ctx, flux: Flux, holder: dict, regional: bool = False) -> Result:
    import dit_cache_fx

    m = holder.get("dcf regional" if regional else "dcf")
    if m is None:
        raise RuntimeError("needs the threshold-0 compile of the row above, which did not run")
    glue = ""
    if regional:  # outer="auto": the graph around the blocks, compiled by a child process, swapped in first
        t0 = time.perf_counter()
        glue = (f"glue compiled in the background: {dit_cache_fx.wait_compiled(m, timeout=300)} "
                f"(waited {time.perf_counter() - t0:.1f} s); ")
    dit_cache_fx.configure(m, cached_spec(flux.size.steps))  # runtime fields only: the same graphs
    dit_cache_fx.reset(m)
    before = unique_graphs()
    r = measure(ctx, m, flux, first_call=False, cached_of=lambda: dit_cache_fx.summary(m).cached_steps)
    r.note = notes(f"{glue}configure() on the compiled model: {unique_graphs() - before} new graphs", r.note)
    return r


def run_oracle(ctx: Ctx, flux: Flux) -> Result:
    from dit_cache_fx import CacheConfig
    from dit_cache_fx.reference import EagerDBCache

    ora = EagerDBCache.single(flux.model, CacheConfig.parse(cached_spec(flux.size.steps)), FLUX_LISTS, pattern=1)
    try:
        r = measure(ctx, flux.model, flux, first_call=False, cached_of=ora.cached_steps)
    finally:
        ora.remove()
    r.note = notes("Python decisions on the host", r.note)
    return r


def cache_dit_enable(flux: Flux) -> None:
    import cache_dit
    from cache_dit import BlockAdapter, DBCacheConfig, ForwardPattern

    from dit_cache_fx import CacheConfig

    c = CacheConfig.parse(cached_spec(flux.size.steps))
    m = flux.model
    cache_dit.enable_cache(
        BlockAdapter(transformer=m, blocks=[m.transformer_blocks, m.single_transformer_blocks],
                     forward_pattern=[ForwardPattern.Pattern_1, ForwardPattern.Pattern_1]),
        cache_config=DBCacheConfig(num_inference_steps=flux.size.steps, Fn_compute_blocks=c.Fn_compute_blocks,
                                   Bn_compute_blocks=c.Bn_compute_blocks, max_warmup_steps=c.max_warmup_steps,
                                   max_continuous_cached_steps=c.max_continuous_cached_steps,
                                   residual_diff_threshold=c.residual_diff_threshold))


def cache_dit_cached_steps(model: torch.nn.Module) -> list[int] | None:
    """The first context's cached steps from `cache_dit.summary` (None when its API says otherwise)."""
    import cache_dit

    with contextlib.suppress(Exception):
        stats = cache_dit.summary(model)
        first = stats[0] if isinstance(stats, list | tuple) else stats
        steps = getattr(first, "cached_steps", None)
        return sorted(steps) if steps is not None else None
    return None


def run_cache_dit(ctx: Ctx, flux: Flux, holder: dict, compiled: bool) -> Result:
    if importlib.util.find_spec("cache_dit") is None:
        raise Skip("cache-dit not installed")
    if "cache_dit" not in holder:
        holder["cache_dit"] = None
        cache_dit_enable(flux)  # in place: runs after every other variant of this model
        holder["cache_dit"] = flux.model
    if holder["cache_dit"] is None:
        raise RuntimeError("cache_dit.enable_cache failed in the row above")
    m = torch.compile(flux.model) if compiled else flux.model
    r = measure(ctx, m, flux, first_call=compiled, cached_of=lambda: cache_dit_cached_steps(flux.model))
    r.fnbn, r.note = 2, notes("two cache contexts (double, single blocks), F1 each", r.note)
    return r


@dataclass
class Variant:
    run: Callable[[], Result]
    base: str  # its uncached baseline (for the measured speedup)
    ref: str  # the reference of its max error
    need_s: float = 0.0  # budget it needs to start (full sizes)


def cache_variants(ctx: Ctx, flux: Flux) -> dict[str, Variant]:
    """The variants in the order they run: cache-dit last, since it patches the model in place."""
    s, full = flux.size.steps, ctx.sizes is FULL
    holder: dict[str, Any] = {}
    ver = _version("cache-dit")
    ver = "" if ver in ("not installed", "1.5.3") else f" {ver} (1.5.3 was asked for)"
    dcf0, dcf1 = f"dit_cache_fx {uncached_spec(s)}", f"dit_cache_fx {cached_spec(s)}"
    oracle = f"eager oracle {cached_spec(s)} (dit_cache_fx.reference)"
    return {
        "eager": Variant(lambda: measure(ctx, flux.model, flux, first_call=False), "eager", "eager"),
        "torch.compile": Variant(lambda: measure(ctx, torch.compile(flux.model), flux, first_call=True),
                                 "eager", "eager"),
        dcf0: Variant(partial(run_dcf_uncached, ctx, flux, holder), "torch.compile", "eager"),
        dcf1: Variant(partial(run_dcf_cached, ctx, flux, holder), dcf0, oracle),
        f"{dcf0} regional": Variant(partial(run_dcf_uncached, ctx, flux, holder, True), "torch.compile", "eager",
                                    60.0 if full else 0.0),
        f"{dcf1} regional": Variant(partial(run_dcf_cached, ctx, flux, holder, True), f"{dcf0} regional", oracle),
        oracle: Variant(partial(run_oracle, ctx, flux), "eager", "eager"),
        f"cache-dit{ver} eager, {cached_spec(s)}": Variant(partial(run_cache_dit, ctx, flux, holder, False),
                                                           "eager", oracle),
        f"cache-dit{ver} + torch.compile": Variant(partial(run_cache_dit, ctx, flux, holder, True),
                                                   "torch.compile", oracle, 150.0 if full else 0.0),
    }


def block_bound(steps: int, blocks: int, cached: int, fnbn: int) -> float:
    """S·N / (C·N + K·(Fn+Bn)): the speedup if only transformer blocks cost time."""
    return steps * blocks / ((steps - cached) * blocks + cached * fnbn)


def cache_row(name: str, r: Outcome, v: Variant, results: dict[str, Outcome], flux: Flux) -> list[Any]:
    if isinstance(r, str):
        return [name, r]
    s, n = flux.size.steps, flux.size.blocks

    def ratio(other: str) -> str:
        o = results.get(other)
        return f"{o.ms_step / r.ms_step:.2f}x" if isinstance(o, Result) else "-"

    cached, bound, got, frac = "-", "-", "-", "-"
    base = results.get(v.base)
    if r.cached is not None:
        cached = f"{len(r.cached)}/{s}"
        if r.cached and isinstance(base, Result):
            bd = block_bound(s, n, len(r.cached), r.fnbn)
            bound, got, frac = f"{bd:.2f}x", f"{ratio(v.base)} vs {v.base}", f"{base.ms_step / r.ms_step / bd:.2f}"
    ref = results.get(v.ref)
    label = "the oracle" if v.ref.startswith("eager oracle") else v.ref
    err = ("reference" if v.ref == name else
           f"{max_rel_err(r.x, ref.x):.1e} vs {label}" if isinstance(ref, Result) else "-")
    first = f"{r.first_s:.1f}" if r.first_s is not None else "-"
    return [name, "ok", f"{r.ms_step:.2f}", ratio("eager"), ratio("torch.compile"), cached, bound, got, frac,
            first, *r.syncs, *r.call_us, err, r.note]


def cache_section(ctx: Ctx) -> list[str]:
    flux = build_flux(ctx.sizes.model, ctx.device)
    variants = cache_variants(ctx, flux)
    results: dict[str, Outcome] = {}
    for name, v in variants.items():
        results[name] = attempt(ctx, v.run, v.need_s)
        print(f"  {name}: {_brief(results[name])}", flush=True)
    table = Table("variant", "status", "ms/step", "vs eager", "vs torch.compile", "cached", "block bound",
                  "measured speedup", "measured / bound", "first call s", "host syncs/step", "DtoH copies/step",
                  "host µs/call", "device µs/call", "max rel err", "notes")
    for name, v in variants.items():
        try:
            table.add(*cache_row(name, results[name], v, results, flux))
        except Exception as e:  # a row that cannot be shown still leaves the others
            table.add(name, error_text(e))
    return [*cache_intro(ctx, flux), "", *table.lines(), "", *cache_notes(flux)]


def _brief(r: Outcome) -> str:
    return r if isinstance(r, str) else f"{r.ms_step:.2f} ms/step, cached {r.cached}"


def cache_intro(ctx: Ctx, flux: Flux) -> list[str]:
    size = flux.size
    if ctx.sizes is FULL:
        why = ("Chosen: FLUX.1's width, heads and tokens (1024² px), so the blocks and the cache state have real "
               "shapes, but 12 of its 57 blocks: each block is inlined into the compiled graph, so compile time "
               "grows with their number. Estimated (no GPU had run this when it was written): 1–2 min for each of "
               "the two compiles (torch.compile, dit_cache_fx; the cached row reuses the second), ~1 s per "
               "28-step generation, so the section fits about 4 of the 8 minutes; its wall time is in its header.")
    else:
        why = "Smoke sizes: this checks that the code runs; its numbers mean nothing."
    n = sum(p.numel() for p in flux.model.parameters())
    count = f"{n / 1e9:.2f} B" if n >= 1e8 else f"{n:,}"
    return [f"Model: {size.text()} ({count} parameters). {why}", "",
            f"Each variant: a warm-up generation (its first call timed: `first call s`, the compile), "
            f"{size.repeats} timed generation(s) (median, ms per step), one generation under torch.profiler "
            "(host syncs: cudaStreamSynchronize / cudaDeviceSynchronize / cudaEventSynchronize calls; DtoH: "
            "device-to-host memcpys), one generation timed call by call (host µs: wall time until the call "
            "returns; device µs: CUDA events around it; medians)."]


def cache_notes(flux: Flux) -> list[str]:
    return ["`cached`: cached steps of the latest generation (`dit_cache_fx.summary(m).cached_steps`; the oracle's "
            "own count; cache-dit's first context). `block bound` = S·N / (C·N + K·(Fn+Bn)) for S steps, N = "
            f"{flux.size.blocks} blocks, C computed, K cached: the speedup if only the blocks cost time. "
            "`measured speedup`: against the variant's uncached baseline. `max rel err` = max |x − x_ref| / "
            "max |x_ref| of the final latents against eager (uncached variants) or the eager oracle with the same "
            "spec (cached variants). The cached dit_cache_fx row is the threshold-0 compile reconfigured with "
            "`dit_cache_fx.configure` (runtime fields only), so it reuses its graphs; the `regional` rows are the "
            "same with `compile(..., regional=True)` (block code per distinct block; the glue as FX code on the threshold-0 row, compiled in a child process and swapped in before the cached row). "
            "cache-dit runs last, "
            "patched into the same model (transformer-only `BlockAdapter`, both block lists Pattern_1, "
            "`DBCacheConfig(num_inference_steps=S, ...)` with the same F/W/MC/R); its MC counts differ from "
            "ours (README, deviation 1)."]


# ---------------------------------------------------------------------------------------------------------
# 3. modes (each in a child process: a fresh Dynamo and cudagraph state, its own timeout, its logs)


MODE_VARIANTS = (("dit_cache_fx", "reduce-overhead"), ("dit_cache_fx", "max-autotune-no-cudagraphs"),
                 ("torch.compile", "reduce-overhead"))


def cuda_graphs_recorded(ctx: Ctx) -> int | None:
    """CUDA graphs recorded by inductor's cudagraph trees on this device (private API: None if it moved)."""
    if not ctx.cuda:
        return None
    with contextlib.suppress(Exception):
        from torch._inductor import cudagraph_trees

        mgr = cudagraph_trees.get_manager(torch.cuda.current_device(), create_if_none_exists=False)
        return 0 if mgr is None else sum(1 + node.num_descendants() for node in mgr.get_roots())
    return None


def child_mode(ctx: Ctx, compiler: str, mode: str) -> dict[str, Any]:
    """The body of one modes row, run in a child process; returns what the row shows."""
    from torch._dynamo.utils import counters

    import dit_cache_fx

    flux = build_flux(ctx.sizes.modes_model, ctx.device)
    spec = cached_spec(flux.size.steps)
    if compiler == "dit_cache_fx":
        m = dit_cache_fx.compile(flux.model, cache=spec, mode=mode)
    else:
        m = torch.compile(flux.model, mode=mode)
    r = measure(ctx, m, flux, first_call=True,
                cached_of=(lambda: dit_cache_fx.summary(m).cached_steps) if compiler == "dit_cache_fx" else None)
    ref = mode_reference(flux, spec if compiler == "dit_cache_fx" else None)
    inductor = {k: int(v) for k, v in counters["inductor"].items() if "cudagraph" in k}
    return dict(ms_step=r.ms_step, first_s=r.first_s, cached=r.cached, steps=flux.size.steps,
                graphs=cuda_graphs_recorded(ctx), counters=inductor, err=max_rel_err(r.x, ref),
                ref="eager oracle" if compiler == "dit_cache_fx" else "eager")


def mode_reference(flux: Flux, spec: str | None) -> Tensor:
    """Final latents of the eager model, under the eager oracle with `spec` when given."""
    if spec is None:
        return generation(flux.model, flux)
    from dit_cache_fx import CacheConfig
    from dit_cache_fx.reference import EagerDBCache

    ora = EagerDBCache.single(flux.model, CacheConfig.parse(spec), FLUX_LISTS, pattern=1)
    try:
        return generation(flux.model, flux)
    finally:
        ora.remove()


def run_child(ctx: Ctx, compiler: str, mode: str) -> tuple[dict[str, Any], str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-mode", compiler, mode, "--device", ctx.device]
    if ctx.sizes is SMOKE:
        cmd.append("--smoke")
    timeout = max(60.0, min(ctx.sizes.child_timeout_s, ctx.budget.left() + 30.0))
    env = dict(os.environ, TORCH_LOGS="cudagraphs")  # the child logs why it skipped cudagraphs, if it did
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"the child process ran past its {timeout:.0f} s timeout") from None
    lines = r.stdout.strip().splitlines()
    try:
        out = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = " ".join(r.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"child exited with {r.returncode} and no result: {tail}") from None
    if "error" in out:
        raise RuntimeError(out["error"])
    return out, r.stderr


def cudagraph_notes(stderr: str, limit: int = 3) -> str:
    seen: list[str] = []
    for line in stderr.splitlines():
        if "cudagraph" in line.lower():
            msg = line.split("] ", 1)[-1].strip()[:160]
            if msg not in seen:
                seen.append(msg)
    return "; ".join(seen[:limit]) or "-"


def mode_row(ctx: Ctx, compiler: str, mode: str) -> list[Any]:
    out, stderr = run_child(ctx, compiler, mode)
    c = out["counters"]
    cached = "-" if out["cached"] is None else f"{len(out['cached'])}/{out['steps']}"
    graphs = NEEDS_CUDA if not ctx.cuda else ("?" if out["graphs"] is None else out["graphs"])
    return ["ok", "yes", cached, f"{out['ms_step']:.2f}", f"{out['first_s']:.1f}", graphs,
            c.get("cudagraph_partitions", 0), c.get("cudagraph_skips", 0), f"{out['err']:.1e} vs {out['ref']}",
            cudagraph_notes(stderr)]


def modes_section(ctx: Ctx) -> list[str]:
    size = ctx.sizes.modes_model
    table = Table("variant", "status", "ran", "cached", "ms/step", "first call s", "CUDA graphs recorded",
                  "cudagraph partitions", "cudagraph skips", "max rel err", "cudagraph log (first lines)")
    for compiler, mode in MODE_VARIANTS:
        name = f"{compiler} mode={mode}" + (f" cache={cached_spec(size.steps)}" if compiler == "dit_cache_fx" else "")
        if "cudagraphs" not in mode and not ctx.cuda:  # reduce-overhead = CUDA graphs
            table.add(name, NEEDS_CUDA)
            continue
        table.guarded(ctx, name, partial(mode_row, ctx, compiler, mode), 60.0 if ctx.sizes is FULL else 0.0)
    return [f"Model: {size.text()}; each row compiles it once in a fresh child process (TORCH_LOGS=cudagraphs), "
            "runs a warm-up generation, timed generations and one profiled one, and compares the final latents with "
            "the eager oracle of the same spec (or eager). `CUDA graphs recorded`: nodes of inductor's cudagraph "
            "trees; partitions and skips: `torch._dynamo.utils.counters['inductor']`.", "", *table.lines()]


# ---------------------------------------------------------------------------------------------------------
# the report


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "commit unknown"
    return f"{head}{' + uncommitted changes' if dirty else ''}" if head else "commit unknown"


def device_text(ctx: Ctx) -> str:
    if ctx.cuda:
        p = torch.cuda.get_device_properties(torch.cuda.current_device())
        return (f"{p.name} (sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs; "
                f"{torch.cuda.device_count()} visible)")
    return (f"CPU ({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads); "
            "no GPU: rows that need CUDA say so")


def environment(ctx: Ctx) -> list[str]:
    cuda = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CUDA: none (CPU build)"
    return ["# dit_cache_fx GPU check", "",
            f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
            f"- device: {device_text(ctx)}",
            f"- versions: torch {torch.__version__}, {cuda}, triton {_version('triton')}, "
            f"diffusers {_version('diffusers')}, dit_cache_fx {_version('dit-cache-fx')} ({git_commit()}), "
            f"cache-dit {_version('cache-dit')}, Python {platform.python_version()}",
            f"- command: `{' '.join(['python bench/gpu_check.py', *ctx.argv])}`",
            f"- sizes: {ctx.sizes.name}; soft budget {ctx.budget.limit_s:.0f} s (rows after it are skipped)"]


SECTION_FNS: dict[str, Callable[[Ctx], list[str]]] = {
    "kernels": kernels_section, "cache": cache_section, "modes": modes_section}


def run_section(ctx: Ctx, key: str) -> list[str]:
    print(f"{SECTIONS[key]} ...", flush=True)
    t0 = time.perf_counter()
    try:
        body = SECTION_FNS[key](ctx)
    except Exception as e:  # the section records it; the next section still runs
        body = [f"section crashed: {error_text(e)}"]
    free_memory(ctx)
    return [f"{SECTIONS[key]} ({time.perf_counter() - t0:.0f} s)", "", *body]


def write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def run(ctx: Ctx, sections: list[str], out: Path) -> str:
    lines = environment(ctx)
    for key in SECTIONS:
        lines += [""] + (run_section(ctx, key) if key in sections
                         else [SECTIONS[key], "", "not selected (`--sections`)."])
        write(out, lines)  # after every section: a run cut short keeps what it measured
    lines += ["", f"Total wall time: {ctx.budget.elapsed():.0f} s."]
    write(out, lines)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda when available")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (seconds on CPU; the numbers mean nothing)")
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated, from kernels,cache,modes")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "gpu_check.md", help="the markdown report")
    p.add_argument("--budget-s", type=float, default=None,
                   help=f"soft time budget; rows after it are skipped (default {FULL.budget_s:.0f}, smoke "
                        f"{SMOKE.budget_s:.0f})")
    p.add_argument("--child-mode", nargs=2, metavar=("COMPILER", "MODE"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.device is None:
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    if a.device == "cpu" and not a.smoke:
        p.error("no CUDA device: the full check needs one; run `--device cpu --smoke` for the CPU smoke run")
    a.sections = [s.strip() for s in a.sections.split(",") if s.strip()]
    bad = set(a.sections) - set(SECTIONS)
    if bad:
        p.error(f"unknown sections {sorted(bad)}; choose from {','.join(SECTIONS)}")
    return a


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if importlib.util.find_spec("dit_cache_fx") is None:  # run from a checkout that is not installed
        sys.path.insert(0, str(REPO))
    a = parse_args(argv)
    sizes = SMOKE if a.smoke else FULL
    ctx = Ctx(a.device, sizes, Budget(a.budget_s if a.budget_s is not None else sizes.budget_s), argv)
    if a.child_mode:
        return child_main(ctx, *a.child_mode)
    print(run(ctx, a.sections, a.out))
    print(f"\nwrote {a.out}")


def child_main(ctx: Ctx, compiler: str, mode: str) -> None:
    try:
        out = child_mode(ctx, compiler, mode)
    except Exception as e:  # the parent's row records it
        out = {"error": error_text(e).removeprefix("error: ")}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
