"""``b2l sim pack``: one simulated pack and its BMS on a CAN interface or a serial line.

The parser is ``_add_pack`` in ``b2l/sim_cmd.py``; ``run_pack`` is its handler. The scenario
(``simulators.scenario``) with the command line's overrides gives the pack; the link is opened
here by name (a python-can interface and channel, or ``pty`` / ``tcp:[HOST:]PORT`` / a pyserial
URL), the simulator runs in chunks with progress on stderr, and everything is closed (frames
logged, ground truth flushed) before the summary, also after Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from b2l.files import write_atomically
from twin.errors import B2LError, ConfigError

if TYPE_CHECKING:
    from simulators.pack import PackSimulator
    from simulators.scenario import Scenario

PROGRESS_EVERY_S = 2.0
FAST_CHUNK_S = 10.0
"""Simulated seconds per chunk as fast as possible (progress is looked at between chunks)."""
REALTIME_CHUNK_WALL_S = 0.5
"""Wall seconds per chunk in real time."""


def run_pack(args: argparse.Namespace) -> int:
    """Run ``b2l sim pack``; returns the exit code (130 when interrupted)."""
    from simulators.scenario import load_scenario

    scenario = load_scenario(args.scenario, _overrides(args))
    duration_s = args.duration if args.duration is not None else scenario.duration_s
    if duration_s is None and args.realtime is None:
        raise ConfigError(
            "give --duration (or duration_s in the scenario); only a --realtime run may go on "
            "until interrupted"
        )
    if args.can_log is not None and args.can is None:
        raise ConfigError("--can-log is for --can")
    options = scenario.pack_options()
    options["realtime_factor"] = None if args.realtime is None else 1.0 / args.realtime
    with ExitStack() as stack:
        if args.ground_truth is not None:
            options["ground_truth"] = stack.enter_context(_open_for_writing(args.ground_truth))
        sim, where, stats = _open_simulator(args, scenario, options, stack)
        print(where, flush=True)
        soc_start = float(sim.plant.soc.mean())
        start = time.monotonic()
        interrupted = False
        try:
            with _sigterm_as_interrupt():
                _run(sim, duration_s, args.realtime, quiet=args.quiet)
        except KeyboardInterrupt:
            interrupted = True
        wall_s = time.monotonic() - start
    summary = _summary(args, scenario, sim, where, stats(), soc_start, wall_s, interrupted)
    print(_one_line(summary))
    if args.output is not None:
        write_atomically(args.output, json.dumps(summary, indent=2) + "\n")
    return 130 if interrupted else 0


# ---------------------------------------------------------------------- scenario overrides


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The command line's options as a partial scenario (None: not given)."""
    pack: dict[str, Any] = {}
    if args.cells is not None:
        pack["cells_in_series"] = args.cells
    if args.chemistry is not None:
        chemistry = args.chemistry
        pack["chemistry"] = (
            str(Path(chemistry).resolve()) if chemistry.endswith(".json") else chemistry
        )
    if args.soc is not None:
        pack["initial_soc"] = args.soc
    out: dict[str, Any] = {"pack": pack} if pack else {}
    if args.seed is not None:
        out["seed"] = args.seed
    if args.current is not None:
        out["load"] = {"profile": "constant", "current_a": args.current, "csv": None}
    elif args.profile in ("domestic", "industrial"):
        out["load"] = {"profile": args.profile, "current_a": 0.0, "csv": None}
    elif args.profile is not None:
        out["load"] = {"profile": "csv", "current_a": 0.0, "csv": str(Path(args.profile).resolve())}
    return out


# ---------------------------------------------------------------------- links


def _open_simulator(
    args: argparse.Namespace, scenario: Scenario, options: Any, stack: ExitStack
) -> tuple[PackSimulator, str, Callable[[], dict[str, Any]]]:
    """The simulator on its link, closed by ``stack``; where it is; its link counters."""
    if args.can is not None:
        from simulators.can_bms import CanBmsSimulator

        interface, channel = _can_spec(args.can)
        bus = _open_bus(interface, channel, args.can_option)
        stack.callback(bus.shutdown)
        logger = None if args.can_log is None else _open_can_log(args.can_log)
        if logger is not None:
            stack.callback(logger.stop)
        can_sim = CanBmsSimulator(bus, link_config=scenario.can, can_log=logger, **options)
        stack.callback(can_sim.close)
        where = (
            f"Pillar 2 BMS on {interface}:{channel}" if channel else f"Pillar 2 BMS on {interface}"
        )
        return can_sim, where, lambda: asdict(can_sim.link.stats)
    from simulators.serial_bms import LOOPBACK_HOST, SerialBmsSimulator, TcpLink, open_link

    try:
        link = open_link(args.serial)
    except (OSError, ValueError) as exc:  # pyserial's SerialException is an OSError
        raise B2LError(f"cannot open the serial link {args.serial!r}: {exc}") from None
    stack.callback(link.close)
    if isinstance(link, TcpLink) and link.host != LOOPBACK_HOST:
        _say(f"listening on {link.host}:{link.port} (not only loopback)")
    serial_sim = SerialBmsSimulator(link, link_config=scenario.serial, **options)
    stack.callback(serial_sim.close)
    return serial_sim, f"Pillar 1 BMS on {link.address}", lambda: asdict(serial_sim.protocol.stats)


