"""Multi-process tests: `world` CPU processes in one gloo group, each running a test's body, with a timeout so
that a hang fails instead of stalling the suite."""

from __future__ import annotations

import datetime
import json
import os
import socket
import traceback
from collections.abc import Callable
from pathlib import Path

import torch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, out_dir: str, body: Callable, args: tuple) -> None:
    """One process: joins the group, runs `body(rank, world, *args)` and writes what it returns (a JSON-able
    dict) to `rank<r>.json`, or its traceback to `rank<r>.error`."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120))
    try:
        result = body(rank, world, *args)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
    except BaseException:
        with open(os.path.join(out_dir, f"rank{rank}.error"), "w") as f:
            f.write(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


def run_ranks(body: Callable, out_dir: Path, *args, world: int = 2, timeout_s: float = 420) -> list[dict]:
    """Spawn the ranks (`body` must be a module-level function of a test module) and return each rank's
    result; fails on a hang (a rank still running after `timeout_s`) or on any rank's error."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, world, port, str(out_dir), body, args)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=timeout_s)
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
    errors = {f.name: f.read_text() for f in Path(out_dir).glob("*.error")}
    assert not hung and not errors, f"hung ranks {hung}; errors {errors}"
    return [json.loads((Path(out_dir) / f"rank{r}.json").read_text()) for r in range(world)]
