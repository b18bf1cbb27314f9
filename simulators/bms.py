"""Embedded BMS emulation over a ``PackPlant``: what the firmware of a real BMS would see and do.

Link-agnostic: this module knows nothing of CAN or serial frames. A link (``simulators.can_bms``
for Pillar 2, the serial simulator for Pillar 1) reads the BMS's public state to build its frames
and turns the command frames it receives into calls of the ``request_*`` methods, whose return
value is the acknowledgement result (``"ok"``, ``"rejected"``, ``"invalid"``, ``"busy"``).

Pieces:

* ``PlantDriver``: a SimPy process stepping the plant (the true state) with a load current.
* ``SensorModel``: one measurement channel, ``quantise(true + offset + noise)``, seeded
  ``numpy.random.Generator`` (never the global random state).
* ``Fault`` / ``FaultSchedule``: what goes wrong and when; ``FaultState`` holds the effect of the
  active faults per cell and per sensor.
* ``BmsEmulator``: samples the plant every ``sample_period_s`` like the cell-monitor ADC,
  estimates SoC (the twin's EKF), SoS and alarms (``twin.safety``) every
  ``estimation_period_s``, runs the state machine (init, standby, precharge, charging,
  discharging, fault, shutdown), drives the contactors and the bleed resistors, and obeys
  commands (reporting period, balancing, contactor, reset).

Fault kinds and how the BMS sees them (``magnitude`` in brackets, default after ``=``):

==========================  ==================================================================
``sensor_stuck``            the channel (``sensor``: voltage, temperature, current of a cell or
                            of the pack) repeats one value [the value; None = the last reading].
                            Detected (FaultSensor) on a cell channel by ``StuckChannelDetector``:
                            one reading for ``stuck_detection_s``, repeated more often than
                            the sensor's noise allows or while the other cells moved.
``sensor_offset``           reading + magnitude [V, K or A, required]. A cell-voltage offset
                            larger than ``pack_voltage_plausibility_v`` breaks the check "sum
                            of cells = pack voltage" (FaultSensor); smaller ones go unseen.
``sensor_noise``            extra white noise [std, required], unseen by the BMS.
``open_sense_wire``         the wire above cell k opens: channel k reads ~0 V, channel k+1
                            reads cells k and k+1 together (saturated at 6.5 V, the ADC full
                            scale). FaultOpenSenseWire (and FaultSensor for the high channel);
                            hard fault.
``internal_short``          ``plant.leak_a`` of the cell [A = 0.2] and its heat
                            (leak x cell voltage) in ``plant.extra_heat_w``: at rest the cell's
                            voltage and SoC fall and it warms; the SoS self-discharge trend
                            raises FaultInternalShort after ``SafetyConfig.rest_settle_s`` +
                            ``self_discharge_window_s`` of rest.
``thermal_runaway_precursor``  self-heating in ``plant.extra_heat_w`` that ramps the cell's
                            temperature at [K/min = 5] (heat = C dT/dt + losses to ambient);
                            FaultThermalRunawayPrecursor from the dT/dt trend; hard fault.
``contactor_welded``        the contactor stays closed when opened: FaultContactor,
                            ContactorState fault.
``insulation_loss``         the isolation monitor reads [ohm = 0]; FaultInsulation below
                            ``insulation_min_ohm_per_v`` x pack voltage.
``frame_loss``              link: each frame is dropped with probability [= 0.5].
``frame_corruption``        link: each frame is garbled with probability [= 0.5].
``bus_off``                 link: the controller is off the bus for ``duration_s`` (then a
                            recovery time); FaultCommunication for a while afterwards.
``bms_reboot``              the BMS resets (watchdog, brown-out): silent for ``duration_s``
                            (None: ``reboot_duration_s``), then boots at init: RAM state lost
                            (reporting period, balancing, latched faults, SoC estimate).
==========================  ==================================================================

Balancing bleeds ``balancing_current_a`` from each selected cell through ``plant.leak_a`` (the
resistor's heat stays on the BMS board, not in the cell). A ``BmsEmulator`` owns ``leak_a`` and
``extra_heat_w`` of its pack: it overwrites them (short + bleed, short + precursor heat) every
``sample_period_s``, also while the BMS is off. One emulator serves one pack; several (one per
pack) can share a plant and its ``PlantDriver``.

Decisions a real firmware would make and this one does: hard faults (``hard_faults``) latch,
open the contactors and drop the close request (the EDGE must clear the faults, then ask for the
contactors again); SoC comes from the twin's EKF on the BMS's own readings, so a cell that loses
charge to an internal short shows it in its SoC; SoH is the pack's learned value, modelled as the
plant's true SoH; equivalent cycles and SoH survive a reboot, everything else starts over.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Callable, Generator, Iterable
from pathlib import Path
from typing import IO, Annotated, Any, Literal

import numpy as np
import simpy
from numpy.typing import ArrayLike
from pydantic import Field, model_validator

from simulators.plant import PackPlant
from twin.base import B2LModel, NonNegativeFloat, PositiveFloat
from twin.cell_model import CellModel, FloatArray
from twin.errors import ConfigError
from twin.estimation import EkfState, SocEstimator
from twin.protocols.can_codec import BALANCING_MODES, FAULTS
from twin.safety import Alarm, SafetyConfig, SafetyMonitor, SafetyState

__all__ = [
    "DEFAULT_HARD_FAULTS",
    "BmsConfig",
    "BmsEmulator",
    "BmsPhase",
    "CurrentProfile",
    "Fault",
    "FaultKind",
    "FaultSchedule",
    "FaultState",
    "GroundTruthWriter",
    "PlantDriver",
    "SensorModel",
    "StuckChannelDetector",
    "repeats_to_prove_stuck",
]

CurrentProfile = float | Callable[[float], ArrayLike]
"""Load current of the plant (A, positive charging): a constant or ``f(time_s)`` (per pack)."""

DEFAULT_HARD_FAULTS: frozenset[str] = frozenset(
    {
        "over_voltage",
        "under_voltage",
        "over_temperature",
        "over_current_charge",
        "over_current_discharge",
        "sensor_fault",
        "open_sense_wire",
        "internal_short_suspected",
        "thermal_runaway_precursor",
        "contactor_fault",
        "insulation_fault",
    }
)
"""Faults that latch, open the contactors and put the BMS in state ``fault``."""

BoolArray = np.ndarray[Any, np.dtype[np.bool_]]

_EPS_S = 1e-9
_ADC_CELL_FULL_SCALE_V = 6.5
_CURRENT_RANGE_A = 1600.0
_PACK_VOLTAGE_MAX_V = 1300.0
_TEMPERATURE_RANGE_C = (-55.0, 150.0)
_RUNAWAY_MAX_C = 150.0


# --------------------------------------------------------------------------- sensors


class SensorModel(B2LModel):
    """One measurement channel, in the unit of its quantity: ``quantise(true + offset + noise)``."""

    noise_std: NonNegativeFloat = 0.0
    quantisation_step: NonNegativeFloat = 0.0
    """Resolution of the converter; 0: none."""
    offset: float = 0.0
    """Calibration error, on every reading."""

    def measure(
        self,
        true_value: ArrayLike,
        rng: np.random.Generator,
        *,
        extra_offset: ArrayLike = 0.0,
        extra_noise_std: ArrayLike = 0.0,
    ) -> FloatArray:
        """Readings of ``true_value``; always draws one normal per value (a stable stream)."""
        true = np.asarray(true_value, dtype=np.float64)
        std = np.hypot(self.noise_std, np.asarray(extra_noise_std, dtype=np.float64))
        offset = self.offset + np.asarray(extra_offset, dtype=np.float64)
        value: FloatArray = true + offset + rng.standard_normal(true.shape) * std
        return _quantise(value, self.quantisation_step)


def _quantise(value: FloatArray, step: float) -> FloatArray:
    if step <= 0.0:
        return value
    out: FloatArray = np.round(value / step) * step
    return out


# --------------------------------------------------------------------------- faults


class FaultKind(enum.StrEnum):
    """What can go wrong (see the module docstring)."""

    SENSOR_STUCK = "sensor_stuck"
    SENSOR_OFFSET = "sensor_offset"
    SENSOR_NOISE = "sensor_noise"
    OPEN_SENSE_WIRE = "open_sense_wire"
    INTERNAL_SHORT = "internal_short"
    THERMAL_RUNAWAY_PRECURSOR = "thermal_runaway_precursor"
    CONTACTOR_WELDED = "contactor_welded"
    INSULATION_LOSS = "insulation_loss"
    FRAME_LOSS = "frame_loss"
    FRAME_CORRUPTION = "frame_corruption"
    BUS_OFF = "bus_off"
    BMS_REBOOT = "bms_reboot"


SENSOR_FAULTS = frozenset({FaultKind.SENSOR_STUCK, FaultKind.SENSOR_OFFSET, FaultKind.SENSOR_NOISE})
CELL_FAULTS = frozenset(
    {FaultKind.OPEN_SENSE_WIRE, FaultKind.INTERNAL_SHORT, FaultKind.THERMAL_RUNAWAY_PRECURSOR}
)
LINK_FAULTS = frozenset({FaultKind.FRAME_LOSS, FaultKind.FRAME_CORRUPTION, FaultKind.BUS_OFF})
_DEFAULT_MAGNITUDE: dict[FaultKind, float] = {
    FaultKind.INTERNAL_SHORT: 0.2,
    FaultKind.THERMAL_RUNAWAY_PRECURSOR: 5.0,
    FaultKind.INSULATION_LOSS: 0.0,
    FaultKind.FRAME_LOSS: 0.5,
    FaultKind.FRAME_CORRUPTION: 0.5,
}


class Fault(B2LModel):
    """One scheduled fault: active from ``start_s`` for ``duration_s`` (None: to the end)."""

    kind: FaultKind
    start_s: NonNegativeFloat = 0.0
    duration_s: PositiveFloat | None = None
    cell_index: Annotated[int, Field(ge=0, le=255)] | None = None
    sensor: Literal["voltage", "temperature", "current"] = "voltage"
    """Channel of a sensor fault; ``current`` is the pack's current sensor (no cell index)."""
    magnitude: float | None = None
    """Kind-specific size (see the module docstring); None: the kind's default."""

    @model_validator(mode="after")
    def _consistent(self) -> Fault:
        kind = self.kind
        needs_cell = kind in CELL_FAULTS or (kind in SENSOR_FAULTS and self.sensor != "current")
        if needs_cell and self.cell_index is None:
            raise ValueError(f"a {kind.value} fault needs cell_index")
        if kind in (FaultKind.SENSOR_OFFSET, FaultKind.SENSOR_NOISE) and self.magnitude is None:
            raise ValueError(f"a {kind.value} fault needs a magnitude")
        m = self.value
        if kind in (FaultKind.FRAME_LOSS, FaultKind.FRAME_CORRUPTION) and not 0.0 <= m <= 1.0:
            raise ValueError(f"{kind.value}: magnitude is a probability 0..1, got {m}")
        positive = (FaultKind.INTERNAL_SHORT, FaultKind.THERMAL_RUNAWAY_PRECURSOR)
        if kind in positive and m <= 0.0:
            raise ValueError(f"{kind.value}: magnitude must be positive, got {m}")
        if kind in (FaultKind.SENSOR_NOISE, FaultKind.INSULATION_LOSS) and m < 0.0:
            raise ValueError(f"{kind.value}: magnitude must be >= 0, got {m}")
        if kind == FaultKind.BUS_OFF and self.duration_s is None:
            raise ValueError("a bus_off fault needs duration_s")
        return self

    @property
    def value(self) -> float:
        """The magnitude, or the kind's default (NaN for a stuck sensor: its last reading)."""
        if self.magnitude is not None:
            return self.magnitude
        return _DEFAULT_MAGNITUDE.get(self.kind, math.nan)

    @property
    def end_s(self) -> float:
        """End of the fault (inf: never)."""
        return math.inf if self.duration_s is None else self.start_s + self.duration_s


