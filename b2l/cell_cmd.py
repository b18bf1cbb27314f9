"""``b2l cell``: cell models from laboratory tests."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from b2l.cell_estimate_cmd import add_estimate
from b2l.files import read_text, write_atomically


def register(subparsers: Any) -> None:
    """Add ``b2l cell`` and its commands."""
    cell = subparsers.add_parser("cell", help="cell models: identify parameters from lab tests")
    commands = cell.add_subparsers(dest="cell_command", metavar="COMMAND", required=True)
    _add_identify(commands)
    add_estimate(commands)


def _add_identify(commands: Any) -> None:
    identify = commands.add_parser(
        "identify",
        help="identify a parameter file from an OCV test and an HPPC test",
        description=(
            "Identify the equivalent-circuit parameters of a cell from two CSV logs with the "
            "columns time_s,current_a,voltage_v,temperature_c (current positive when charging): "
            "a low-rate (C/20) OCV test that starts fully charged, discharges to the lower "
            "voltage limit and preferably charges back, and an HPPC pulse test that starts "
            "fully charged. Writes a JSON parameter file."
        ),
    )
    identify.add_argument("--ocv", type=Path, required=True, metavar="CSV", help="OCV test log")
    identify.add_argument("--pulse", type=Path, required=True, metavar="CSV", help="HPPC test log")
    identify.add_argument(
        "-o", "--output", type=Path, required=True, metavar="JSON", help="parameter file to write"
    )
    identify.add_argument("--name", help="name of the parameter set (default: output file stem)")
    identify.add_argument("--chemistry", default="unknown", help="e.g. NMC, LFP (default: unknown)")
    identify.add_argument(
        "--rc", type=int, choices=(1, 2, 3), default=2, help="number of RC pairs (default: 2)"
    )
    identify.add_argument(
        "--slow-rc",
        action="store_true",
        help="fit the slowest RC pair on the rests after the SoC steps of the HPPC test "
        "(better for long loads; needs --rc 2 or 3)",
    )
    identify.add_argument("--voltage-min", type=float, metavar="V", help="lower voltage limit")
    identify.add_argument("--voltage-max", type=float, metavar="V", help="upper voltage limit")
    identify.set_defaults(handler=_identify)


def _identify(args: argparse.Namespace) -> int:
    from twin.identification import identify

    ocv_path: Path = args.ocv
    pulse_path: Path = args.pulse
    output: Path = args.output
    ocv_log = _read_log(ocv_path)
    pulse_log = _read_log(pulse_path)
    params = identify(
        ocv_log,
        pulse_log,
        name=args.name or output.stem,
        chemistry=args.chemistry,
        n_rc=args.rc,
        slow_rc=args.slow_rc,
        voltage_min_v=args.voltage_min,
        voltage_max_v=args.voltage_max,
        data_source=f"{ocv_path.name} (OCV) and {pulse_path.name} (HPPC)",
        progress=_progress,
    )
    write_atomically(output, params.to_json() + "\n")
    fit = params.fit or {}
    print(
        f"{output}: capacity {params.capacity_ah:.4f} Ah, {fit.get('n_pulses')} pulses, "
        f"HPPC re-simulation RMSE {_mv(fit.get('hppc_rmse_v'))} mV "
        f"(max {_mv(fit.get('hppc_max_abs_error_v'))} mV)"
    )
    return 0


def _read_log(path: Path) -> Any:
    from twin.lab_data import cell_log, parse_csv

    log = cell_log(parse_csv(read_text(path), source=str(path)), source=str(path))
    _progress(f"{path}: {len(log)} rows, {(log.time_s[-1] - log.time_s[0]) / 3600:.2f} h")
    return log


def _progress(message: str) -> None:
    print(f"b2l cell: {message}", file=sys.stderr, flush=True)


def _mv(value: object) -> str:
    return f"{1e3 * value:.2f}" if isinstance(value, float) else "?"
