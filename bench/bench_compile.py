"""Eager vs torch.compile vs dit_cache_fx.compile on a Flux-like transformer (CPU or GPU).

    python bench/bench_compile.py            # hidden 512, 4 double + 8 single blocks, 1024 image tokens
    python bench/bench_compile.py --quick    # a smaller config for a smoke run
    python bench/bench_compile.py --resolutions-only   # static shapes vs dynamic=True over 3 resolutions
    python bench/bench_compile.py --overhead-only      # per-call µs at threshold 0 against torch.compile

All variants run in one process, interleaved generation by generation, and are reported as ratios.
Compile times are measured in fresh subprocesses, each with its own inductor cache directory, cold and
then warm, so the two compilers see the same cache state.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from diffusers import FluxTransformer2DModel

import dit_cache_fx

CONFIGS = {
    "full": dict(hidden_heads=8, head_dim=64, double=4, single=8, side=32, txt=64),
    "quick": dict(hidden_heads=4, head_dim=32, double=2, single=4, side=16, txt=16),
    "deep": dict(hidden_heads=4, head_dim=32, double=4, single=16, side=16, txt=16),  # 20 blocks: regional compile
}
# first-call variants measured in fresh processes
KINDS = {
    "torch.compile": lambda m: torch.compile(m),
    "regional compile (diffusers)": lambda m: (m.compile_repeated_blocks(), m)[1],
    "dit_cache_fx": lambda m: dit_cache_fx.compile(m, cache="F1B0_W2_R1.0"),
    "dit_cache_fx regional": lambda m: dit_cache_fx.compile(m, cache="F1B0_W2_R1.0", regional=True),  # outer=auto
    "dit_cache_fx regional, outer=python": lambda m: dit_cache_fx.compile(m, cache="F1B0_W2_R1.0", regional=True,
                                                                         outer="python"),
    "dit_cache_fx regional, outer=inductor": lambda m: dit_cache_fx.compile(m, cache="F1B0_W2_R1.0", regional=True,
                                                                           outer="inductor"),
}


def build(cfg: dict, seed: int = 0) -> tuple[torch.nn.Module, dict]:
    """The Flux-like model of `cfg` (random weights) and one call's inputs: `side`² image tokens, or `img`."""
    torch.manual_seed(seed)
    d = cfg["head_dim"]
    model = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=cfg["double"], num_single_layers=cfg["single"],
        attention_head_dim=d, num_attention_heads=cfg["hidden_heads"], joint_attention_dim=256,
        pooled_projection_dim=256, guidance_embeds=False, axes_dims_rope=(d // 4, 3 * d // 8, 3 * d // 8)).eval()
    n_img, g = cfg.get("img") or cfg["side"] ** 2, torch.Generator().manual_seed(seed)
    inputs = dict(hidden_states=torch.randn(1, n_img, 64, generator=g),
                  encoder_hidden_states=torch.randn(1, cfg["txt"], 256, generator=g),
                  pooled_projections=torch.randn(1, 256, generator=g),
                  img_ids=torch.rand(n_img, 3, generator=g), txt_ids=torch.zeros(cfg["txt"], 3), return_dict=False)
    return model, inputs


def generation(model, inputs: dict, steps: int) -> float:
    """One simulated denoising run; returns seconds."""
    x = inputs["hidden_states"]
    rest = {k: v for k, v in inputs.items() if k != "hidden_states"}
    t0 = time.perf_counter()
    with torch.no_grad():
        for t in torch.linspace(1.0, 0.02, steps):
            v = model(hidden_states=x, timestep=t.reshape(1), **rest)[0]
            x = x - v / steps
    return time.perf_counter() - t0


def compile_time_child(kind: str, cfg_name: str) -> None:
    """Subprocess body: first-call time of one compiled variant, plus inductor cache counters and where the
    time went: Dynamo's tracing, its backend (for us: the passes and the outer graph's compilation), and the
    block code regional mode compiles on its first calls."""
    from torch._dynamo.utils import compile_times as dynamo_compile_times
    from torch._dynamo.utils import counters

    from dit_cache_fx import _compat

    blocks = []
    compile_function = _compat.compile_function

    def timed(*args):
        t = time.perf_counter()
        try:
            return compile_function(*args)
        finally:
            blocks.append(time.perf_counter() - t)

    _compat.compile_function = timed
    model, inputs = build(CONFIGS[cfg_name])
    cm = KINDS[{"inductor": "torch.compile", "dit_cache_fx": "dit_cache_fx"}.get(kind, kind)](model)
    t0 = time.perf_counter()
    with torch.no_grad():
        cm(timestep=torch.ones(1), **inputs)
    dt = time.perf_counter() - t0
    ready = dt  # outer="auto": until the graph around the blocks runs compiled (its child started at once)
    if kind == "dit_cache_fx regional":
        assert dit_cache_fx.wait_compiled(cm), "the background compile failed"
        ready = time.perf_counter() - t0
    names, values = dynamo_compile_times(repr="csv", aggregate=True)
    phases = dict(zip(names, values))
    print(json.dumps({"seconds": dt, "ready": ready, "tracing": float(phases.get("bytecode_tracing", 0)),
                      "backend": float(phases.get("OutputGraph.call_user_compiler", 0)), "block_code": sum(blocks),
                      **{k: v for k, v in counters["inductor"].items() if k.startswith("fxgraph")}}))


def compile_times(cfg_name: str, repeats: int = 1) -> dict:
    """First-call seconds per (cache state, compiler): median over `repeats` fresh cache directories."""
    runs: dict = {}
    for _ in range(repeats):
        dirs = {kind: tempfile.mkdtemp(prefix=f"dcf_bench_{kind}_") for kind in ("inductor", "dit_cache_fx")}
        for state in ("cold", "warm"):
            for kind, cache_dir in dirs.items():
                env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache_dir)
                r = subprocess.run([sys.executable, __file__, "--child", kind, "--config", cfg_name], env=env,
                                   capture_output=True, text=True, check=True)
                runs.setdefault((state, kind), []).append(json.loads(r.stdout.strip().splitlines()[-1]))
    return {k: {**v[-1], "seconds": statistics.median(x["seconds"] for x in v)} for k, v in runs.items()}


