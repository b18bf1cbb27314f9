"""One simulated pack without its link: the composition the CAN and serial simulators share.

``build_pack`` wires a clock (``simulators.clock``), the plant (given, or built from a parameter
set), its load (``PlantDriver``), the BMS emulation with its scheduled faults and the ground truth
(``GroundTruthWriter``), and spawns the seed of the link's randomness. ``PackSimulator`` holds
that composition, runs it (as fast as possible or paced by the wall clock) and closes it; the
link simulators (``CanBmsSimulator``, ``SerialBmsSimulator``) derive from it and add their link.
A scenario file (``simulators.scenario``) produces the same options as keyword arguments.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self, TypedDict, Unpack

import numpy as np
import simpy
import simpy.rt
from numpy.typing import ArrayLike

from simulators.bms import (
    BmsConfig,
    BmsEmulator,
    CurrentProfile,
    Fault,
    GroundTruthWriter,
    PlantDriver,
)
from simulators.clock import make_environment
from simulators.plant import PackPlant
from twin.cell_params import CellParameters, load_builtin
from twin.errors import ConfigError
from twin.pack_model import PackModel

__all__ = ["PackOptions", "PackSimulator", "SimulatedPack", "build_pack"]


class PackOptions(TypedDict, total=False):
    """Keyword arguments of ``build_pack`` (and of every pack simulator); see its docstring."""

    plant: PackPlant | None
    pack_index: int
    params: CellParameters | str
    cells_in_series: int
    soc: ArrayLike
    ambient_c: ArrayLike
    current_a: CurrentProfile
    faults: Iterable[Fault]
    bms_config: BmsConfig | None
    realtime_factor: float | None
    plant_dt_s: float
    ground_truth: str | Path | IO[str] | None
    ground_truth_period_s: float
    timestamp_origin_s: float | None
    seed: int


@dataclass
class SimulatedPack:
    """A wired pack: clock, plant, load, BMS, ground truth; ``link_seed`` for its link."""

    env: simpy.Environment
    plant: PackPlant
    driver: PlantDriver
    bms: BmsEmulator
    ground_truth: GroundTruthWriter | None
    timestamp_origin_s: float
    link_seed: np.random.SeedSequence


def build_pack(
    *,
    plant: PackPlant | None = None,
    pack_index: int = 0,
    params: CellParameters | str = "nmc_lgm50",
    cells_in_series: int = 16,
    soc: ArrayLike = 0.5,
    ambient_c: ArrayLike = 25.0,
    current_a: CurrentProfile = 0.0,
    faults: Iterable[Fault] = (),
    bms_config: BmsConfig | None = None,
    realtime_factor: float | None = None,
    plant_dt_s: float = 0.1,
    ground_truth: str | Path | IO[str] | None = None,
    ground_truth_period_s: float = 1.0,
    timestamp_origin_s: float | None = None,
    seed: int = 0,
) -> SimulatedPack:
    """Wire one simulated pack.

    Either pass a ``plant`` (its pack ``pack_index`` is simulated; the plant is stepped here) or
    let one be built from ``params`` (a parameter set or a built-in name), ``cells_in_series``,
    ``soc`` and ``ambient_c`` with the cell-to-cell spread drawn from ``seed``. ``current_a`` is
    the load (A, positive charging): a constant or ``f(time_s)``. ``realtime_factor`` None runs as
    fast as possible; ``x`` makes one simulated second take ``x`` wall seconds. ``ground_truth``
    (a path or a text file) gets a JSON line every ``ground_truth_period_s``; its timestamps and
    the link's are ``timestamp_origin_s`` (default: the wall clock now) + simulated time.
    """
    env = make_environment(realtime_factor)
    if plant is None:
        cell = load_builtin(params) if isinstance(params, str) else params
        model = PackModel.build(cell, cells_in_series=cells_in_series, seed=seed)
        plant = PackPlant(model, soc, ambient_c)
    origin_s = time.time() if timestamp_origin_s is None else timestamp_origin_s
    if not math.isfinite(origin_s):
        raise ConfigError("timestamp_origin_s must be finite")
    bms_seed, link_seed = np.random.SeedSequence(seed).spawn(2)
    driver = PlantDriver(env, plant, current_a, plant_dt_s)
    bms = BmsEmulator(
        env, plant, pack_index=pack_index, config=bms_config, faults=faults, seed=bms_seed
    )
    writer = None
    if ground_truth is not None:
        writer = GroundTruthWriter(
            env, bms, ground_truth, period_s=ground_truth_period_s, timestamp_origin_s=origin_s
        )
    return SimulatedPack(env, plant, driver, bms, writer, origin_s, link_seed)


class PackSimulator:
    """Base of the link simulators: one pack (``build_pack``), run and closed here.

    Subclasses add their link after ``super().__init__`` and extend ``close``. Use as a context
    manager (or call ``close``) to flush the ground truth.
    """

    def __init__(self, **options: Unpack[PackOptions]) -> None:
        pack = build_pack(**options)
        self.pack = pack
        self.env = pack.env
        self.plant = pack.plant
        self.driver = pack.driver
        self.bms = pack.bms
        self.ground_truth = pack.ground_truth
        self.timestamp_origin_s = pack.timestamp_origin_s
        self._started = False
        self._closed = False

    @property
    def realtime(self) -> bool:
        """Paced by the wall clock."""
        return isinstance(self.env, simpy.rt.RealtimeEnvironment)

    def run(self, until_s: float) -> None:
        """Advance the simulation to ``until_s`` (simulated seconds since the start)."""
        if until_s < float(self.env.now):
            raise ConfigError(f"cannot run back to {until_s} s from {self.env.now} s")
        if until_s == float(self.env.now):
            return
        if not self._started and isinstance(self.env, simpy.rt.RealtimeEnvironment):
            self.env.sync()  # the wall clock starts now, not at construction
        self._started = True
        self.env.run(until=until_s)

    def close(self) -> None:
        """Flush and close the ground truth (idempotent; subclasses close their link first)."""
        if self._closed:
            return
        self._closed = True
        if self.ground_truth is not None:
            self.ground_truth.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