class FaultSchedule(B2LModel):
    """A scenario's faults, e.g. loaded from JSON with ``FaultSchedule.model_validate_json``."""

    faults: list[Fault] = Field(default_factory=list)


class FaultState:
    """Effect of the active faults on one pack, per cell and per sensor (recomputed on change)."""

    def __init__(self, n_cells: int) -> None:
        self.n_cells = n_cells
        self.active: dict[int, Fault] = {}
        self._stuck_values: dict[int, float] = {}
        self._recompute()

    def activate(self, key: int, fault: Fault, stuck_value: float = math.nan) -> None:
        """Make ``fault`` (schedule entry ``key``) active; ``stuck_value`` for a stuck sensor."""
        self.active[key] = fault
        self._stuck_values[key] = stuck_value
        self._recompute()

    def deactivate(self, key: int) -> None:
        """End schedule entry ``key``."""
        self.active.pop(key, None)
        self._stuck_values.pop(key, None)
        self._recompute()

    def _recompute(self) -> None:
        n = self.n_cells
        zeros = np.zeros(n)
        self.voltage_offset_v = zeros.copy()
        self.voltage_noise_v = zeros.copy()
        self.voltage_stuck_v = np.full(n, math.nan)
        self.temperature_offset_c = zeros.copy()
        self.temperature_noise_c = zeros.copy()
        self.temperature_stuck_c = np.full(n, math.nan)
        self.current_offset_a = 0.0
        self.current_noise_a = 0.0
        self.current_stuck_a = math.nan
        self.open_wire = np.zeros(n, dtype=bool)
        self.leak_a = zeros.copy()
        self.runaway_k_per_min = zeros.copy()
        self.contactor_welded = False
        self.insulation_ohm: float | None = None
        keep_loss, keep_corruption = 1.0, 1.0
        self.bus_off = False
        for key, f in self.active.items():
            k, m = f.cell_index, f.value
            if f.kind in SENSOR_FAULTS:
                self._sensor(f, k, m, self._stuck_values.get(key, math.nan))
            elif f.kind == FaultKind.OPEN_SENSE_WIRE and k is not None:
                self.open_wire[k] = True
            elif f.kind == FaultKind.INTERNAL_SHORT and k is not None:
                self.leak_a[k] += m
            elif f.kind == FaultKind.THERMAL_RUNAWAY_PRECURSOR and k is not None:
                self.runaway_k_per_min[k] += m
            elif f.kind == FaultKind.CONTACTOR_WELDED:
                self.contactor_welded = True
            elif f.kind == FaultKind.INSULATION_LOSS:
                self.insulation_ohm = min(m, self.insulation_ohm or math.inf)
            elif f.kind == FaultKind.FRAME_LOSS:
                keep_loss *= 1.0 - m
            elif f.kind == FaultKind.FRAME_CORRUPTION:
                keep_corruption *= 1.0 - m
            elif f.kind == FaultKind.BUS_OFF:
                self.bus_off = True
        self.frame_loss_probability = 1.0 - keep_loss
        self.frame_corruption_probability = 1.0 - keep_corruption

    def _sensor(self, f: Fault, k: int | None, m: float, stuck: float) -> None:
        if f.sensor == "current":
            if f.kind == FaultKind.SENSOR_OFFSET:
                self.current_offset_a += m
            elif f.kind == FaultKind.SENSOR_NOISE:
                self.current_noise_a = math.hypot(self.current_noise_a, m)
            elif math.isnan(self.current_stuck_a):
                self.current_stuck_a = stuck
            return
        assert k is not None
        voltage = f.sensor == "voltage"
        offset = self.voltage_offset_v if voltage else self.temperature_offset_c
        noise = self.voltage_noise_v if voltage else self.temperature_noise_c
        stuck_arr = self.voltage_stuck_v if voltage else self.temperature_stuck_c
        if f.kind == FaultKind.SENSOR_OFFSET:
            offset[k] += m
        elif f.kind == FaultKind.SENSOR_NOISE:
            noise[k] = math.hypot(noise[k], m)
        elif math.isnan(stuck_arr[k]):
            stuck_arr[k] = stuck


