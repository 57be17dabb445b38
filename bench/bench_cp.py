"""Uncached vs cached under diffusers' context parallelism (2 CPU ranks over gloo), and the same single-process.

    python bench/bench_cp.py                 # Flux-like, hidden 256, 2 double + 4 single blocks, 1024 tokens
    python bench/bench_cp.py --quick         # a smaller model for a smoke run

Per setting: ms/step of a 10-step generation (median of repeats after a warm-up generation that compiles),
as ratios against the uncached compiled model in the same world size. Ulysses; rank 0 reports. Writes
bench/bench_cp.md. The CPU patches are the tests' (tests/test_context_parallel.py): diffusers' mesh setup
divides by the accelerator count, 0 on a CPU build.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

SETTINGS = {"torch.compile": None, "dit_cache_fx R0 (never caches)": "F1B0_W2_R0",
            "dit_cache_fx F1B0_W2_R1.0 (always after warmup)": "F1B0_W2_R1.0",
            "dit_cache_fx F1B0_W2MC2_R1.0": "F1B0_W2MC2_R1.0"}
CONFIGS = {"full": dict(heads=4, head_dim=64, double=2, single=4, side=32, txt=32),
           "quick": dict(heads=2, head_dim=32, double=1, single=2, side=16, txt=16)}


def build(cfg: dict):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    d = cfg["head_dim"]
    model = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=cfg["double"],
                                   num_single_layers=cfg["single"], attention_head_dim=d,
                                   num_attention_heads=cfg["heads"], joint_attention_dim=128,
                                   pooled_projection_dim=128, guidance_embeds=False,
                                   axes_dims_rope=(d // 4, 3 * d // 8, 3 * d // 8)).eval()
    n, g = cfg["side"] ** 2, torch.Generator().manual_seed(0)
    inputs = dict(hidden_states=torch.randn(1, n, 64, generator=g),
                  encoder_hidden_states=torch.randn(1, cfg["txt"], 128, generator=g),
                  pooled_projections=torch.randn(1, 128, generator=g), img_ids=torch.rand(n, 3, generator=g),
                  txt_ids=torch.zeros(cfg["txt"], 3), return_dict=False)
    return model, inputs


def generation(model, inputs: dict, steps: int) -> float:
    x, rest = inputs["hidden_states"], {k: v for k, v in inputs.items() if k != "hidden_states"}
    t0 = time.perf_counter()
    with torch.no_grad():
        for t in torch.linspace(1.0, 0.05, steps):
            x = x - model(hidden_states=x, timestep=t.reshape(1), **rest)[0] / steps
    return time.perf_counter() - t0


def measure(cfg: dict, parallel: bool, steps: int, repeats: int) -> dict:
    import dit_cache_fx

    out = {}
    for name, spec in SETTINGS.items():
        model, inputs = build(cfg)
        if parallel:
            from diffusers import ContextParallelConfig

            model.set_attention_backend("native")
            model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=dist.get_world_size()))
        compiled = torch.compile(model) if spec is None else dit_cache_fx.compile(model, cache=spec)
        generation(compiled, inputs, steps)  # compiles
        times = [generation(compiled, inputs, steps) for _ in range(repeats)]
        cached = len(dit_cache_fx.summary(compiled).cached_steps) if spec else 0
        out[name] = dict(ms_step=statistics.median(times) / steps * 1e3, cached=cached)
        if parallel:
            dist.barrier()
    return out


def _worker(rank: int, world: int, port: int, cfg: dict, steps: int, repeats: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.accelerator.device_count = lambda: 1  # diffusers' CPU mesh setup divides by it (0 on a CPU build)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=600))
    try:
        result = measure(cfg, True, steps, repeats)
        if rank == 0:
            Path(out).write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def table(single: dict, parallel: dict, steps: int, cfg: dict) -> str:
    lines = [f"# bench_cp: Flux-like ({cfg['double']} double + {cfg['single']} single blocks, hidden "
             f"{cfg['heads'] * cfg['head_dim']}, {cfg['side'] ** 2} image + {cfg['txt']} text tokens), {steps} "
             f"steps; torch {torch.__version__}, {datetime.date.today()}", "",
             "| setting | cached | 1 process ms/step | vs R0 | 2 ranks (Ulysses) ms/step | vs R0 |",
             "|---|---|---|---|---|---|"]
    r0 = "dit_cache_fx R0 (never caches)"
    for name in SETTINGS:
        s, p = single[name], parallel[name]
        lines.append(f"| {name} | {s['cached']}/{steps} | {s['ms_step']:.1f} | {single[r0]['ms_step'] / s['ms_step']:.2f}x"
                     f" | {p['ms_step']:.1f} | {parallel[r0]['ms_step'] / p['ms_step']:.2f}x |")
    lines += ["", "One CPU thread per process (2 ranks on 2 cores; the single process also on one thread). Under "
              "context parallelism every decision adds one all-reduce of two floats, inside the graph."]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smaller model")
    p.add_argument("--steps", type=int, default=10, help="steps per generation")
    p.add_argument("--repeats", type=int, default=3, help="timed generations per setting")
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("bench_cp.md"), help="markdown report")
    a = p.parse_args()
    cfg = CONFIGS["quick" if a.quick else "full"]
    torch.set_num_threads(1)
    single = measure(cfg, False, a.steps, a.repeats)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = a.out.with_suffix(".json.tmp")
    mp.start_processes(_worker, args=(2, port, cfg, a.steps, a.repeats, str(tmp)), nprocs=2, start_method="spawn")
    parallel = json.loads(tmp.read_text())
    tmp.unlink()
    text = table(single, parallel, a.steps, cfg)
    a.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    sys.exit(main())
