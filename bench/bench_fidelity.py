"""Fidelity benchmark entry point: writes bench/fidelity.md and bench/fidelity.png.

    python bench/bench_fidelity.py [--steps 28,50] [--fn 1,2,3] ...   (the same as `dit-cache-fx bench`)

The logic lives in dit_cache_fx/digits/fidelity.py.
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing
from dit_cache_fx.__main__ import main  # noqa: E402

if __name__ == "__main__":
    main(["bench", "--out-dir", str(HERE), *sys.argv[1:]])
