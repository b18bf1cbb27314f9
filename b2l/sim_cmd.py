"""``b2l sim``: simulators. ``b2l sim fleet``: vectorised fleet physics with ageing;
``b2l sim pack``: one pack with its BMS on a CAN interface or a serial line.

Each command of the group is added by its own ``_add_*`` function; the run of ``sim pack`` lives
in ``b2l/sim_pack_cmd.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from b2l.arg_types import (
    duration,
    finite_float,
    fraction,
    non_negative_float,
    positive_float,
    positive_int,
)
from b2l.files import read_text, write_atomically

PROGRESS_EVERY_S = 2.0
PROFILE_RESOLUTION_S = 60.0
PROFILE_MAX_DAYS = 366


def register(subparsers: Any) -> None:
    """Add ``b2l sim`` and its commands."""
    sim = subparsers.add_parser("sim", help="simulators: fleets and packs in virtual time")
    commands = sim.add_subparsers(dest="sim_command", metavar="COMMAND", required=True)
    _add_fleet(commands)
    _add_pack(commands)


def _add_fleet(commands: Any) -> None:
    fleet = commands.add_parser(
        "fleet",
        help="simulate many packs together (physics and ageing only), report cell-steps/s",
        description=(
            "Simulate N packs of M series cells in virtual time, vectorised, with a BMS-like "
            "voltage guard and ageing (calendar and cycle) applied every virtual hour. Prints "
            "progress on stderr, the speed in cell-steps/s and a one-line summary; -o writes "
            "the JSON summary. Currents are positive when charging."
        ),
    )
    fleet.add_argument(
        "--packs", type=positive_int, required=True, metavar="N", help="number of packs"
    )
    fleet.add_argument(
        "--cells", type=positive_int, required=True, metavar="M", help="series cells per pack"
    )
    fleet.add_argument(
        "--days", type=positive_float, required=True, metavar="D", help="virtual days to simulate"
    )
    fleet.add_argument(
        "--dt",
        type=positive_float,
        default=1.0,
        metavar="S",
        help="time step in seconds (default: 1)",
    )
    fleet.add_argument(
        "--chemistry",
        default="nmc_lgm50",
        metavar="SET",
        help="cell parameter set: nmc_lgm50, lfp_a123 or a parameter file PATH.json "
        "(default: nmc_lgm50)",
    )
    fleet.add_argument(
        "--ageing",
        default=None,
        metavar="MODEL",
        help="ageing model: nmc, lfp or PATH.json (default: by the cell's chemistry)",
    )
    fleet.add_argument(
        "--profile",
        default="domestic",
        metavar="PROFILE",
        help="load profile: domestic (PV self-consumption), industrial (peak shaving) or a CSV "
        "file with time_s,current_a or time_s,power_w per pack (default: domestic)",
    )
    fleet.add_argument("--seed", type=int, default=0, help="seed of all randomness (default: 0)")
    fleet.add_argument(
        "--age-spread",
        type=non_negative_float,
        default=0.0,
        metavar="YEARS",
        help="prior age of the packs, uniform in 0..YEARS (mixed-age second-life fleet)",
    )
    fleet.add_argument(
        "--replaced",
        type=fraction,
        default=0.0,
        metavar="X",
        help="fraction of cells that are new replacements in aged packs (default: 0)",
    )
    fleet.add_argument("--initial-soc", type=fraction, default=0.5, metavar="X")
    fleet.add_argument(
        "--ambient",
        type=float,
        default=25.0,
        metavar="DEGC",
        help="ambient temperature (default: 25)",
    )
    fleet.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        metavar="JSON",
        help="write the JSON summary here",
    )
    fleet.add_argument("--quiet", action="store_true", help="no progress lines")
    fleet.set_defaults(handler=_fleet)


def _fleet(args: argparse.Namespace) -> int:
    from simulators.fleet import AgeSpread, Fleet, FleetProgress

    params = _cell_parameters(args.chemistry)
    ageing = _ageing_parameters(args.ageing, params.chemistry)
    profile = _profile(args.profile, args.days, args.dt, args.seed, params.capacity_ah)
    fleet = Fleet(
        params,
        args.packs,
        args.cells,
        profile,
        ageing=ageing,
        age_spread=AgeSpread(max_years=args.age_spread, replaced_fraction=args.replaced),
        seed=args.seed,
        initial_soc=args.initial_soc,
        ambient_c=args.ambient,
    )
    last = [time.monotonic()]

    def progress(p: FleetProgress) -> None:
        now = time.monotonic()
        if args.quiet or (now - last[0] < PROGRESS_EVERY_S and p.fraction < 1.0):
            return
        last[0] = now
        _say(
            f"{100 * p.fraction:5.1f} %  day {p.virtual_time_s / 86_400:8.2f}  "
            f"{p.cell_steps_per_s / 1e6:6.2f} M cell-steps/s  SoH {p.soh_mean:.4f}"
        )

    summary = fleet.run(args.days, args.dt, progress=progress)
    print(f"{summary.cell_steps_per_s:,.0f} cell-steps/s")
    print(summary.one_line())
    if args.output is not None:
        document = summary.to_json_dict()
        document["command"] = {
            "packs": args.packs,
            "cells": args.cells,
            "days": args.days,
            "dt_s": args.dt,
            "chemistry": args.chemistry,
            "ageing": args.ageing,
            "profile": args.profile,
            "seed": args.seed,
            "age_spread_years": args.age_spread,
            "replaced_fraction": args.replaced,
        }
        write_atomically(args.output, json.dumps(document, indent=2) + "\n")
    return 0


def _add_pack(commands: Any) -> None:
    pack = commands.add_parser(
        "pack",
        help="simulate one pack and its BMS on a CAN interface or a serial line",
        description=(
            "Simulate one pack (plant, load, embedded BMS, faults) speaking Pillar 2 on a "
            "python-can interface (--can) or Pillar 1 on a serial line (--serial), as fast as "
            "possible or paced by the wall clock (--realtime), for --duration. A scenario file "
            "(YAML or JSON, see docs/bms-simulator.md) describes the pack, load, BMS and faults; "
            "the options below override it. The first line on stdout says where the BMS is "
            "(a pty path or socket:// URL for --serial); progress goes to stderr, a one-line "
            "summary to stdout at the end, -o writes it as JSON."
        ),
    )
    link = pack.add_mutually_exclusive_group(required=True)
    link.add_argument(
        "--can",
        metavar="INTERFACE[:CHANNEL]",
        help="python-can interface and channel, e.g. virtual:bench, socketcan:can0, "
        "udp_multicast:239.74.163.2 (only inside an isolated network namespace)",
    )
    link.add_argument(
        "--serial",
        metavar="LINK",
        help="pty (prints the device path), tcp:PORT (a server on 127.0.0.1 for pyserial "
        "socket:// clients; tcp:0 picks a free port), tcp:HOST:PORT (bound to the IPv4 "
        "address HOST instead, e.g. tcp:0.0.0.0:5000 inside a container so that another "
        "container's edge can connect; never on a host's real interfaces) or a pyserial URL",
    )
    pack.add_argument("--scenario", type=Path, default=None, metavar="FILE", help="scenario file")
    pack.add_argument(
        "--duration",
        type=duration,
        default=None,
        metavar="TIME",
        help="simulated time: seconds, or with a suffix s, m, h, d (10m, 2h, 3d); default: the "
        "scenario's duration_s; a --realtime run without one goes on until interrupted",
    )
    pack.add_argument(
        "--realtime",
        type=positive_float,
        default=None,
        metavar="SPEEDUP",
        help="pace by the wall clock: SPEEDUP simulated seconds per wall second (1: real "
        "time); default: as fast as possible",
    )
    pack.add_argument("--cells", type=positive_int, default=None, metavar="N", help="series cells")
    pack.add_argument(
        "--chemistry",
        default=None,
        metavar="SET",
        help="cell parameter set: nmc_lgm50, lfp_a123 or a parameter file PATH.json",
    )
    pack.add_argument("--soc", type=fraction, default=None, metavar="X", help="initial SoC")
    pack.add_argument("--seed", type=int, default=None, help="seed of all randomness")
    load = pack.add_mutually_exclusive_group()
    load.add_argument(
        "--profile",
        default=None,
        metavar="PROFILE",
        help="load: domestic (PV self-consumption), industrial (peak shaving) or a CSV file "
        "(time_s,current_a or time_s,power_w)",
    )
    load.add_argument(
        "--current",
        type=finite_float,
        default=None,
        metavar="A",
        help="constant load current (A, positive charging)",
    )
    pack.add_argument(
        "--can-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra argument of can.Bus, e.g. bitrate=500000 (repeatable); the virtual "
        "interface keeps the simulator's timestamps (preserve_timestamps=true) unless told",
    )
    pack.add_argument(
        "--can-log",
        type=Path,
        default=None,
        metavar="PATH",
        help="log every frame sent and command received (.asc, .blf, ... by extension)",
    )
    pack.add_argument(
        "--ground-truth",
        type=Path,
        default=None,
        metavar="PATH",
        help="write the true state (JSON lines, same clock as the frames) here",
    )
    pack.add_argument(
        "-o", "--output", type=Path, default=None, metavar="JSON", help="write the summary here"
    )
    pack.add_argument("--quiet", action="store_true", help="no progress lines")
    pack.set_defaults(handler=_pack)


def _pack(args: argparse.Namespace) -> int:
    from b2l.sim_pack_cmd import run_pack

    return run_pack(args)


def _cell_parameters(name: str) -> Any:
    from pydantic import ValidationError

    from twin.cell_params import CellParameters, builtin_parameter_sets, load_builtin
    from twin.errors import TwinValidationError

    if name in builtin_parameter_sets():
        return load_builtin(name)
    path = Path(name)
    if path.suffix != ".json" or not path.exists():
        known = ", ".join(builtin_parameter_sets())
        raise TwinValidationError(f"no parameter set {name!r}: give one of {known} or a .json")
    try:
        return CellParameters.model_validate_json(read_text(path))
    except ValidationError as exc:
        raise TwinValidationError(f"{path}: not a cell parameter file: {exc}") from None


def _ageing_parameters(name: str | None, chemistry: str) -> Any:
    from pydantic import ValidationError

    from twin.ageing import AgeingParameters, ageing_parameters_for
    from twin.errors import TwinValidationError

    if name is None:
        return ageing_parameters_for(chemistry)
    if not name.endswith(".json"):
        return ageing_parameters_for(name)
    try:
        return AgeingParameters.model_validate_json(read_text(Path(name)))
    except ValidationError as exc:
        raise TwinValidationError(f"{name}: not an ageing parameter file: {exc}") from None


def _profile(name: str, days: float, dt_s: float, seed: int, capacity_ah: float) -> Any:
    from simulators.profiles import (
        csv_profile,
        domestic_pv_self_consumption,
        industrial_load_levelling,
    )

    resolution = max(dt_s, PROFILE_RESOLUTION_S)
    span = min(days + 1.0, PROFILE_MAX_DAYS)  # one spare day for the packs' phase shifts
    if name == "domestic":
        return domestic_pv_self_consumption(span, resolution, seed, capacity_ah)
    if name == "industrial":
        return industrial_load_levelling(span, resolution, seed, capacity_ah)
    path = Path(name)
    return csv_profile(read_text(path), source=str(path))


def _say(message: str) -> None:
    print(f"b2l sim: {message}", file=sys.stderr, flush=True)
