"""The fast test subset on other torch releases, each in its own venv (the suite itself runs on torch 2.13).

    python bench/torch_versions.py 2.11.0                  # creates /work/venv-t211 once, then reuses it
    python bench/torch_versions.py 2.11.0 2.15.0 --venv-root /tmp/venvs
    python bench/torch_versions.py 2.11.0 --tests tests/test_kernels.py   # another subset

A venv gets `torch==VERSION` from the registry (a CUDA build: several GB, but it runs on CPU), then this
checkout editable with its `test` extra, never touching the Python that runs this script. For Triton < 3.9
(torch 2.11 pins Triton 3.6) it also pins numpy < 2.4: Triton 3.6's interpreter, which the kernel tests run
under, converts 1-element arrays with `int()`, which numpy 2.4 refuses. One line per version is printed, e.g.
`torch 2.11.0 (triton 3.6.0, python 3.11.7): 152 passed, 6 skipped in 1412s`; the exit status is non-zero if
any version failed.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# core models, kernels, context parallel in one mode, a couple of pipelines, the regional mode
FAST_SUBSET = [
    "tests/test_config.py",
    "tests/test_compat.py",
    "tests/test_passes_blocks.py",
    "tests/test_passes_rewrite.py",
    "tests/test_passes_graph_utils.py",
    "tests/test_data_dependent.py",
    "tests/test_kernels.py",
    "tests/test_policy.py",
    "tests/test_errors.py",
    "tests/test_models.py::test_model_matches_eager_and_oracle[flux]",
    "tests/test_models.py::test_model_matches_eager_and_oracle[wan]",
    "tests/test_regional.py::test_regional_matches_whole_graph_and_oracle[wan-1]",
    "tests/test_regional.py::test_weights_are_read_by_slot_and_follow_the_model",
    # skipped before torch 2.13 (compile() raises UnsupportedTorchError there; tests/test_errors.py checks it)
    "tests/test_context_parallel.py::test_context_parallel_ranks_decide_together[ulysses]",
    "tests/test_pipelines.py::test_pipeline[flux]",
    "tests/test_pipelines.py::test_pipeline[wan21]",
    "tests/test_dbprune.py::test_calibrated_prune_equals_oracle[foca-cfg-regional]",
]


def venv_for(version: str, root: Path) -> Path:
    """`<root>/venv-t<major><minor>` with torch `version` and this checkout (made once, then reused)."""
    major, minor = version.split(".")[:2]
    venv = root / f"venv-t{major}{minor}"
    python = venv / "bin" / "python"
    if python.exists() and _torch_version(python) == version:
        return venv
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, f"torch=={version}"], check=True)
    subprocess.run([*pip, "-e", f"{REPO}[test]"], check=True)
    triton = _module_version(python, "triton")
    if triton and tuple(int(x) for x in re.findall(r"\d+", triton)[:2]) < (3, 9):
        subprocess.run([*pip, "numpy<2.4"], check=True)  # Triton < 3.9's interpreter (see the docstring)
    return venv


def _module_version(python: Path, name: str) -> str | None:
    code = f"import importlib.metadata as m\ntry: print(m.version({name!r}))\nexcept Exception: pass"
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True).stdout.strip()
    return out or None


def _torch_version(python: Path) -> str | None:
    v = _module_version(python, "torch")
    return v.split("+")[0] if v else None


def run_subset(venv: Path, tests: list[str], timeout_s: float) -> tuple[bool, str]:
    """pytest over `tests` with the venv's Python: (passed, pytest's summary line)."""
    python = venv / "bin" / "python"
    start = time.perf_counter()
    try:
        r = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], cwd=REPO,
                           capture_output=True, text=True, timeout=timeout_s, env=dict(os.environ))
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout_s:.0f}s"
    lines = [ln for ln in r.stdout.strip().splitlines() if ln.strip()]
    summary = lines[-1].strip("= ") if lines else r.stderr.strip()[-300:]
    summary = re.sub(r" in [\d.]+s( \([\d:]+\))?$", "", summary) + f" in {time.perf_counter() - start:.0f}s"
    if r.returncode != 0:
        failed = [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))]
        summary += "".join(f"\n    {ln}" for ln in failed)
    return r.returncode == 0, summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("versions", nargs="+", help="torch releases, e.g. 2.11.0 2.15.0")
    p.add_argument("--venv-root", type=Path, default=Path("/work"), help="where the venvs live (default /work)")
    p.add_argument("--tests", nargs="+", default=FAST_SUBSET, help="pytest arguments (default: the fast subset)")
    p.add_argument("--timeout-s", type=float, default=3600, help="per version, for pytest alone")
    args = p.parse_args(argv)
    ok = True
    for version in args.versions:
        venv = venv_for(version, args.venv_root)
        python = venv / "bin" / "python"
        passed, summary = run_subset(venv, args.tests, args.timeout_s)
        ok &= passed
        print(f"torch {version} (triton {_module_version(python, 'triton')}, python "
              f"{'.'.join(map(str, sys.version_info[:3]))}): {summary}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
