"""Wheels of what the lent GPU image lacks, to carry there with the working tree (under 64 MiB in all).

    python bench/gpu_wheels.py            # -> build/gpu_wheels/*.whl, then prints the device command

The image (torch 2.11.0+cu130, Triton 3.6, Python 3.12, no network) has numpy, safetensors, Pillow, requests,
regex, filelock, zipp and huggingface-hub, but no diffusers: this downloads the pure-Python wheels of diffusers
(the version installed here) and importlib_metadata, and builds this checkout's own wheel. On the device, with
`build/gpu_wheels` carried, one command installs them to a target dir (nothing of the image's changes) and
runs `bench/gpu_check.py` under its soft budget (printed below; `README.md`, "Supported torch releases").
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "build" / "gpu_wheels"
LIMIT = 64 * 2**20  # what travels with the working tree
# diffusers' requirements the image lacks (pure Python; the rest are in the image)
EXTRA = ["importlib_metadata"]
DEVICE_COMMAND = ("python3 -m pip install -q --no-index --no-deps --target /tmp/dcf build/gpu_wheels/*.whl && "
                  "PYTHONPATH=/tmp/dcf python3 bench/gpu_check.py --budget-s {budget} --out $OUT/gpu_check.md")


def build(out: Path, diffusers: str) -> list[Path]:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
                    "-d", str(out), f"diffusers=={diffusers}", *EXTRA], check=True)
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "-w", str(out), str(REPO)], check=True)
    return sorted(out.glob("*.whl"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--diffusers", default=importlib.metadata.version("diffusers"),
                   help="diffusers version (default: the one installed here)")
    p.add_argument("--budget-s", type=int, default=420, help="gpu_check.py's soft budget on the device")
    a = p.parse_args(argv)
    wheels = build(OUT, a.diffusers)
    total = sum(w.stat().st_size for w in wheels)
    for w in wheels:
        print(f"{w.stat().st_size / 2**20:7.2f} MiB  {w.relative_to(REPO)}")
    print(f"{total / 2**20:7.2f} MiB in all (limit {LIMIT / 2**20:.0f} MiB)")
    print("\ndevice run: carry ['build/gpu_wheels'], command:\n  " + DEVICE_COMMAND.format(budget=a.budget_s))
    return 0 if total < LIMIT else 1


if __name__ == "__main__":
    sys.exit(main())
