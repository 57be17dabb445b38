"""Command line: `dit-cache-fx demo` (or `python -m dit_cache_fx demo`) and `dit-cache-fx bench`."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    from dit_cache_fx import demo
    from dit_cache_fx.digits import fidelity

    p = argparse.ArgumentParser(prog="dit-cache-fx", description="DiT step caching (DBCache) as a torch.compile pass")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="eager vs torch.compile vs cached compile on the shipped digits DiT")
    demo.add_args(d)
    d.set_defaults(run=demo.main)
    b = sub.add_parser("bench", help="fidelity benchmark: caching vs fewer steps at equal compute")
    fidelity.add_args(b)
    b.set_defaults(run=fidelity.main)
    args = p.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