# --------------------------------------------------------------------------- configuration

_Byte = Annotated[int, Field(ge=0, le=255)]


class BmsConfig(B2LModel):
    """Firmware settings of the emulated BMS (sensor models, periods, thresholds)."""

    cell_voltage_sensor: SensorModel = SensorModel(noise_std=0.002, quantisation_step=0.001)
    """Cell voltage channels (V)."""
    cell_temperature_sensor: SensorModel = SensorModel(noise_std=0.05, quantisation_step=0.1)
    """Cell temperature sensors (degC)."""
    pack_current_sensor: SensorModel = SensorModel(noise_std=0.02, quantisation_step=0.01)
    """Pack current shunt (A, positive charging)."""
    pack_voltage_sensor: SensorModel = SensorModel(noise_std=0.02, quantisation_step=0.02)
    """Pack voltage divider (V)."""
    sample_period_s: PositiveFloat = 0.1
    estimation_period_s: PositiveFloat = 1.0
    """SoC filter, SoS, alarms and auto balancing run at this period."""
    reporting_period_ms: Annotated[int, Field(ge=100, le=60_000)] = 1000
    """Period of the cell reports after a boot (a command changes it until the next boot)."""
    firmware_version: tuple[_Byte, _Byte, _Byte] = (1, 0, 0)
    init_duration_s: NonNegativeFloat = 0.5
    reboot_duration_s: PositiveFloat = 2.0
    """Silent time of a ``bms_reboot`` fault without a duration."""
    soft_reset_duration_s: PositiveFloat = 0.5
    """Silent time of a soft reset command (after ``shutdown_duration_s`` in state shutdown)."""
    shutdown_duration_s: NonNegativeFloat = 0.2
    precharge_duration_s: NonNegativeFloat = 0.3
    close_contactor_at_start: bool = True
    balancing_current_a: NonNegativeFloat = 0.1
    """Bleed current of a cell whose balancing resistor is on."""
    balancing_threshold_v: PositiveFloat = 0.01
    """Auto mode bleeds cells more than this above the lowest cell."""
    balancing_min_voltage_v: float | None = None
    """Auto mode bleeds only above this voltage; None: the OCV at 30 % SoC."""
    stuck_detection_s: PositiveFloat = 10.0
    """A cell channel repeating one reading this long may be stuck (``StuckChannelDetector``)."""
    stuck_min_repeats: Annotated[int, Field(ge=1)] | None = None
    """Repeats of one reading that prove a channel stuck; None: from its sensor model."""
    open_wire_low_v: NonNegativeFloat = 1.0
    """A cell channel below this reads an open sense wire."""
    cell_voltage_high_v: float | None = None
    """A cell channel above this is implausible; None: voltage_max_v + 0.8 V."""
    pack_voltage_plausibility_v: PositiveFloat | None = None
    """Allowed |sum of cells - pack voltage|; None: 0.1 V + 10 mV per cell."""
    temperature_plausible_c: tuple[float, float] = (-40.0, 125.0)
    insulation_min_ohm_per_v: NonNegativeFloat = 100.0
    state_current_threshold_a: PositiveFloat | None = None
    """|current| above which the state is charging/discharging; None: 2 % of 1C, >= 5 sigma."""
    edge_timeout_s: PositiveFloat | None = None
    """FaultCommunication when no EDGE frame came for this long; None: not monitored."""
    link_error_hold_s: NonNegativeFloat = 5.0
    """FaultCommunication stays this long after a link error (bus-off)."""
    hard_faults: frozenset[str] = DEFAULT_HARD_FAULTS
    equivalent_cycles: NonNegativeFloat = 0.0
    """Equivalent full cycles before the simulation (non-volatile)."""
    safety: SafetyConfig = Field(default_factory=SafetyConfig)

    @model_validator(mode="after")
    def _known_faults(self) -> BmsConfig:
        unknown = self.hard_faults - FAULTS
        if unknown:
            raise ValueError(f"unknown fault names in hard_faults: {sorted(unknown)}")
        low, high = self.temperature_plausible_c
        if not low < high:
            raise ValueError("temperature_plausible_c must be (low, high) with low < high")
        return self