def compile_table(ct: dict) -> list[str]:
    lines = ["| compile (first call, fresh process) | torch.compile s | dit_cache_fx s | ratio | "
             "dit_cache_fx fxgraph cache |", "|---|---|---|---|---|"]
    for state in ("cold", "warm"):
        a_, b_ = ct[(state, "inductor")], ct[(state, "dit_cache_fx")]
        stats = ", ".join(f"{k.replace('fxgraph_cache_', '')}={v}" for k, v in b_.items() if k != "seconds")
        lines.append(f"| {state} | {a_['seconds']:.1f} | {b_['seconds']:.1f} | "
                     f"{b_['seconds'] / a_['seconds']:.2f}x | {stats} |")
    return lines


def call_overhead(repeats: int = 5, calls: int = 50) -> tuple[float, float]:
    """Median µs per call of a tiny model: plain torch.compile vs dit_cache_fx at threshold 0."""
    model, inputs = build(dict(hidden_heads=2, head_dim=16, double=1, single=2, side=4, txt=4))
    variants = {"inductor": torch.compile(model), "dit_cache_fx": dit_cache_fx.compile(model, cache="F1B0_R0")}
    times = {k: [] for k in variants}
    for _ in range(repeats + 1):
        for name, cm in variants.items():
            with torch.no_grad():
                t0 = time.perf_counter()
                for i in range(calls):
                    cm(timestep=torch.tensor([1.0 - i / calls]), **inputs)
                times[name].append((time.perf_counter() - t0) / calls * 1e6)
    return tuple(statistics.median(times[k][1:]) for k in variants)


