"""``b2l``: the one command line of the project.

Each command group lives in its own module with a ``register(subparsers)`` function; the heavy
imports happen inside the handlers, so ``b2l --help`` stays fast on a Raspberry Pi.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from b2l import cell_cmd, cloud_cmd, demo_cmd, edge_cmd, hil_cmd, protocol_cmd, schema_cmd, sim_cmd
from twin.errors import B2LError

COMMAND_GROUPS = (
    demo_cmd,
    cloud_cmd,
    edge_cmd,
    sim_cmd,
    cell_cmd,
    hil_cmd,
    protocol_cmd,
    schema_cmd,
)


def build_parser() -> argparse.ArgumentParser:
    """The root parser with every sub-command registered."""
    parser = argparse.ArgumentParser(
        prog="b2l",
        description="Edge-first digital twins for second-life stationary batteries.",
    )
    parser.add_argument("--version", action="version", version=f"b2l {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in COMMAND_GROUPS:
        group.register(subparsers)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("b2l")
    except PackageNotFoundError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit code (2 for usage, 1 for a b2l error)."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except B2LError as exc:
        print(f"b2l: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `b2l protocol show | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