# --------------------------------------------------------------------------- stuck channels

STUCK_FALSE_ALARM_PROBABILITY = 1e-12
"""Chance that a healthy, steady channel repeats one reading ``min_repeats`` times in a row."""


def repeats_to_prove_stuck(
    sensor: SensorModel, false_alarm: float = STUCK_FALSE_ALARM_PROBABILITY
) -> float:
    """Repeats of one reading that a healthy channel of ``sensor`` makes with ``false_alarm``
    probability at most; ``inf`` when its readings of a steady value always repeat (no noise).

    The likeliest repeat is a steady true value in the middle of a quantisation step: each
    reading stays in that step with ``p = erf(step / (2 sqrt(2) std))``.
    """
    std, step = sensor.noise_std, sensor.quantisation_step
    if std <= 0.0:
        return math.inf
    if step <= 0.0:
        return 1.0  # continuous readings never repeat exactly
    p = math.erf(step / (2.0 * math.sqrt(2.0) * std))
    if p >= 1.0:
        return math.inf
    return float(math.ceil(math.log(false_alarm) / math.log(p)))


class StuckChannelDetector:
    """Finds the cell channels of one quantity (voltage or temperature) that are stuck.

    A channel is stuck when it has repeated one reading for ``stuck_detection_s`` and either

    * at least ``min_repeats`` times (``stuck_min_repeats``, or ``repeats_to_prove_stuck`` of
      its sensor): more often than its noise allows, so time alone is no proof: at a 1 s ADC
      cycle, 10 equal readings of a 0.1 K-step thermistor with 0.05 K noise are common; or
    * while the median of the channels moved by ``min_move`` (3 steps or 6 sigma, whichever is
      larger): the quantity changed and this channel did not (noise-free sensors);

    and not every channel is frozen (a whole converter that stops is not one stuck sensor).
    """

    def __init__(self, n_channels: int, sensor: SensorModel, config: BmsConfig) -> None:
        self.n_channels = n_channels
        self.sample_period_s = config.sample_period_s
        self.detection_s = config.stuck_detection_s
        self.min_repeats = float(config.stuck_min_repeats or repeats_to_prove_stuck(sensor))
        self.min_move = max(3.0 * sensor.quantisation_step, 6.0 * sensor.noise_std)
        self.reset()

    def reset(self) -> None:
        """Forget every run (at boot)."""
        self.repeats = np.zeros(self.n_channels, dtype=np.int64)
        self._median_at_change = np.full(self.n_channels, math.nan)
        self._median = math.nan

    def update(self, previous: FloatArray, readings: FloatArray) -> None:
        """Count the repeats of one ADC cycle's ``readings`` after ``previous``."""
        same = readings == previous
        self._median = float(np.median(readings))
        self.repeats = np.where(same, self.repeats + 1, 0)
        self._median_at_change = np.where(same, self._median_at_change, self._median)

    def stuck(self) -> BoolArray:
        """Mask of the stuck channels."""
        held_s = self.repeats * self.sample_period_s
        long_enough = held_s >= self.detection_s - _EPS_S
        with np.errstate(invalid="ignore"):
            moved = np.abs(self._median - self._median_at_change) >= self.min_move
        frozen: BoolArray = long_enough & ((self.repeats >= self.min_repeats) | moved)
        return np.zeros(self.n_channels, dtype=bool) if frozen.all() else frozen


# --------------------------------------------------------------------------- plant driver


class PlantDriver:
    """A SimPy process that steps a ``PackPlant`` every ``dt_s`` with the load ``current_a``.

    The step over ``[t, t + dt]`` uses the current requested at ``t`` and is applied at
    ``t + dt``. ``current_a`` may be replaced at any time.
    """

    def __init__(
        self,
        env: simpy.Environment,
        plant: PackPlant,
        current_a: CurrentProfile = 0.0,
        dt_s: float = 0.1,
    ) -> None:
        if not (math.isfinite(dt_s) and dt_s > 0.0):
            raise ConfigError(f"dt_s must be positive, got {dt_s}")
        self.env = env
        self.plant = plant
        self.current_a = current_a
        self.dt_s = dt_s
        self.process = env.process(self._run())

    def requested_current_a(self, time_s: float) -> ArrayLike:
        """Load current requested at ``time_s``."""
        profile = self.current_a
        return profile(time_s) if callable(profile) else profile

    def _run(self) -> Generator[simpy.Event, Any, None]:
        while True:
            current = self.requested_current_a(float(self.env.now))
            yield self.env.timeout(self.dt_s)
            self.plant.step(current, self.dt_s)


# --------------------------------------------------------------------------- the BMS


class BmsPhase(enum.Enum):
    """Power phase of the firmware (``OFF``: no traffic at all)."""

    OFF = "off"
    SHUTDOWN = "shutdown"
    INIT = "init"
    RUN = "run"


FaultListener = Callable[[Fault, bool], None]