def regional_rows(repeats: int, steps: int) -> list[str]:
    """Deep model (20 blocks): first-call seconds of each kind in fresh processes (cold: an empty inductor
    cache directory; warm: the same directory again), then steady ms/step of each, interleaved in one process
    (dit_cache_fx at threshold 0, computing everything, and always-cache after warmup)."""
    first: dict = {}
    for _ in range(repeats):
        dirs = {kind: tempfile.mkdtemp(prefix="dcf_bench_regional_") for kind in KINDS}
        for state in ("cold", "warm"):
            for kind, cache_dir in dirs.items():
                env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache_dir)
                r = subprocess.run([sys.executable, __file__, "--child", kind, "--config", "deep"], env=env,
                                   capture_output=True, text=True, check=True)
                first.setdefault((state, kind), []).append(json.loads(r.stdout.strip().splitlines()[-1]))
    variants = {kind: make(build(CONFIGS["deep"])[0]) for kind, make in KINDS.items()}
    inputs = build(CONFIGS["deep"])[1]
    for m in variants.values():
        generation(m, inputs, steps)
    assert dit_cache_fx.wait_compiled(variants["dit_cache_fx regional"], timeout=600)  # outer="auto": compiled
    rows = {}
    for label, thr in (("R0", 0.0), ("R1.0", 1.0)):
        for kind, m in variants.items():
            if kind.startswith("dit_cache_fx"):
                dit_cache_fx.configure(m, residual_diff_threshold=thr)
        times = {k: [] for k in variants}
        for _ in range(3):
            for kind, m in variants.items():
                times[kind].append(generation(m, inputs, steps) / steps * 1e3)
        rows[label] = {k: statistics.median(v) for k, v in times.items()}
    reg = "regional compile (diffusers)"
    lines = ["", f"Deep model (4 double + 16 single blocks, hidden 128, 256 image tokens), {steps} steps; first call "
             f"in fresh processes (median of {repeats}), steady ms/step interleaved in one process:", "",
             "| variant | cold first call s | vs regional | warm first call s | cold, until every graph runs "
             "compiled s | ms/step (R0: everything computed) | ms/step (always cache after W2) |",
             "|---|---|---|---|---|---|---|"]
    med = lambda state, kind, key="seconds": statistics.median(r[key] for r in first[(state, kind)])  # noqa: E731
    for kind in KINDS:
        cold, warm = med("cold", kind), med("warm", kind)
        cached = f"{rows['R1.0'][kind]:.1f}" if kind.startswith("dit_cache_fx") else "-"
        ready = "-" if "python" in kind or not kind.startswith("dit_cache_fx") else f"{med('cold', kind, 'ready'):.1f}"
        lines.append(f"| {kind} | {cold:.1f} | {cold / med('cold', reg):.2f}x | {warm:.1f} | {ready} | "
                     f"{rows['R0'][kind]:.1f} | {cached} |")
    lines += ["", "Where the cold first call goes (s, medians; inductor's one-off set-up, e.g. its CPU vector-ISA "
              "probe, is paid by whichever graph compiles first: in regional mode the first block code):", "",
              "| variant | Dynamo tracing | backend (passes + graph compile) | block code (regional mode) | rest |",
              "|---|---|---|---|---|"]
    for kind in KINDS:
        parts = [med("cold", kind, k) for k in ("tracing", "backend", "block_code")]
        lines.append(f"| {kind} | {parts[0]:.1f} | {parts[1]:.1f} | {parts[2]:.1f} | "
                     f"{med('cold', kind) - sum(parts):.1f} |")
    return lines


