"""``b2l edge``: the edge runtime beside one battery (a Raspberry Pi next to the pack).

``run`` reads the BMS (CAN or serial), estimates locally, buffers in the SQLite outbox and
forwards to the cloud (HTTPS or MQTT) until SIGTERM or SIGINT; ``status`` reads the status file
the runtime rewrites every few seconds; ``check`` validates a configuration file.

The configuration is ``--config`` (default: ``B2L_EDGE_CONFIG`` or ``/etc/b2l/edge.toml``), a
TOML file whose keys any ``B2L_EDGE_*`` variable overrides (docs/edge-runtime.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = "/etc/b2l/edge.toml"
CONFIG_ENV = "B2L_EDGE_CONFIG"
STALE_PERIODS = 3.0
"""A status older than this many status periods means the runtime is not running."""
EXIT_STALE = 3
"""``b2l edge status`` exit code when the runtime is not running (as ``systemctl status``)."""


def register(subparsers: Any) -> None:
    """Add ``b2l edge`` and its commands."""
    edge = subparsers.add_parser(
        "edge",
        help="the edge runtime: read the BMS, estimate, buffer, forward to the cloud",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = edge.add_subparsers(dest="edge_command", metavar="COMMAND", required=True)
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="TOML",
        help=f"configuration file (default: ${CONFIG_ENV} or {DEFAULT_CONFIG})",
    )

    run = commands.add_parser(
        "run",
        parents=[config],
        help="run the edge runtime until SIGTERM or SIGINT",
        description="Run the edge runtime of one battery: BMS link -> local estimation -> "
        "SQLite outbox -> uplink. Logs go to stderr (text or JSON lines, [logging] format). "
        "Stops cleanly on SIGTERM or SIGINT (exit code 0).",
    )
    run.set_defaults(handler=_run)

    status = commands.add_parser(
        "status",
        parents=[config],
        help="show the runtime's status file (link, last sample, outbox, uplink, alarms)",
        description="Read the status file of a runtime (status_file, or next to the outbox). "
        f"Exit code {EXIT_STALE} when it is older than {STALE_PERIODS:g} status periods "
        "(the runtime is not running), 0 otherwise.",
    )
    status.add_argument(
        "--status-file",
        type=Path,
        default=None,
        metavar="PATH",
        help="read this status file instead of the one the configuration names",
    )
    status.add_argument("--json", action="store_true", help="print the whole status as JSON")
    status.set_defaults(handler=_status)

    check = commands.add_parser(
        "check",
        parents=[config],
        help="validate the configuration (with the environment's overrides) and print it",
        description="Load and validate the configuration as `run` would; print the resolved "
        "settings as JSON with secrets masked. Exit code 1 with one line per bad key.",
    )
    check.set_defaults(handler=_check)


def _config_path(args: argparse.Namespace) -> Path:
    if args.config is not None:
        return Path(args.config)
    return Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


def _run(args: argparse.Namespace) -> int:
    from edge_runtime.config import load_settings
    from edge_runtime.logs import configure
    from edge_runtime.runtime import EdgeRuntime

    settings = load_settings(_config_path(args))
    configure(settings.logging)
    runtime = EdgeRuntime(settings)
    runtime.run()
    return 0


def _check(args: argparse.Namespace) -> int:
    from edge_runtime.config import load_settings

    settings = load_settings(_config_path(args))
    print(settings.model_dump_json(indent=2))
    return 0


def _status(args: argparse.Namespace) -> int:
    from edge_runtime.status import read_status

    path = args.status_file
    if path is None:
        from edge_runtime.config import load_settings

        path = load_settings(_config_path(args), check_files=False).status_path
    status = read_status(path)
    age_s = _age_s(status.get("updated_at"))
    period_s = float(status.get("status_period_s") or 5.0)
    running = (
        age_s is not None and age_s <= STALE_PERIODS * period_s and not status.get("stopped_at")
    )
    if args.json:
        print(json.dumps({**status, "running": running, "age_s": age_s}, indent=2))
    else:
        sys.stdout.write(format_status(status, running=running, age_s=age_s))
    return 0 if running else EXIT_STALE


def _age_s(stamp: Any) -> float | None:
    if not isinstance(stamp, str):
        return None
    try:
        return max(0.0, time.time() - datetime.fromisoformat(stamp).timestamp())
    except ValueError:
        return None


def _ago(stamp: Any) -> str:
    age = _age_s(stamp)
    if age is None:
        return "never"
    return f"{stamp} ({age:.0f} s ago)"


def format_status(status: dict[str, Any], *, running: bool, age_s: float | None) -> str:
    """A few lines for a terminal: state, link, last sample, outbox, uplink, alarms."""
    link = status.get("link") or {}
    outbox = status.get("outbox") or {}
    forwarder = status.get("forwarder") or {}
    uplink = forwarder.get("uplink") or {}
    processing = status.get("processing") or {}
    commands = status.get("commands") or {}
    state = "running" if running else "NOT RUNNING"
    if status.get("stopped_at"):
        state += f" (stopped {status['stopped_at']})"
    elif age_s is not None and not running:
        state += f" (status {age_s:.0f} s old)"
    alarms = status.get("alarms") or []
    lines = [
        f"battery       {status.get('battery_id')}  pid {status.get('pid')}  {state}",
        f"link          {link.get('kind')} (pillar {link.get('pillar')}): "
        f"{'connected' if link.get('connected') else 'DISCONNECTED'}, "
        f"{link.get('samples', 0)} samples, {link.get('bad_frames', 0)} bad frames, "
        f"BMS period {link.get('bms_reporting_period_ms')} ms",
        f"last sample   {_ago(status.get('last_sample_at'))}",
        f"estimates     SoC mean {processing.get('soc_mean')}  min {processing.get('soc_min')}  "
        f"SoS min {processing.get('sos_min')}",
        f"outbox        {outbox.get('pending_records')} pending "
        f"({outbox.get('pending_priority')} priority, {outbox.get('stored_bytes')} B), "
        f"next seq {outbox.get('next_seq')}, dropped {outbox.get('dropped_records')}, "
        f"dead letters {outbox.get('dead_letters')}",
        f"uplink        {uplink.get('kind')}: "
        f"{'connected' if uplink.get('connected') else 'not connected'}, "
        f"last ack {_ago(_iso(forwarder.get('last_ack_s') or outbox.get('last_ack_s')))}, "
        f"last acked seq {outbox.get('last_acked_seq')}, retries {forwarder.get('retries')}"
        + (f", last error: {forwarder.get('last_error')}" if forwarder.get("last_error") else ""),
        f"commands      {commands.get('succeeded', 0)} ok, {commands.get('failed', 0)} failed, "
        f"running {commands.get('running') or 'nothing'}, "
        f"desired period {commands.get('desired_period_ms')} ms",
        f"alarms        {', '.join(alarms) if alarms else 'none'}",
    ]
    return "\n".join(lines) + "\n"


def _iso(epoch_s: Any) -> str | None:
    if not isinstance(epoch_s, int | float):
        return None
    return datetime.fromtimestamp(float(epoch_s), UTC).isoformat()


__all__ = ["format_status", "register"]
