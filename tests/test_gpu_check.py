"""bench/gpu_check.py cannot rot on CPU: its smoke run fills every section, and only CUDA-only rows skip."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.py"
HEADERS = ("## 1. Kernels", "## 2. The compiled cache", "## 3. Modes")


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")  # tiny sizes: compile time dominates, threads do not help
    r = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, r.stderr[-4000:]
    return r


def _rows(text: str, first_cell: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(f"| {first_cell}")]


def test_cpu_smoke_fills_every_section(tmp_path):
    out = tmp_path / "gpu_check.md"
    r = _run("--device", "cpu", "--smoke", "--out", str(out))
    text = out.read_text()
    assert text.startswith("# dit_cache_fx GPU check") and "- versions: torch " in text
    assert text.strip() in r.stdout  # printed too
    for header in HEADERS:
        assert header in text
    assert "error:" not in text and "crashed" not in text and "skipped: over the time budget" not in text, text
    # what CPU cannot do says so, as a skip
    assert "| dit_cache_fx mode=reduce-overhead cache=F1B0_W1MC2_R1.0 | skipped: needs CUDA |" in text
    assert "| l1_sums | skipped: needs CUDA |" in text  # which CUDA kernel ran
    # the kernels ran their torch branch against float64, within tolerance
    accuracy = _rows(text, "l1_sums | ok |") + _rows(text, "taylor_update | ok |") + _rows(text, "taylor_forecast | ok |")
    assert len(accuracy) == 7 and all(line.count(" ok |") == 4 for line in accuracy), accuracy
    # the cache: R0 never caches, the reconfigured spec caches the known 2 of 4 steps without a recompile,
    # and so does the eager oracle
    assert _rows(text, "dit_cache_fx F1B0_W4_R0 | ok |")[0].split(" | ")[5] == "0/4"
    cached = _rows(text, "dit_cache_fx F1B0_W1MC2_R1.0 | ok |")[0]
    assert " | 2/4 | " in cached and "0 new graphs" in cached
    assert " | 2/4 | " in _rows(text, "eager oracle F1B0_W1MC2_R1.0")[0]
    # per-call host time for every measured row (device time needs CUDA)
    assert "host µs/call | device µs/call" in text
    cells = cached.split(" | ")
    assert cells[cells.index("skipped: needs CUDA", 12) - 1].isdigit(), cached
    assert _rows(text, "dit_cache_fx F1B0_W4_R0 regional | ok |")[0].split(" | ")[5] == "0/4"  # regional mode too
    cached = _rows(text, "dit_cache_fx F1B0_W1MC2_R1.0 regional | ok |")[0]
    assert " | 2/4 | " in cached and "0 new graphs" in cached
    assert "| skipped: cache-dit not installed |" in text or "| cache-dit eager, F1B0_W1MC2_R1.0 | ok |" in text
    # a compile mode ran in its child process, with the cond
    assert " | ok | yes | 2/4 | " in _rows(text, "dit_cache_fx mode=max-autotune-no-cudagraphs")[0]


def test_sections_and_budget(tmp_path):
    out = tmp_path / "report.md"
    _run("--device", "cpu", "--smoke", "--sections", "kernels", "--budget-s", "0", "--out", str(out), timeout=120)
    text = out.read_text()
    assert text.count("not selected (`--sections`).") == 2
    rows = _rows(text, "l1_sums (tiny)") + _rows(text, "FluxTransformerBlock")
    assert rows and all("skipped: over the time budget (0 s)" in line for line in rows), rows
    assert "error:" not in text and "crashed" not in text
