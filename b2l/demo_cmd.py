"""``b2l demo``: the cloud, simulated packs and their edge runtimes on one machine.

The work is ``hil.demo.run_demo``; this module is its command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from b2l.arg_types import duration, positive_int
from b2l.files import write_atomically


def register(subparsers: Any) -> None:
    """Add ``b2l demo``."""
    demo = subparsers.add_parser(
        "demo",
        help="run the whole system locally: cloud, simulated packs, edge runtimes",
        description=(
            "Start the cloud on the embedded default (SQLite in --data-dir, HTTP on loopback), "
            "N simulated packs in real time (Pillar 2 on CAN and Pillar 1 on serial in turn) "
            "each with its edge runtime in a process of its own, print the API and docs URL "
            "and a demo operator login, and show a live summary per battery (SoC, SoH, SoS, "
            "last seen, alarms) read through the public API. Ctrl-C stops everything."
        ),
    )
    demo.add_argument("--packs", type=positive_int, default=2, metavar="N", help="packs (2)")
    demo.add_argument("--cells", type=positive_int, default=16, metavar="M", help="cells (16)")
    demo.add_argument(
        "--duration",
        type=duration,
        default=None,
        metavar="TIME",
        help="how long to run: seconds, or with s, m, h (default: until Ctrl-C)",
    )
    demo.add_argument(
        "--port", type=int, default=8000, help="the cloud's HTTP port on 127.0.0.1 (0: any free)"
    )
    demo.add_argument(
        "--database-url",
        default=None,
        metavar="URL",
        help="the cloud's database (default: sqlite in --data-dir; postgresql://... works too)",
    )
    demo.add_argument(
        "--data-dir",
        type=Path,
        default=Path("b2l-data/demo"),
        metavar="DIR",
        help="database, outboxes, logs (default: ./b2l-data/demo)",
    )
    demo.add_argument(
        "--operator-password",
        default=None,
        metavar="PASSWORD",
        help="the demo operator's password (default: generated once, kept in the data dir)",
    )
    demo.add_argument(
        "--refresh", type=duration, default=2.0, metavar="TIME", help="summary period (2 s)"
    )
    demo.add_argument("-o", "--output", type=Path, default=None, help="write the last summary")
    demo.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from hil.demo import DemoOptions, run_demo
    from twin.errors import ConfigError

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: give 0..65535 (0: any free port)")
    lines = run_demo(
        DemoOptions(
            packs=args.packs,
            cells=args.cells,
            duration_s=args.duration,
            port=args.port,
            database_url=args.database_url,
            data_dir=args.data_dir,
            operator_password=args.operator_password,
            refresh_s=args.refresh,
        ),
        out=sys.stdout,
    )
    if args.output is not None:
        summary = {"kind": "b2l.demo_summary", "batteries": [line.as_dict() for line in lines]}
        write_atomically(args.output, json.dumps(summary, indent=2) + "\n")
    return 0