def _can_spec(spec: str) -> tuple[str, str | None]:
    interface, _, channel = spec.partition(":")
    if not interface:
        raise ConfigError(f"--can {spec!r}: give INTERFACE[:CHANNEL], e.g. virtual:bench")
    return interface, channel or None


def _open_bus(interface: str, channel: str | None, options: list[str]) -> Any:
    import can

    kwargs: dict[str, Any] = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or not key:
            raise ConfigError(f"--can-option {option!r}: give KEY=VALUE")
        kwargs[key] = _option_value(value)
    if interface == "virtual":
        kwargs.setdefault("preserve_timestamps", True)  # frames keep the simulator's clock
    try:
        return can.Bus(interface=interface, channel=channel, **kwargs)
    except (can.CanError, OSError, ValueError, TypeError, ImportError) as exc:
        raise B2LError(
            f"cannot open CAN interface {interface!r} channel {channel!r}: {exc}"
        ) from None


def _option_value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _open_can_log(path: Path) -> Any:
    import can

    try:
        return can.Logger(str(path))
    except (ValueError, OSError, ImportError) as exc:
        raise B2LError(f"cannot write the CAN log {path}: {exc}") from None


@contextmanager
def _open_for_writing(path: Path) -> Iterator[Any]:
    try:
        file = open(path, "w", encoding="utf-8")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise B2LError(f"cannot write {path}: {exc}") from None
    with file:
        yield file


# ---------------------------------------------------------------------- running


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (``docker stop``, a supervisor) stops the run like Ctrl-C (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(
    sim: PackSimulator, duration_s: float | None, speedup: float | None, *, quiet: bool
) -> None:
    """Run to ``duration_s`` (None: until interrupted) in chunks, with progress on stderr."""
    chunk_s = FAST_CHUNK_S if speedup is None else max(0.05, speedup * REALTIME_CHUNK_WALL_S)
    start = last = time.monotonic()
    while duration_s is None or float(sim.env.now) < duration_s:
        target = float(sim.env.now) + chunk_s
        sim.run(target if duration_s is None else min(target, duration_s))
        now = time.monotonic()
        if not quiet and now - last >= PROGRESS_EVERY_S:
            last = now
            _progress(sim, duration_s, now - start)


def _progress(sim: PackSimulator, duration_s: float | None, wall_s: float) -> None:
    t = float(sim.env.now)
    share = f"{100.0 * t / duration_s:5.1f} %  " if duration_s else ""
    bms = sim.bms
    flags = ",".join(sorted(bms.flags)) or "-"
    _say(
        f"{share}t {t:,.0f} s  {t / wall_s:,.0f}x  SoC {float(sim.plant.soc.mean()):.3f}  "
        f"{bms.bms_state}  flags {flags}"
    )


def _say(message: str) -> None:
    print(f"b2l sim: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- summary


def _summary(
    args: argparse.Namespace,
    scenario: Scenario,
    sim: PackSimulator,
    where: str,
    link_stats: dict[str, Any],
    soc_start: float,
    wall_s: float,
    interrupted: bool,
) -> dict[str, Any]:
    plant, bms = sim.plant, sim.bms
    simulated_s = float(sim.env.now)
    return {
        "kind": "b2l.sim_pack_summary",
        "version": 1,
        "scenario": scenario.name,
        "link": where.partition(" on ")[2],
        "protocol": "pillar2-can" if args.can is not None else "pillar1-serial",
        "cells_in_series": bms.cell_count,
        "parameter_set": bms.params.name,
        "seed": scenario.seed,
        "simulated_s": simulated_s,
        "wall_s": wall_s,
        "speed": simulated_s / wall_s if wall_s > 0 else 0.0,
        "realtime_speedup": args.realtime,
        "interrupted": interrupted,
        "link_stats": link_stats,
        "ground_truth": None if args.ground_truth is None else str(args.ground_truth),
        "ground_truth_lines": 0 if sim.ground_truth is None else sim.ground_truth.lines,
        "soc_mean_initial": soc_start,
        "soc_mean_final": float(plant.soc.mean()),
        "soh_min": float(plant.soh.min()),
        "temperature_max_c": float(plant.temperature_c.max()),
        "bms": {
            "state": bms.bms_state,
            "flags": sorted(bms.flags),
            "boot_count": bms.boot_count,
            "equivalent_cycles_mean": float(bms.equivalent_cycles.mean()),
        },
        "faults": [f.model_dump(mode="json") for f in bms.schedule if f.start_s <= simulated_s],
    }


def _one_line(summary: dict[str, Any]) -> str:
    stats = summary["link_stats"]
    sent = stats.get("sent", sum(stats.get("frames_sent", {}).values()))
    faults = ", ".join(f"{f['kind']}@{f['start_s']:g}s" for f in summary["faults"]) or "none"
    flags = ",".join(summary["bms"]["flags"]) or "none"
    return (
        f"{summary['cells_in_series']} cells {summary['parameter_set']} on {summary['link']}: "
        f"{summary['simulated_s']:,.1f} s simulated in {summary['wall_s']:.1f} s "
        f"({summary['speed']:,.0f}x); {sent:,} frames sent; SoC "
        f"{summary['soc_mean_initial']:.3f} -> {summary['soc_mean_final']:.3f}; BMS "
        f"{summary['bms']['state']}, flags {flags}; faults injected: {faults}"
        + ("; interrupted" if summary["interrupted"] else "")
    )
