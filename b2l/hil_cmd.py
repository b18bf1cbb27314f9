"""``b2l hil``: hardware-in-the-loop bench tools."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from types import FrameType
from typing import Any


def register(subparsers: Any) -> None:
    """Add ``b2l hil services``."""
    hil = subparsers.add_parser("hil", help="hardware-in-the-loop bench tools")
    commands = hil.add_subparsers(dest="hil_command", metavar="COMMAND", required=True)
    services = commands.add_parser(
        "services",
        help="start a throwaway PostgreSQL and Mosquitto on loopback for a bench",
        description="Start PostgreSQL and Mosquitto from the Debian binaries in a temp dir on "
        "random 127.0.0.1 ports, print their URLs, and remove everything on exit.",
    )
    services.add_argument(
        "--duration", type=float, default=None, help="seconds to run (default: until Ctrl-C)"
    )
    services.add_argument("--json", action="store_true", help="print the URLs as JSON")
    services.set_defaults(handler=_services)


def _services(args: argparse.Namespace) -> int:
    from hil.services import MosquittoServer, PostgresServer, ServiceError
    from twin.errors import ConfigError

    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so the services are stopped and removed
    try:
        with PostgresServer() as postgres, MosquittoServer() as mosquitto:
            urls = {
                "database_url": postgres.url,
                "mqtt_host": mosquitto.host,
                "mqtt_port": mosquitto.port,
            }
            if args.json:
                print(json.dumps(urls), flush=True)
            else:
                print(f"PostgreSQL  {postgres.url}")
                print(f"Mosquitto   mqtt://{mosquitto.host}:{mosquitto.port}")
                print("Ctrl-C stops both and removes their data.", flush=True)
            deadline = None if args.duration is None else time.monotonic() + args.duration
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.2)
    except ServiceError as exc:
        raise ConfigError(str(exc)) from exc
    return 0


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    sys.exit(0)