def resolution_rows(cfg_name: str, steps: int, sides: tuple[int, ...]) -> list[str]:
    """One model over several resolutions: static shapes (a compile per resolution) vs dynamic=True (one set of
    graphs). Per resolution: first-generation seconds (compiles) and the cached speedup (always-cache after
    warmup vs threshold 0, the same compiled module switched with configure)."""
    from torch._dynamo.utils import counters

    out: dict = {}
    for dynamic in (False, True):
        model, _ = build(CONFIGS[cfg_name])
        m = dit_cache_fx.compile(model, cache="F1B0_W2_R0", dynamic=dynamic)
        counters.clear()
        for side in sides:
            inputs = build(dict(CONFIGS[cfg_name], side=side))[1]
            first = generation(m, inputs, steps)
            dit_cache_fx.configure(m, residual_diff_threshold=0.0)
            r0 = statistics.median(generation(m, inputs, steps) for _ in range(2))
            dit_cache_fx.configure(m, residual_diff_threshold=1.0)
            cached = statistics.median(generation(m, inputs, steps) for _ in range(2))
            out[(dynamic, side)] = (first, r0 / cached, len(dit_cache_fx.summary(m).cached_steps))
            dit_cache_fx.configure(m, residual_diff_threshold=0.0)
        out[(dynamic, "graphs")] = len(dit_cache_fx.api.handle_of(m).graphs)
    lines = ["", f"| resolution ({steps} steps) | static: first generation s | static: cached speedup | "
             "dynamic=True: first generation s | dynamic=True: cached speedup |", "|---|---|---|---|---|"]
    for side in sides:
        (fs, ss, k), (fd, sd, _) = out[(False, side)], out[(True, side)]
        lines.append(f"| {side * side} image tokens ({k}/{steps} cached) | {fs:.1f} | {ss:.2f}x | {fd:.1f} | {sd:.2f}x |")
    total_s = sum(out[(False, s)][0] for s in sides)
    total_d = sum(out[(True, s)][0] for s in sides)
    lines.append(f"| all ({out[(False, 'graphs')]} vs {out[(True, 'graphs')]} graphs) | {total_s:.1f} | | "
                 f"{total_d:.1f} ({total_d / total_s:.2f}x of static) | |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--child", choices=["inductor", "dit_cache_fx", *KINDS])
    p.add_argument("--config", default="full")
    p.add_argument("--out", default=None, help="also write the report to this markdown file")
    p.add_argument("--compile-repeats", type=int, default=3)
    p.add_argument("--compile-only", action="store_true", help="only the fresh-process compile-time table")
    p.add_argument("--resolutions-only", action="store_true", help="only the static vs dynamic=True resolution rows")
    p.add_argument("--regional-only", action="store_true", help="only the regional-compile rows (deep model)")
    p.add_argument("--overhead-only", action="store_true", help="only the per-call time of a tiny model at R0")
    a = p.parse_args()
    if a.child:
        return compile_time_child(a.child, a.config)
    if a.compile_only:
        print("\n".join(compile_table(compile_times("quick" if a.quick else "full", a.compile_repeats))))
        return None
    sides = (12, 16, 24) if a.quick else (24, 32, 40)
    if a.resolutions_only:
        print("\n".join(resolution_rows("quick" if a.quick else "full", a.steps, sides)))
        return None
    if a.regional_only:
        print("\n".join(regional_rows(a.compile_repeats, a.steps)))
        return None
    if a.overhead_only:
        torch.set_num_threads(1)
        us_plain, us_dcf = call_overhead(repeats=9)
        print(f"per-call time of a tiny model: torch.compile {us_plain:.0f} µs, dit_cache_fx {us_dcf:.0f} µs "
              f"({us_dcf - us_plain:+.0f} µs)")
        return None
    cfg_name = "quick" if a.quick else "full"
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    model, inputs = build(CONFIGS[cfg_name])
    N = CONFIGS[cfg_name]["double"] + CONFIGS[cfg_name]["single"]
    S = a.steps
    specs = {"dit_cache_fx R0": "F1B0_W2_R0", "dit_cache_fx F1B0_W2_R1.0": "F1B0_W2_R1.0",
             "dit_cache_fx F1B0_W2MC3_R1.0": "F1B0_W2MC3_R1.0"}
    variants: dict = {"eager": model, "torch.compile": torch.compile(model)}
    variants.update({name: dit_cache_fx.compile(model, cache=spec) for name, spec in specs.items()})

    first_call = {}
    for name, m in variants.items():  # warm-up generation = compile, reported separately
        first_call[name] = generation(m, inputs, S)
    times: dict = {k: [] for k in variants}
    for _ in range(a.repeats):
        for name, m in variants.items():
            times[name].append(generation(m, inputs, S) / S * 1e3)
    ms = {k: statistics.median(v) for k, v in times.items()}

    from torch._dynamo.utils import counters
    breaks = sum(counters["graph_break"].values())
    lines = [f"# bench_compile ({cfg_name}): Flux-like, {N} blocks, {CONFIGS[cfg_name]['side'] ** 2} image tokens, "
             f"{S} steps; {os.cpu_count()} CPU cores, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}",
             "", "| variant | ms/step | vs eager | vs torch.compile | cached | first generation s | ideal bound | "
             "measured vs R0 | measured/bound |", "|---|---|---|---|---|---|---|---|---|"]
    for name, m in variants.items():
        cached, bound, meas = "-", "-", "-"
        ratio = "-"
        if name in specs:
            K = len(dit_cache_fx.summary(m).cached_steps)
            C = S - K
            cached = f"{K}/{S}"
            if K:
                b = S * N / (C * N + K * 1)
                got = ms["dit_cache_fx R0"] / ms[name]
                bound, meas, ratio = f"{b:.2f}x", f"{got:.2f}x", f"{got / b:.2f}"
        lines.append(f"| {name} | {ms[name]:.1f} | {ms['eager'] / ms[name]:.2f}x | "
                     f"{ms['torch.compile'] / ms[name]:.2f}x | {cached} | {first_call[name]:.1f} | {bound} | {meas} | "
                     f"{ratio} |")
    overhead = (ms["dit_cache_fx R0"] / ms["torch.compile"] - 1) * 100
    lines += ["", f"threshold-0 overhead vs torch.compile: {overhead:+.1f}%  (graph breaks: {breaks})"]
    us_plain, us_dcf = call_overhead()
    lines.append(f"per-call time of a tiny model: torch.compile {us_plain:.0f} µs, dit_cache_fx {us_dcf:.0f} µs "
                 f"({us_dcf - us_plain:+.0f} µs)")
    lines += ["", f"compile times: median of {a.compile_repeats} fresh cache directories"]
    lines += compile_table(compile_times(cfg_name, a.compile_repeats))
    lines += resolution_rows(cfg_name, S, sides)
    report = "\n".join(lines)
    print(report)
    if a.out:
        with open(a.out, "w") as f:
            f.write(report + "\n")


if __name__ == "__main__":
    main()
