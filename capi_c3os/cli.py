"""`capi-c3os run | manifests | dev ...` — the one command-line entry point."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from capi_c3os import manifests
from capi_c3os.dev import commands as dev_commands
from capi_c3os.operator import run as run_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="capi-c3os", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run_command.add_arguments(sub.add_parser("run", help="run the manager (all three providers by default)"))
    manifests.add_arguments(sub.add_parser("manifests", help="write CRDs and clusterctl components"))
    dev_commands.add_arguments(sub.add_parser("dev", help="local management plane for demos and tests"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
