"""Command line: ``python -m fastpool {info,demo,bench}``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastpool", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="version, backends (usable or why not), threads, library versions")
    # add_help=False: `demo -h` and `bench -h` reach the modules' own parsers, which have the
    # options
    sub.add_parser(
        "demo", help="show fastpool on real arrays, checked against PyTorch (demo -h)",
        add_help=False,
    )
    sub.add_parser("bench", help="time the backends against PyTorch (bench -h)", add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "info":
        if rest:
            parser.error(f"info takes no arguments; got {' '.join(rest)}")
        from ._info import info_text

        print(info_text())
        return 0
    if args.command == "demo":
        from ._demo import main as demo_main

        return demo_main(rest)
    if args.command == "bench":
        from .bench import main as bench_main

        return bench_main(rest)
    return 2


if __name__ == "__main__":
    sys.exit(main())