class BmsEmulator:
    """The firmware of the BMS of pack ``pack_index`` of ``plant``, running in ``env``.

    Public state for links (arrays have one value per cell): readings ``cell_voltage_v``,
    ``cell_temperature_c``, ``pack_current_a``, ``pack_voltage_v``; estimates ``soc``, ``soh``,
    ``sos``, ``equivalent_cycles``; ``bms_state``, ``contactor_state``, ``flags`` (DBC fault
    names), ``reporting_period_ms``, ``balancing`` (bleed on per cell), ``boot_count``.
    ``transmitting`` (powered) and ``reporting`` (cell reports due) gate the link's traffic;
    ``changed`` is a SimPy event that fires (and is replaced) when the link should look again:
    boot, power off, reporting period or balancing change.
    """

    # RAM state, set at every boot
    reporting_period_ms: int
    balancing_mode: str
    flags: frozenset[str]
    bms_state: str
    contactor_state: str
    soc: FloatArray
    soh: FloatArray
    sos: FloatArray
    _manual_mask: BoolArray
    _latched: set[str]
    _live: set[str]
    _precharge_done_s: float | None
    _coil_on: bool
    _init_done_s: float
    _last_edge_s: float
    _link_error_until_s: float
    _last_estimation_s: float
    _ekf: EkfState | None
    _safety: SafetyState | None
    _estimator: SocEstimator | None
    _charge_as: float
    _charge_time_s: float

    def __init__(
        self,
        env: simpy.Environment,
        plant: PackPlant,
        *,
        pack_index: int = 0,
        config: BmsConfig | None = None,
        faults: Iterable[Fault] = (),
        seed: int | np.random.SeedSequence = 0,
    ) -> None:
        self.env = env
        self.plant = plant
        self.config = config or BmsConfig()
        if not 0 <= pack_index < plant.model.n_packs:
            raise ConfigError(f"pack_index {pack_index} not in 0..{plant.model.n_packs - 1}")
        self.pack_index = pack_index
        self.cell_count = plant.model.cells_in_series
        if self.cell_count > 256:
            raise ConfigError("the BMS reports at most 256 cells")
        self.params = plant.model.cell.params
        self.rng = np.random.default_rng(seed)
        self.schedule: tuple[Fault, ...] = tuple(faults)
        for fault in self.schedule:
            if fault.cell_index is not None and fault.cell_index >= self.cell_count:
                raise ConfigError(
                    f"{fault.kind.value}: cell_index {fault.cell_index} but the pack has "
                    f"{self.cell_count} cells"
                )
        self.faults = FaultState(self.cell_count)
        self._listeners: list[FaultListener] = []
        self._changed = env.event()

        cfg, p, n = self.config, self.params, self.cell_count
        nominal_as = plant.model.cell.capacity_as / plant.capacity_factor
        cell_as = p.capacity_ah * 3600.0
        self.parallel = max(
            1, round(float(np.median(np.broadcast_to(nominal_as, plant.soc.shape))) / cell_as)
        )
        self._rated_group_ah = self.parallel * p.capacity_ah
        noise = cfg.pack_current_sensor.noise_std
        self._state_threshold_a = cfg.state_current_threshold_a or max(
            0.02 * self._rated_group_ah, 5.0 * noise, 0.01
        )
        self._v_high = cfg.cell_voltage_high_v or p.voltage_max_v + 0.8
        self._pack_tol_v = cfg.pack_voltage_plausibility_v or 0.1 + 0.01 * n
        self._balance_min_v = (
            cfg.balancing_min_voltage_v
            if cfg.balancing_min_voltage_v is not None
            else float(np.interp(0.3, p.soc_grid, p.ocv_v))
        )
        self._monitor = SafetyMonitor(p, cfg.safety)

        # non-volatile memory: survives reboots
        self.equivalent_cycles = np.full(n, cfg.equivalent_cycles)
        self._true_throughput_ah = 0.0
        self.boot_count = 0
        self._power_generation = 0

        # readings (kept while off: the last values)
        self.cell_voltage_v = np.zeros(n)
        self.cell_temperature_c = np.zeros(n)
        self.pack_current_a = 0.0
        self.pack_voltage_v = 0.0
        self.balancing = np.zeros(n, dtype=bool)
        self._stuck_v = StuckChannelDetector(n, cfg.cell_voltage_sensor, cfg)
        self._stuck_t = StuckChannelDetector(n, cfg.cell_temperature_sensor, cfg)
        self.phase = BmsPhase.OFF
        self._boot()
        self._sample()  # so a fault scheduled at 0 can capture a reading
        env.process(self._run())
        for key, fault in enumerate(self.schedule):
            env.process(self._fault_process(key, fault))

    # ------------------------------------------------------------------ public state

    @property
    def changed(self) -> simpy.Event:
        """Fires when the link should look again (boot, power off, period or balancing)."""
        return self._changed

    @property
    def transmitting(self) -> bool:
        """The firmware runs and sends its status (not during a reboot's silence)."""
        return self.phase is not BmsPhase.OFF

    @property
    def reporting(self) -> bool:
        """Cell reports are due (after init, until shutdown)."""
        return self.phase is BmsPhase.RUN

    @property
    def balancing_active(self) -> bool:
        """At least one bleed resistor is on."""
        return bool(self.balancing.any())

    @property
    def hard_fault(self) -> bool:
        """A latched hard fault holds the contactors open."""
        return bool(self._latched)

    def powered_process(self, step: Callable[[], simpy.Event]) -> Generator[simpy.Event, Any, None]:
        """A link's process while the firmware runs, as a SimPy process: ``step()`` does one
        round and returns the event to wait for; while the BMS is off it waits for the boot."""
        while True:
            if not self.transmitting:
                yield self.changed
                continue
            yield step()

    def report_process(self, report: Callable[[], None]) -> Generator[simpy.Event, Any, None]:
        """A link's cell-report schedule, as a SimPy process: ``report()`` every reporting period
        while the BMS reports (after init); the first at once after each boot; a new period
        counts from the last report."""
        last_s: float | None = None
        boot = self.boot_count
        while True:
            if not self.reporting or boot != self.boot_count:
                last_s, boot = None, self.boot_count
                if not self.reporting:
                    yield self.changed
                    continue
            now = float(self.env.now)
            period_s = self.reporting_period_ms / 1000.0
            due_s = now if last_s is None else last_s + period_s
            if now >= due_s - _EPS_S:
                report()
                last_s, due_s = now, now + period_s
            yield self.env.timeout(due_s - now) | self.changed

    def add_fault_listener(self, listener: FaultListener) -> None:
        """Call ``listener(fault, active)`` when a scheduled fault starts or ends."""
        self._listeners.append(listener)

    def note_edge_frame(self) -> None:
        """The link received a frame from the EDGE (resets the EDGE timeout)."""
        self._last_edge_s = float(self.env.now)

    def note_link_error(self) -> None:
        """The link had an error (bus-off): FaultCommunication for ``link_error_hold_s``."""
        self._link_error_until_s = float(self.env.now) + self.config.link_error_hold_s
        if self.reporting:
            self.flags = self.flags | {"communication_fault"}

    # ------------------------------------------------------------------ commands

    def set_reporting_period(self, period_ms: int) -> str:
        """Change the cell-report period (100..60000 ms) until the next boot."""
        if not 100 <= period_ms <= 60_000:
            return "invalid"
        if period_ms != self.reporting_period_ms:
            self.reporting_period_ms = period_ms
            self._notify()
        return "ok"

    def request_balancing(self, mode: str, cell_group: int = 0, cell_mask: int = 0) -> str:
        """Set the balancing mode; the mask of 32-cell group ``cell_group`` (manual mode)."""
        if mode not in BALANCING_MODES or cell_group < 0 or cell_mask < 0:
            return "invalid"
        base = 32 * cell_group
        if base >= self.cell_count or cell_mask >> (self.cell_count - base) or cell_mask >> 32:
            return "invalid"
        if mode != "off" and self.hard_fault:
            return "rejected"
        self.balancing_mode = mode
        for bit in range(min(32, self.cell_count - base)):
            self._manual_mask[base + bit] = bool(cell_mask >> bit & 1)
        self._update_balancing(auto=None)
        return "ok"

    def request_contactor(self, close: bool) -> str:
        """Ask for the contactors closed (``close``) or open."""
        if self.phase is BmsPhase.SHUTDOWN:
            return "busy"
        if close and self.hard_fault:
            return "rejected"
        self._contactor_requested = close
        if self.phase is BmsPhase.RUN:
            self._control()
        return "ok"

    def request_reset(self, kind: str) -> str:
        """``soft``: reboot (after the link acks); ``clear_faults``: drop the latched faults."""
        if kind == "soft":
            self.env.process(self._reboot(self.config.soft_reset_duration_s, graceful=True))
            return "ok"
        if kind == "clear_faults":
            self._latched = set()
            self.flags = frozenset(self._live)
            if self.phase is BmsPhase.RUN:
                self._control()
            return "ok"
        return "invalid"

    # ------------------------------------------------------------------ ground truth

    def ground_truth(self) -> dict[str, Any]:
        """True state of the pack next to what the BMS believes (for the ground-truth log)."""
        p = self.pack_index
        plant = self.plant
        voltage_v = plant.cell_voltages_v()[p]
        fec = self.config.equivalent_cycles + self._true_throughput_ah / (
            2.0 * self._rated_group_ah
        )
        return {
            "time_s": round(float(self.env.now), 6),
            "pack_index": p,
            "current_a": _r(plant.current_a[p]),
            "contactor_closed": bool(plant.contactor_closed[p]),
            "pack_voltage_v": _r(voltage_v.sum()),
            "voltage_v": _rl(voltage_v),
            "soc": _rl(plant.soc[p]),
            "soh": _rl(plant.soh[p]),
            "temperature_c": _rl(plant.temperature_c[p]),
            "equivalent_cycles": _r(fec),
            "leak_a": _rl(plant.leak_a[p]),
            "extra_heat_w": _rl(plant.extra_heat_w[p]),
            "faults": [f.model_dump(mode="json") for f in self.faults.active.values()],
            "bms": {
                "phase": self.phase.value,
                "boot_count": self.boot_count,
                "state": self.bms_state,
                "contactor_state": self.contactor_state,
                "flags": sorted(self.flags),
                "balancing": [int(b) for b in self.balancing],
            },
        }

    # ------------------------------------------------------------------ life cycle

    def _notify(self) -> None:
        event, self._changed = self._changed, self.env.event()
        event.succeed()

    def _boot(self) -> None:
        """Power on: RAM state from scratch, state init."""
        now = float(self.env.now)
        cfg, n = self.config, self.cell_count
        self.boot_count += 1
        self.phase = BmsPhase.INIT
        self._init_done_s = now + cfg.init_duration_s
        self.reporting_period_ms = cfg.reporting_period_ms
        self.balancing_mode = "off"
        self._manual_mask = np.zeros(n, dtype=bool)
        self.balancing = np.zeros(n, dtype=bool)
        self._latched = set()
        self._live = set()
        self.flags = frozenset()
        self._contactor_requested = cfg.close_contactor_at_start
        self._precharge_done_s = None
        self._coil_on = False
        self._drive_contactor(False)
        self.contactor_state = "fault" if self._contactor_mismatch() else "open"
        self.bms_state = "init"
        self._last_edge_s = now
        self._link_error_until_s = -math.inf
        self._ekf = None
        self._safety = None
        self._estimator = None
        self._last_estimation_s = now
        self.soc = np.zeros(n)
        self.soh = np.array(self.plant.soh[self.pack_index], dtype=np.float64)
        self.sos = np.ones(n)
        self._stuck_v.reset()
        self._stuck_t.reset()
        self._charge_as, self._charge_time_s = 0.0, 0.0
        self._notify()

    def _reboot(self, silent_s: float, *, graceful: bool) -> Generator[simpy.Event, Any, None]:
        """Shut down (graceful: a short shutdown state first), stay silent, boot."""
        self._power_generation += 1
        generation = self._power_generation
        if graceful and self.phase is not BmsPhase.OFF:
            self.phase = BmsPhase.SHUTDOWN
            self.bms_state = "shutdown"
            self._open_contactor()
            self._set_balancing(np.zeros(self.cell_count, dtype=bool))
            self._notify()
            yield self.env.timeout(self.config.shutdown_duration_s)
            if generation != self._power_generation:
                return
        self.phase = BmsPhase.OFF
        self._open_contactor()
        self._set_balancing(np.zeros(self.cell_count, dtype=bool))
        self._notify()
        yield self.env.timeout(silent_s)
        if generation == self._power_generation:
            self._boot()
            self._sample()

    def _fault_process(self, key: int, fault: Fault) -> Generator[simpy.Event, Any, None]:
        delay = fault.start_s - float(self.env.now)
        if delay > 0.0:
            yield self.env.timeout(delay)
        stuck = math.nan
        if fault.kind == FaultKind.SENSOR_STUCK:
            stuck = fault.value if fault.magnitude is not None else self._last_reading(fault)
        self.faults.activate(key, fault, stuck)
        for listener in self._listeners:
            listener(fault, True)
        if fault.kind == FaultKind.BMS_REBOOT:
            silent = fault.duration_s or self.config.reboot_duration_s
            self.env.process(self._reboot(silent, graceful=False))
            yield self.env.timeout(silent)
        elif fault.duration_s is not None:
            yield self.env.timeout(fault.duration_s)
        else:
            return
        self.faults.deactivate(key)
        for listener in self._listeners:
            listener(fault, False)

    def _last_reading(self, fault: Fault) -> float:
        if fault.sensor == "current":
            return float(self.pack_current_a)
        assert fault.cell_index is not None
        source = self.cell_voltage_v if fault.sensor == "voltage" else self.cell_temperature_c
        return float(source[fault.cell_index])

    def _run(self) -> Generator[simpy.Event, Any, None]:
        dt = self.config.sample_period_s
        while True:
            yield self.env.timeout(dt)
            self._tick(dt)

    def _tick(self, dt: float) -> None:
        now = float(self.env.now)
        self._true_throughput_ah += abs(float(self.plant.current_a[self.pack_index])) * dt / 3600
        self._apply_physics()
        if self.phase is BmsPhase.OFF:
            return
        self._sample()
        group_current = self.pack_current_a / self.parallel
        self.equivalent_cycles += abs(group_current) * dt / 3600.0 / (2.0 * self.params.capacity_ah)
        self._charge_as += self.pack_current_a * dt
        self._charge_time_s += dt
        if self.phase is BmsPhase.SHUTDOWN:
            return
        if self.phase is BmsPhase.INIT:
            if now < self._init_done_s - _EPS_S:
                return
            self._finish_init()
        if now >= self._last_estimation_s + self.config.estimation_period_s - _EPS_S:
            self._estimate(now - self._last_estimation_s)
            self._last_estimation_s = now
        self._control()

    def _finish_init(self) -> None:
        now = float(self.env.now)
        p = self.params
        scale = self.parallel * np.maximum(self.soh, 1e-3)
        self._estimator = SocEstimator(CellModel(p, scale, 1.0 / self.parallel))
        voltage, temperature, _, _ = self._plausible()
        current = self._cell_current()
        self._ekf = self._estimator.initial_from_voltage(voltage, current, temperature)
        self.soc = np.clip(self._ekf.soc, 0.0, 1.0)
        self._safety = self._monitor.initial(current, voltage, temperature)
        self.sos = self._safety.sos.copy()
        self._last_estimation_s = now
        self.phase = BmsPhase.RUN
        self._estimate(0.0)
        self._notify()

    # ------------------------------------------------------------------ physics and sensing

    def _apply_physics(self) -> None:
        """Write this pack's fault effects and bleed currents into the plant."""
        p, plant, fs = self.pack_index, self.plant, self.faults
        bleed = np.where(self.balancing, self.config.balancing_current_a, 0.0)
        plant.leak_a[p] = fs.leak_a + bleed
        heat = np.zeros(self.cell_count)
        if fs.leak_a.any():  # the short dissipates leak x cell voltage inside the cell
            heat = fs.leak_a * np.maximum(plant.cell_voltages_v()[p], 0.0)
        if fs.runaway_k_per_min.any():
            cp = self.params
            temperature = plant.temperature_c[p]
            self_heat = cp.heat_capacity_j_per_k * fs.runaway_k_per_min / 60.0 + (
                cp.heat_transfer_w_per_k * (temperature - plant.ambient_c[p])
            )
            heating = (fs.runaway_k_per_min > 0.0) & (temperature < _RUNAWAY_MAX_C)
            heat = heat + np.where(heating, np.maximum(self_heat, 0.0), 0.0)
        plant.extra_heat_w[p] = heat

    def _sample(self) -> None:
        """One ADC cycle: every cell voltage and temperature, the pack current and voltage."""
        cfg, fs, rng, p = self.config, self.faults, self.rng, self.pack_index
        true_v = self.plant.cell_voltages_v()[p]
        v = cfg.cell_voltage_sensor.measure(
            true_v, rng, extra_offset=fs.voltage_offset_v, extra_noise_std=fs.voltage_noise_v
        )
        for k in np.flatnonzero(fs.open_wire):
            if k + 1 < self.cell_count:
                v[k + 1] += v[k]
            floating = abs(rng.standard_normal()) * cfg.cell_voltage_sensor.noise_std
            v[k] = _quantise(np.array(floating), cfg.cell_voltage_sensor.quantisation_step)
        v = np.where(np.isnan(fs.voltage_stuck_v), v, fs.voltage_stuck_v)
        v = np.clip(v, 0.0, _ADC_CELL_FULL_SCALE_V)
        t = cfg.cell_temperature_sensor.measure(
            self.plant.temperature_c[p],
            rng,
            extra_offset=fs.temperature_offset_c,
            extra_noise_std=fs.temperature_noise_c,
        )
        t = np.where(np.isnan(fs.temperature_stuck_c), t, fs.temperature_stuck_c)
        t = np.clip(t, *_TEMPERATURE_RANGE_C)
        i = float(
            cfg.pack_current_sensor.measure(
                self.plant.current_a[p],
                rng,
                extra_offset=fs.current_offset_a,
                extra_noise_std=fs.current_noise_a,
            )
        )
        if not math.isnan(fs.current_stuck_a):
            i = fs.current_stuck_a
        pack_v = float(cfg.pack_voltage_sensor.measure(true_v.sum(), rng))
        self._stuck_v.update(self.cell_voltage_v, v)
        self._stuck_t.update(self.cell_temperature_c, t)
        self.cell_voltage_v = v
        self.cell_temperature_c = t
        self.pack_current_a = float(np.clip(i, -_CURRENT_RANGE_A, _CURRENT_RANGE_A))
        self.pack_voltage_v = float(np.clip(pack_v, 0.0, _PACK_VOLTAGE_MAX_V))

    def _plausible(self) -> tuple[FloatArray, FloatArray, BoolArray, BoolArray]:
        """Voltages and temperatures, implausible channels replaced by the median of the others,
        and the masks of the implausible voltage and temperature channels."""
        v, t = self.cell_voltage_v, self.cell_temperature_c
        bad_v = (v < self.config.open_wire_low_v) | (v > self._v_high)
        bad_v |= self._stuck_v.stuck()
        low, high = self.config.temperature_plausible_c
        bad_t = (t < low) | (t > high) | self._stuck_t.stuck()
        nominal_v = float(np.interp(0.5, self.params.soc_grid, self.params.ocv_v))
        v_ok = np.where(bad_v, float(np.median(v[~bad_v])) if (~bad_v).any() else nominal_v, v)
        t_ok = np.where(bad_t, float(np.median(t[~bad_t])) if (~bad_t).any() else 25.0, t)
        return v_ok, t_ok, bad_v, bad_t

    def _cell_current(self, pack_current_a: float | None = None) -> FloatArray:
        """Current through each cell (the BMS knows its own bleed currents)."""
        pack = self.pack_current_a if pack_current_a is None else pack_current_a
        bleed = np.where(self.balancing, self.config.balancing_current_a, 0.0)
        out: FloatArray = pack / self.parallel - bleed
        return out

    def _mean_current_a(self) -> float:
        """Mean pack current since the last estimation (coulomb counter), then restart it."""
        mean = self._charge_as / self._charge_time_s if self._charge_time_s else self.pack_current_a
        self._charge_as, self._charge_time_s = 0.0, 0.0
        return mean

    # ------------------------------------------------------------------ estimation and alarms

    def _estimate(self, dt_s: float) -> None:
        """SoC, SoS, alarms, latched faults and auto balancing from the latest sample."""
        assert self._estimator is not None and self._ekf is not None and self._safety is not None
        cfg, now = self.config, float(self.env.now)
        v_ok, t_ok, bad_v, bad_t = self._plausible()
        current = self._cell_current()
        if dt_s > 0.0:
            v_ekf = np.where(bad_v, math.nan, self.cell_voltage_v)
            self._ekf = self._estimator.update(self._ekf, current, v_ekf, t_ok, dt_s)
            # the trends (rest, over-current) use the mean current: the noise of single
            # samples would break every rest period
            mean_current = self._cell_current(self._mean_current_a())
            self._safety = self._monitor.update(self._safety, mean_current, v_ok, t_ok, dt_s)
        self.soc = np.clip(self._ekf.soc, 0.0, 1.0)
        self.soh = np.array(self.plant.soh[self.pack_index], dtype=np.float64)
        alarms = self._safety.alarms
        self.sos = np.where(bad_v | bad_t, 0.0, self._safety.sos)

        def fired(alarm: Alarm, bad: BoolArray) -> bool:
            return bool(((alarms & int(alarm)) != 0)[~bad].any())

        live: set[str] = set()
        checks = (
            ("over_voltage", fired(Alarm.OVER_VOLTAGE, bad_v)),
            ("under_voltage", fired(Alarm.UNDER_VOLTAGE, bad_v)),
            ("over_temperature", fired(Alarm.OVER_TEMPERATURE, bad_t)),
            ("under_temperature", fired(Alarm.UNDER_TEMPERATURE, bad_t)),
            ("thermal_runaway_precursor", fired(Alarm.FAST_TEMPERATURE_RISE, bad_t)),
            ("internal_short_suspected", fired(Alarm.SELF_DISCHARGE, bad_v)),
        )
        live.update(name for name, on in checks if on)
        if fired(Alarm.OVER_CURRENT, np.zeros(self.cell_count, dtype=bool)):
            live.add("over_current_charge" if self.pack_current_a > 0 else "over_current_discharge")
        v = self.cell_voltage_v
        if (v < cfg.open_wire_low_v).any():
            live.add("open_sense_wire")
        sum_error_v = abs(float(v.sum()) - self.pack_voltage_v)
        if (v > self._v_high).any() or bad_t.any() or sum_error_v > self._pack_tol_v:
            live.add("sensor_fault")
        if bad_v.any() and not (v < cfg.open_wire_low_v).any():
            live.add("sensor_fault")
        ins = self.faults.insulation_ohm
        if ins is not None and ins < cfg.insulation_min_ohm_per_v * max(self.pack_voltage_v, 1.0):
            live.add("insulation_fault")
        if self._contactor_mismatch():
            live.add("contactor_fault")
        edge_silent = (
            cfg.edge_timeout_s is not None and now - self._last_edge_s > cfg.edge_timeout_s
        )
        if edge_silent or now < self._link_error_until_s:
            live.add("communication_fault")
        self._live = live
        new_hard = (live & cfg.hard_faults) - self._latched
        if new_hard:
            self._latched |= new_hard
            self._contactor_requested = False
        self.flags = frozenset(live | self._latched)
        self._update_balancing(auto=(v_ok, bad_v))

    def _update_balancing(self, auto: tuple[FloatArray, BoolArray] | None) -> None:
        mode = self.balancing_mode
        if self.phase is not BmsPhase.RUN or self.hard_fault or mode == "off":
            bleed = np.zeros(self.cell_count, dtype=bool)
        elif mode == "manual":
            bleed = self._manual_mask.copy()
        elif auto is None:
            bleed = self.balancing.copy()
        else:
            v_ok, bad_v = auto
            cfg = self.config
            good = ~bad_v
            v_min = float(v_ok[good].min()) if good.any() else math.inf
            threshold = np.where(
                self.balancing, cfg.balancing_threshold_v / 2, cfg.balancing_threshold_v
            )
            not_discharging = self.pack_current_a > -self._state_threshold_a
            bleed = (
                good & (v_ok > v_min + threshold) & (v_ok > self._balance_min_v) & not_discharging
            )
        self._set_balancing(bleed)

    def _set_balancing(self, bleed: BoolArray) -> None:
        changed = bool(bleed.any()) != bool(self.balancing.any())
        self.balancing = bleed
        if changed:
            self._notify()

    # ------------------------------------------------------------------ contactors and state

    def _drive_contactor(self, close: bool) -> None:
        """Energise (or not) the main contactor coil; a welded contactor stays closed."""
        p = self.pack_index
        self._coil_on = close
        self.plant.contactor_closed[p] = close or (
            self.faults.contactor_welded and bool(self.plant.contactor_closed[p])
        )

    def _open_contactor(self) -> None:
        self._precharge_done_s = None
        self._drive_contactor(False)
        self.contactor_state = "fault" if self._contactor_mismatch() else "open"

    def _contactor_mismatch(self) -> bool:
        """The feedback contact says closed while the coil is off (welded)."""
        return bool(self.plant.contactor_closed[self.pack_index]) and not self._coil_on

    def _control(self) -> None:
        """Contactor sequence and the operating state, once per sample."""
        now = float(self.env.now)
        if self._contactor_requested and not self.hard_fault:
            if self.contactor_state in ("open", "fault") and not self._contactor_mismatch():
                self.contactor_state = "precharging"
                self._precharge_done_s = now + self.config.precharge_duration_s
            if self.contactor_state == "precharging" and now >= (
                (self._precharge_done_s or now) - _EPS_S
            ):
                self.contactor_state = "closed"
                self._drive_contactor(True)
        else:
            self._open_contactor()
        if self.contactor_state == "fault" and self._contactor_mismatch():
            self._live.add("contactor_fault")
            if "contactor_fault" in self.config.hard_faults:
                self._latched.add("contactor_fault")
            self.flags = frozenset(self._live | self._latched)
        if self.hard_fault:
            self.bms_state = "fault"
        elif self.contactor_state == "precharging":
            self.bms_state = "precharge"
        elif self.contactor_state == "closed" and self.pack_current_a > self._state_threshold_a:
            self.bms_state = "charging"
        elif self.contactor_state == "closed" and self.pack_current_a < -self._state_threshold_a:
            self.bms_state = "discharging"
        else:
            self.bms_state = "standby"


