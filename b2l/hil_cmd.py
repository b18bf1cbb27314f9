"""``b2l hil``: hardware-in-the-loop bench tools."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from types import FrameType
from typing import Any

OPERATOR_PASSWORD_ENV = "B2L_OPERATOR_PASSWORD"


def register(subparsers: Any) -> None:
    """Add ``b2l hil services`` and ``b2l hil provision``."""
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

    provision = commands.add_parser(
        "provision",
        help="migrate a bench's cloud database, register its batteries and an operator",
        description="Bring the database (--database-url or B2L_DATABASE_URL) to the newest "
        "schema, register each --battery unless it exists (with its built-in cell parameters, "
        "so the cloud mirror runs), give it fresh device credentials (revoking older ones) and "
        f"create the operator user (password from ${OPERATOR_PASSWORD_ENV}) with a grant on "
        "every battery. Safe to run again. Prints one line per battery; --json prints the "
        "device credentials (for HTTP uplinks; MQTT devices use the broker's password file).",
    )
    provision.add_argument(
        "--battery",
        action="append",
        required=True,
        type=_battery_spec,
        metavar="ID[:CHEMISTRY[:CELLS]]",
        help="a battery to register, e.g. bench-serial-01:nmc_lgm50:16 (repeatable; "
        "default chemistry nmc_lgm50, 16 series cells)",
    )
    provision.add_argument(
        "--operator", default="bench-operator", help="operator user name (bench-operator)"
    )
    provision.add_argument(
        "--database-url",
        metavar="URL",
        default=None,
        help="SQLAlchemy URL (default: B2L_DATABASE_URL or the embedded SQLite)",
    )
    provision.add_argument("--json", action="store_true", help="print the devices as JSON")
    provision.set_defaults(handler=_provision)


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


def _battery_spec(text: str) -> Any:
    from hil.provision import BatterySpec

    battery_id, _, rest = text.partition(":")
    chemistry, _, cells = rest.partition(":")
    if not battery_id:
        raise argparse.ArgumentTypeError(f"{text!r}: give ID[:CHEMISTRY[:CELLS]]")
    try:
        count = int(cells) if cells else 16
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: {cells!r} is not a cell count") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: the cell count must be positive")
    return BatterySpec(battery_id, chemistry or "nmc_lgm50", count)


def _provision(args: argparse.Namespace) -> int:
    import os

    from pydantic import ValidationError
    from sqlalchemy.exc import SQLAlchemyError

    from cloud.settings import CloudSettings
    from hil.provision import provision
    from twin.errors import B2LError, ConfigError

    password = os.environ.get(OPERATOR_PASSWORD_ENV, "")
    if not password:
        raise ConfigError(f"set {OPERATOR_PASSWORD_ENV} to the operator's password")
    try:
        settings = (
            CloudSettings(database_url=args.database_url) if args.database_url else CloudSettings()
        )
    except ValidationError as exc:
        raise ConfigError(f"bad B2L_* settings: {exc}") from None
    try:
        devices = provision(
            settings, args.battery, operator=args.operator, operator_password=password
        )
    except SQLAlchemyError as exc:
        raise B2LError(f"cannot provision the database: {type(exc).__name__}: {exc}") from None
    if args.json:
        print(
            json.dumps(
                {
                    battery_id: {"device_id": new.device_id, "secret": new.secret}
                    for battery_id, new in devices.items()
                }
            )
        )
    else:
        for battery_id, new in devices.items():
            print(f"battery {battery_id}: registered, device {new.device_id}")
        print(f"operator {args.operator}: ready", flush=True)
    return 0
