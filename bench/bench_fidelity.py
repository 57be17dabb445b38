"""Fidelity benchmark entry point: writes bench/fidelity.md and bench/fidelity.png.

    python bench/bench_fidelity.py [--steps 28,50] [--backend inductor] ...   (same as `dit-cache-fx bench`)

The logic lives in dit_cache_fx/digits/fidelity.py.
"""

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing
from dit_cache_fx.digits import fidelity  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=fidelity.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fidelity.add_args(parser)
    parser.set_defaults(out_dir=HERE)
    fidelity.main(parser.parse_args())