# --------------------------------------------------------------------------- ground truth


class GroundTruthWriter:
    """Writes ``bms.ground_truth()`` as JSON lines every ``period_s`` (SimPy process).

    ``output`` is a path (opened and closed here) or a text file-like object (left open).
    Each line also carries ``timestamp``: ``timestamp_origin_s + time_s``, the clock of the
    frames the link sends, so a line lines up with the traffic log.
    """

    def __init__(
        self,
        env: simpy.Environment,
        bms: BmsEmulator,
        output: str | Path | IO[str],
        *,
        period_s: float = 1.0,
        timestamp_origin_s: float = 0.0,
    ) -> None:
        if not (math.isfinite(period_s) and period_s > 0.0):
            raise ConfigError(f"period_s must be positive, got {period_s}")
        self.env = env
        self.bms = bms
        self.period_s = period_s
        self.timestamp_origin_s = timestamp_origin_s
        if isinstance(output, str | Path):
            self._file: IO[str] = open(output, "w", encoding="utf-8")  # noqa: SIM115
            self._owned = True
        else:
            self._file = output
            self._owned = False
        self.lines = 0
        self.process = env.process(self._run())

    def write(self) -> None:
        """Write one line now."""
        record = self.bms.ground_truth()
        record["timestamp"] = round(self.timestamp_origin_s + record["time_s"], 6)
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.lines += 1

    def _run(self) -> Generator[simpy.Event, Any, None]:
        while True:
            self.write()
            yield self.env.timeout(self.period_s)

    def close(self) -> None:
        """Flush, and close the file if this writer opened it."""
        if self._owned:
            if not self._file.closed:
                self._file.close()
        else:
            self._file.flush()


def _r(value: Any) -> float:
    return round(float(value), 6)


def _rl(values: Any) -> list[float]:
    return [round(float(v), 6) for v in np.asarray(values).ravel()]
