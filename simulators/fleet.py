"""Fleet mode: many packs simulated together, vectorised, with ageing in virtual time.

One ``PackPlant`` holds every cell of the fleet as ``(packs, cells)`` arrays: there is no Python
object per cell or per pack, and one time step is a fixed number of numpy calls whatever the
fleet size. Packs differ by

* cell-to-cell spread (``twin.pack_model.CellSpread``: capacity, resistance, initial SoC);
* history (``AgeSpread``): each pack has a prior age drawn from the seed, its cells a share of
  it that varies from cell to cell, and a fraction of cells are new replacements: mixed-age
  packs. The history is run through the ageing model itself, so SoH and resistance start where
  the model would have put them, and ageing goes on from there (equivalent-time method);
* load: each pack follows a phase-shifted and scaled copy of one profile.

Each step, a BMS-like **voltage guard** evaluates every cell's terminal voltage under the
pack's requested current (clipped to the cell's current limits) and opens the pack's current
path for that step (current 0) if it would charge with a cell above ``voltage_max_v`` or
discharge with a cell below ``voltage_min_v``; a pack may always move away from the limit it
crossed. The check uses the state at the start of the step, so a cell can overshoot a limit by
at most the voltage change of one step. Charging therefore ends where OCV + IR reaches the upper
limit (no CV phase), as with a charge-enable flag. With coarse steps (minutes) one step could
carry a cell past the end of its SoC range; the guard also stops a pack for a step that would
take a cell's SoC outside ``SOC_MARGIN..1 - SOC_MARGIN``. The margin leaves room for 0.1 % of
capacity fade while a cell sits full: ``PackPlant.set_health`` keeps the stored charge, so the
SoC of a full cell rises as its capacity shrinks, and a SoC clipped at 1 would lose charge that
the coulomb counter still counts (a cell kept full for months of fade can still get there).

Every ``ageing_interval_s`` of virtual time (1 h by default) the ageing model
(``twin.ageing``) is advanced with the interval's mean SoC, mean temperature, charge
throughput, charge-weighted C-rate and the depth of discharge of the last ``dod_window_s``
(the swing of each pack's net charge over a day, i.e. the daily cycle), and the new health is
applied through ``PackPlant.set_health`` (which keeps the stored charge).

Not modelled here: the BMS firmware and its links (``simulators.bms*``), temperature limits,
balancing and internal faults; the fleet is physics, ageing and a voltage guard only.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from simulators.plant import PackPlant
from simulators.profiles import Profile
from twin.ageing import AgeingParameters, AgeingState, age, ageing_parameters_for, health
from twin.cell_model import CellModel, FloatArray
from twin.cell_params import CellParameters
from twin.errors import TwinValidationError
from twin.pack_model import CellSpread, PackModel

YEAR_S = 365.25 * 86_400.0
_CHUNK_VALUES = 1_000_000
"""Profile values prepared at once (steps x packs), bounding the memory of a chunk."""
_CHUNK_STEPS = 900
_PROFILE_BLOCK = 64
"""Steps of profile values prepared at once inside a chunk (cache-sized)."""
SOC_MARGIN = 1e-3
"""The guard keeps every cell's SoC within ``SOC_MARGIN..1 - SOC_MARGIN`` (see the module doc)."""


@dataclass(frozen=True)
class AgeSpread:
    """How the packs' histories differ at the start of a run (all drawn from the fleet seed).

    Each pack gets a prior age uniform in ``0..max_years`` spent at ``fec_per_year`` full
    equivalent cycles per year under the given conditions; each cell a share of it with a
    relative spread ``cell_rel_std``; ``replaced_fraction`` of the cells are new replacements.
    """

    max_years: float = 0.0
    fec_per_year: float = 250.0
    cell_rel_std: float = 0.15
    replaced_fraction: float = 0.0
    soc: float = 0.5
    temperature_c: float = 25.0
    depth_of_discharge: float = 0.8
    c_rate: float = 0.5

    def __post_init__(self) -> None:
        checks = {
            "max_years": 0.0 <= self.max_years <= 100.0,
            "fec_per_year": 0.0 <= self.fec_per_year <= 10_000.0,
            "cell_rel_std": 0.0 <= self.cell_rel_std <= 1.0,
            "replaced_fraction": 0.0 <= self.replaced_fraction <= 1.0,
            "soc": 0.0 <= self.soc <= 1.0,
            "temperature_c": -40.0 <= self.temperature_c <= 80.0,
            "depth_of_discharge": 0.0 <= self.depth_of_discharge <= 1.0,
            "c_rate": 0.0 <= self.c_rate <= 20.0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise TwinValidationError(f"age spread out of range: {', '.join(bad)}")


@dataclass(frozen=True)
class FleetProgress:
    """Where a run is: passed to the ``progress`` callback after each chunk of steps."""

    fraction: float
    virtual_time_s: float
    cell_steps: int
    cell_steps_per_s: float
    soh_mean: float


@dataclass(frozen=True)
class Stats:
    """Minimum, mean, maximum and standard deviation of a quantity over cells."""

    min: float
    mean: float
    max: float
    std: float

    @classmethod
    def of(cls, values: FloatArray) -> Stats:
        """Statistics of an array."""
        return cls(
            float(np.min(values)),
            float(np.mean(values)),
            float(np.max(values)),
            float(np.std(values)),
        )


@dataclass(frozen=True)
class FleetSummary:
    """What a run did; ``to_json_dict`` for machines.

    Energies are at the pack terminals. Health statistics are over cells at the start and the end
    of the run; ``pack_min_soh_final`` is over packs of their weakest cell. Temperature and cell
    voltage extremes are sampled at the end of every chunk of steps (at least every ageing
    interval); ``guard_blocked_fraction`` is the share of pack-steps the voltage guard stopped.
    """

    packs: int
    cells_per_pack: int
    parameter_set: str
    chemistry: str
    ageing_model: str
    profile: str
    seed: int
    virtual_days: float
    dt_s: float
    steps: int
    cell_steps: int
    wall_s: float
    cell_steps_per_s: float
    soh_initial: Stats
    soh_final: Stats
    resistance_factor_final: Stats
    pack_min_soh_final: Stats
    soc_final: Stats
    equivalent_full_cycles: Stats
    temperature_min_c: float
    temperature_max_c: float
    cell_voltage_min_v: float
    cell_voltage_max_v: float
    energy_charged_kwh: float
    energy_discharged_kwh: float
    charge_throughput_ah: float
    guard_blocked_fraction: float
    ageing_updates: int
    notes: list[str] = field(default_factory=list)

    def to_json_dict(self) -> dict[str, Any]:
        """Plain JSON-able dictionary."""
        return {"kind": "b2l.fleet_summary", "version": 1, **asdict(self)}

    def one_line(self) -> str:
        """A human summary in one line."""
        return (
            f"{self.packs} packs x {self.cells_per_pack} cells, {self.virtual_days:g} days at "
            f"dt {self.dt_s:g} s: {self.cell_steps:,} cell-steps in {self.wall_s:.2f} s "
            f"({self.cell_steps_per_s / 1e6:.2f} M cell-steps/s); SoH "
            f"{self.soh_initial.mean:.4f} -> {self.soh_final.mean:.4f} "
            f"(min {self.soh_final.min:.4f}); T {self.temperature_min_c:.1f}.."
            f"{self.temperature_max_c:.1f} degC; {self.energy_discharged_kwh:.3f} kWh discharged"
        )


class Fleet:
    """``n_packs`` packs of ``cells`` series cells of one parameter set, driven by a profile.

    ``profile`` is a pack current (A) or power (W) profile, positive while charging; pack ``p``
    follows ``scale[p] * profile(t + phase_s[p])`` with phases uniform in
    ``+-phase_spread_s`` and scales ``1 + scale_spread * N(0, 1)`` (clipped to 0.5..1.5).
    A power profile is turned into current with the pack voltage of the previous step.
    """

    def __init__(
        self,
        params: CellParameters,
        n_packs: int,
        cells: int,
        profile: Profile,
        *,
        ageing: AgeingParameters | None = None,
        spread: CellSpread | None = None,
        age_spread: AgeSpread | None = None,
        seed: int = 0,
        initial_soc: float = 0.5,
        ambient_c: float = 25.0,
        ambient_spread_c: float = 0.0,
        phase_spread_s: float = 3600.0,
        scale_spread: float = 0.1,
        ageing_interval_s: float = 3600.0,
        dod_window_s: float = 86_400.0,
    ) -> None:
        if n_packs < 1 or cells < 1:
            raise TwinValidationError("a fleet needs at least one pack of one cell")
        if not 0.0 <= initial_soc <= 1.0:
            raise TwinValidationError("initial_soc must be within 0..1")
        if not (ageing_interval_s > 0 and math.isfinite(ageing_interval_s)):
            raise TwinValidationError("ageing_interval_s must be positive")
        if not (dod_window_s > 0 and math.isfinite(dod_window_s)):
            raise TwinValidationError("dod_window_s must be positive")
        if phase_spread_s < 0 or not 0 <= scale_spread <= 1 or ambient_spread_c < 0:
            raise TwinValidationError("phase, scale and ambient spreads must not be negative")
        self.params = params
        self.ageing = ageing or ageing_parameters_for(params.chemistry)
        self.profile = profile
        self.seed = seed
        self.n_packs, self.cells = n_packs, cells
        self.ageing_interval_s = ageing_interval_s
        self.dod_window_s = dod_window_s
        rng = np.random.default_rng([seed, 0xF1EE7])
        model = PackModel.build(
            params, n_packs=n_packs, cells_in_series=cells, spread=spread, seed=seed
        )
        model = dataclasses.replace(model, cell=_SharedArrheniusCellModel(model.cell))
        ambient = ambient_c + ambient_spread_c * rng.standard_normal(n_packs)
        self.plant = PackPlant(model, initial_soc, ambient)
        self.capacity_ah: FloatArray = np.broadcast_to(
            model.cell.capacity_as / 3600.0, (n_packs, cells)
        ).copy()
        """Nominal (fresh) capacity of every cell, with the cell-to-cell spread."""
        self.phase_s: FloatArray = rng.uniform(-phase_spread_s, phase_spread_s, n_packs)
        self.scale: FloatArray = np.clip(
            1.0 + scale_spread * rng.standard_normal(n_packs), 0.5, 1.5
        )
        self.ageing_state = self._history(age_spread or AgeSpread(), rng)
        capacity_factor, resistance_factor = health(self.ageing_state)
        self.plant.set_health(capacity_factor, resistance_factor)
        # start the run at initial_soc of the present (aged) capacity
        self.plant.state = model.initial_state(initial_soc, self.plant.ambient_c[:, None])
        self.soh_initial: FloatArray = capacity_factor.copy()
        self.time_s = 0.0
        self._limits = (-params.current_max_discharge_a, params.current_max_charge_a)
        self._voltage_limits = (params.voltage_min_v, params.voltage_max_v)
        self._pack_voltage_v: FloatArray = self.plant.pack_voltages_v()
        self._q_as = np.zeros(n_packs)
        """Net charge into each pack since the start (A s)."""
        self._q_eff_as = np.zeros(n_packs)
        """The same, charging weighted by the coulombic efficiency: what moves the SoC."""
        self._new_interval()
        self._dod_ring_min: list[FloatArray] = []
        self._dod_ring_max: list[FloatArray] = []
        self._ageing_updates = 0
        self._blocked_pack_steps = 0
        self._pack_steps = 0
        self._energy_abs_ws = np.zeros(n_packs)
        self._energy_net_ws = np.zeros(n_packs)
        self._throughput_as = np.zeros(n_packs)
        self._t_min = float(np.min(self.plant.temperature_c))
        self._t_max = float(np.max(self.plant.temperature_c))
        v = self.plant.cell_voltages_v()
        self._v_min, self._v_max = float(v.min()), float(v.max())

    # -- construction ------------------------------------------------------------------------

    def _history(self, spread: AgeSpread, rng: np.random.Generator) -> AgeingState:
        """Prior ageing of every cell: the model run over each cell's drawn history."""
        shape = (self.n_packs, self.cells)
        pack_years = rng.uniform(0.0, spread.max_years, self.n_packs)
        share = np.clip(1.0 + spread.cell_rel_std * rng.standard_normal(shape), 0.0, 3.0)
        replaced = rng.random(shape) < spread.replaced_fraction
        years = np.where(replaced, 0.0, pack_years[:, None] * share)
        return prior_ageing(self.ageing, years, self.capacity_ah, spread, self._ocv)

    def _ocv(self, soc: FloatArray, temperature_c: FloatArray | float) -> FloatArray:
        return self.plant.model.cell.ocv(soc, temperature_c)

    def _new_interval(self) -> None:
        shape = (self.n_packs, self.cells)
        self._soc_start = self.plant.soc.copy()
        self._q_eff_start = self._q_eff_as.copy()
        self._q_eff_sum = np.zeros(self.n_packs)
        self._temp_sum = np.zeros(shape)
        self._interval_steps = 0
        self._interval_s = 0.0
        self._abs_as = np.zeros(self.n_packs)
        self._sq_a2s = np.zeros(self.n_packs)
        self._q_min = self._q_as.copy()
        self._q_max = self._q_as.copy()

    # -- running -----------------------------------------------------------------------------

    def run(
        self,
        days: float,
        dt_s: float = 1.0,
        progress: Callable[[FleetProgress], None] | None = None,
    ) -> FleetSummary:
        """Simulate ``days`` of virtual time at steps of ``dt_s``; returns the summary.

        Runs can follow each other; the summary covers this run (health stats: at its end).
        """
        if not (days > 0 and math.isfinite(days)):
            raise TwinValidationError(f"days must be positive, got {days}")
        _check_dt(dt_s)
        n_steps = max(1, round(days * 86_400.0 / dt_s))
        soh_start = self.plant.soh.copy()
        energy_abs0, energy_net0 = self._energy_abs_ws.sum(), self._energy_net_ws.sum()
        throughput0 = self._throughput_as.sum()
        blocked0, pack_steps0 = self._blocked_pack_steps, self._pack_steps
        updates0 = self._ageing_updates
        cells_total = self.n_packs * self.cells

        def report(done: int, wall_s: float) -> None:
            if progress is not None:
                progress(
                    FleetProgress(
                        fraction=done / n_steps,
                        virtual_time_s=self.time_s,
                        cell_steps=done * cells_total,
                        cell_steps_per_s=done * cells_total / wall_s if wall_s > 0 else 0.0,
                        soh_mean=float(np.mean(self.plant.soh)),
                    )
                )

        wall = self.advance(n_steps, dt_s, report)
        start = time.perf_counter()
        self._apply_ageing()  # the last, partial interval: the summary covers the whole run
        wall += time.perf_counter() - start
        cell_steps = n_steps * cells_total
        energy_abs = self._energy_abs_ws.sum() - energy_abs0
        energy_net = self._energy_net_ws.sum() - energy_net0
        blocked = self._blocked_pack_steps - blocked0
        notes = []
        if self.profile.kind == "power":
            notes.append("power profile: current from the pack voltage of the previous step")
        return FleetSummary(
            packs=self.n_packs,
            cells_per_pack=self.cells,
            parameter_set=self.params.name,
            chemistry=self.params.chemistry,
            ageing_model=self.ageing.name,
            profile=self.profile.name,
            seed=self.seed,
            virtual_days=n_steps * dt_s / 86_400.0,
            dt_s=dt_s,
            steps=n_steps,
            cell_steps=cell_steps,
            wall_s=wall,
            cell_steps_per_s=cell_steps / wall if wall > 0 else 0.0,
            soh_initial=Stats.of(soh_start),
            soh_final=Stats.of(self.plant.soh),
            resistance_factor_final=Stats.of(self.plant.resistance_factor),
            pack_min_soh_final=Stats.of(self.plant.soh.min(axis=1)),
            soc_final=Stats.of(self.plant.soc),
            equivalent_full_cycles=Stats.of(self.ageing_state.equivalent_full_cycles),
            temperature_min_c=self._t_min,
            temperature_max_c=self._t_max,
            cell_voltage_min_v=self._v_min,
            cell_voltage_max_v=self._v_max,
            energy_charged_kwh=float((energy_abs + energy_net) / 2.0 / 3.6e6),
            energy_discharged_kwh=float((energy_abs - energy_net) / 2.0 / 3.6e6),
            charge_throughput_ah=float((self._throughput_as.sum() - throughput0) / 3600.0),
            guard_blocked_fraction=blocked / max(1, self._pack_steps - pack_steps0),
            ageing_updates=self._ageing_updates - updates0,
            notes=notes,
        )

    def advance(
        self,
        steps: int,
        dt_s: float = 1.0,
        progress: Callable[[int, float], None] | None = None,
    ) -> float:
        """Simulate ``steps`` steps of ``dt_s`` (ageing every ``ageing_interval_s``).

        ``progress(steps_done, wall_s)`` is called after each chunk of steps. Returns the wall
        time spent (seconds).
        """
        _check_dt(dt_s)
        if steps < 0:
            raise TwinValidationError("steps must not be negative")
        chunk_cap = max(1, min(_CHUNK_STEPS, _CHUNK_VALUES // self.n_packs))
        interval = self.ageing_interval_s
        done, wall = 0, 0.0
        while done < steps:
            left = max(1, math.ceil((interval - self._interval_s) / dt_s - 1e-9))
            k = min(chunk_cap, steps - done, left)
            start = time.perf_counter()
            self._advance(k, dt_s)
            done += k
            if self._interval_s >= interval * (1.0 - 1e-12):
                self._apply_ageing()
            self._sample_extremes()
            wall += time.perf_counter() - start
            if progress is not None:
                progress(done, wall)
        return wall

    def requested_current_a(self, time_s: ArrayLike) -> FloatArray:
        """Requested pack currents at ``time_s`` (shape ``(..., packs)``), within the limits.

        Only for current profiles (a power profile depends on the pack voltage).
        """
        t = np.asarray(time_s, dtype=np.float64)[..., None] + self.phase_s
        values = self.profile.current_at(t) * self.scale
        out: FloatArray = np.clip(values, *self._limits)
        return out

    def _requests(self, times: FloatArray, pack_voltage: FloatArray | None) -> FloatArray:
        """Requested pack currents, shape ``(len(times), packs)``; power needs the voltage."""
        if self.profile.kind == "current":
            return self.requested_current_a(times)
        assert pack_voltage is not None
        power_w = self.profile.value_at(times[:, None] + self.phase_s) * self.scale
        out: FloatArray = np.clip(power_w / pack_voltage, *self._limits)
        return out

    def _advance(self, k: int, dt_s: float) -> None:
        """``k`` physics steps of ``dt_s``: profile, guard, plant, accumulators.

        Per step only what the next step needs is computed; the per-pack statistics (charge,
        throughput, energy, guard stops) are reduced from the chunk's history at its end.
        """
        plant = self.plant
        cell = plant.model.cell
        n = self.n_packs
        times: FloatArray = self.time_s + dt_s * np.arange(k, dtype=np.float64)
        power = self.profile.kind == "power"
        v_min, v_max = self._voltage_limits
        any_cell = _any_per_row(self.cells)
        ones = np.ones(self.cells)
        temp_sum = self._temp_sum
        eta = self.params.coulombic_efficiency
        q_eff = self._q_eff_as
        pack_voltage = self._pack_voltage_v
        requests = np.empty((k, n))
        applied_hist = np.empty((k, n))
        voltage_hist = np.empty((k, n))
        q_eff_hist = np.empty((k, n))
        # SoC look-ahead: all cells of a pack take the same charge and capacities are fixed
        # until the next ageing update, so the cell nearest a SoC bound stays the nearest: the
        # charge each pack may still take (or give) is known per pack from the chunk's start.
        charge_as = plant.state.soc * cell.capacity_as
        capacity_as = np.broadcast_to(cell.capacity_as, charge_as.shape)
        room_up = np.min((1.0 - SOC_MARGIN) * capacity_as - charge_as, axis=1) + q_eff
        room_down = q_eff - np.min(charge_as - SOC_MARGIN * capacity_as, axis=1)
        block_values = requests
        for j in range(k):
            b = j % _PROFILE_BLOCK
            if b == 0 or power:  # profile values in cache-sized blocks (power: every step)
                span = times[j : j + (1 if power else _PROFILE_BLOCK)]
                block_values = self._requests(span, pack_voltage if power else None)
                b = 0
            request = block_values[b]
            requests[j] = request
            v = cell.terminal_voltage(plant.state, request[:, None])
            pack_voltage = v @ ones
            moved = request * dt_s
            if eta != 1.0:
                moved = np.where(moved > 0.0, eta * moved, moved)
            after = q_eff + moved
            leaves = (after > room_up) | (after < room_down)
            block = np.where(request > 0.0, any_cell(v > v_max), any_cell(v < v_min)) | leaves
            applied = np.where(block, 0.0, request)
            plant.step(applied, dt_s)
            np.add(temp_sum, plant.state.temperature_c, out=temp_sum)
            q_eff = np.where(block, q_eff, after)
            applied_hist[j] = applied
            voltage_hist[j] = pack_voltage
            q_eff_hist[j] = q_eff
        self._pack_voltage_v = pack_voltage
        self._q_eff_as = q_eff
        self._q_eff_sum += q_eff_hist.sum(axis=0)
        magnitude = np.abs(applied_hist)
        abs_sum = magnitude.sum(axis=0)
        self._abs_as += abs_sum * dt_s
        self._throughput_as += abs_sum * dt_s
        self._sq_a2s += np.einsum("ij,ij->j", magnitude, magnitude) * dt_s
        q_path = self._q_as + np.cumsum(applied_hist, axis=0) * dt_s
        self._q_as = q_path[-1].copy()
        np.minimum(self._q_min, q_path.min(axis=0), out=self._q_min)
        np.maximum(self._q_max, q_path.max(axis=0), out=self._q_max)
        power_w = applied_hist * voltage_hist
        self._energy_net_ws += power_w.sum(axis=0) * dt_s
        self._energy_abs_ws += np.abs(power_w).sum(axis=0) * dt_s
        self._blocked_pack_steps += int(np.count_nonzero((applied_hist == 0.0) & (requests != 0.0)))
        self._pack_steps += k * n
        self._interval_steps += k
        self._interval_s += k * dt_s
        self.time_s += k * dt_s

    def _apply_ageing(self) -> None:
        """Advance the ageing model over the interval just simulated and apply the health."""
        if self._interval_steps == 0:
            return
        capacity_as = self.plant.model.cell.capacity_as  # unchanged since the interval began
        mean_moved = self._q_eff_sum / self._interval_steps - self._q_eff_start
        soc = self._soc_start + mean_moved[:, None] / capacity_as
        temperature = self._temp_sum / self._interval_steps
        self._dod_ring_min.append(self._q_min.copy())
        self._dod_ring_max.append(self._q_max.copy())
        keep = max(1, round(self.dod_window_s / self._interval_s))
        del self._dod_ring_min[:-keep], self._dod_ring_max[:-keep]
        swing_as = np.max(self._dod_ring_max, axis=0) - np.min(self._dod_ring_min, axis=0)
        dod = np.clip(swing_as[:, None] / 3600.0 / self.capacity_ah, 0.0, 1.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            c_current = np.where(self._abs_as > 0.0, self._sq_a2s / self._abs_as, 0.0)
        voltage = self._ocv(soc, temperature) if self.ageing.needs_voltage else None
        self.ageing_state = age(
            self.ageing,
            self.ageing_state,
            soc,
            temperature,
            c_current[:, None],
            self._interval_s,
            self.capacity_ah,
            voltage_v=voltage,
            throughput_ah=(self._abs_as / 3600.0)[:, None],
            depth_of_discharge=dod,
        )
        self.plant.set_health(*health(self.ageing_state))
        self._ageing_updates += 1
        self._new_interval()

    def _sample_extremes(self) -> None:
        temperature = self.plant.temperature_c
        self._t_min = min(self._t_min, float(temperature.min()))
        self._t_max = max(self._t_max, float(temperature.max()))
        v = self.plant.cell_voltages_v()
        self._v_min = min(self._v_min, float(v.min()))
        self._v_max = max(self._v_max, float(v.max()))


def prior_ageing(
    ageing: AgeingParameters,
    years: FloatArray,
    capacity_ah: FloatArray,
    conditions: AgeSpread,
    ocv: Callable[[FloatArray, float], FloatArray],
) -> AgeingState:
    """Ageing state of cells after ``years`` of service each (0: new), the model run over that
    history at the steady ``conditions`` of ``AgeSpread`` (cycling, SoC, temperature, DoD).

    ``capacity_ah`` is each cell's nominal capacity; ``ocv(soc, temperature_c)`` its open-circuit
    voltage (for the voltage-driven laws).
    """
    fresh = AgeingState.fresh(years.shape)
    if not np.any(years > 0.0):
        return fresh
    throughput = 2.0 * conditions.fec_per_year * years * capacity_ah
    soc = np.full(years.shape, conditions.soc)
    return age(
        ageing,
        fresh,
        soc,
        conditions.temperature_c,
        conditions.c_rate * capacity_ah,
        years * YEAR_S,
        capacity_ah,
        voltage_v=ocv(soc, conditions.temperature_c) if ageing.needs_voltage else None,
        throughput_ah=throughput,
        depth_of_discharge=conditions.depth_of_discharge,
    )


BoolArray = NDArray[np.bool_]


class _SharedArrheniusCellModel(CellModel):
    """A ``CellModel`` that computes the Arrhenius factor of a state once, not twice.

    Each fleet step evaluates the terminal voltage (guard) and then steps the same state; both
    ask ``resistance_factor`` for the same temperature array, an ``exp`` over every cell. The
    factor is kept for the last (temperature array, resistance scale) pair, by identity: exact,
    since the arrays of a ``CellState`` are never modified in place (new states get new arrays,
    ``PackPlant.set_health`` assigns a new ``resistance_scale``).
    """

    def __init__(self, base: CellModel) -> None:
        super().__init__(base.params)
        self.capacity_as = base.capacity_as
        self.resistance_scale = base.resistance_scale
        self._arrhenius_key: tuple[object, object] | None = None
        self._arrhenius: FloatArray = np.ones(())

    def resistance_factor(self, temperature_c: FloatArray) -> FloatArray:
        """As ``CellModel.resistance_factor``, reused for the same inputs."""
        key = self._arrhenius_key
        if key is not None and key[0] is temperature_c and key[1] is self.resistance_scale:
            return self._arrhenius
        value = super().resistance_factor(temperature_c)
        self._arrhenius_key = (temperature_c, self.resistance_scale)
        self._arrhenius = value
        return value


def _check_dt(dt_s: float) -> None:
    if not (dt_s > 0 and math.isfinite(dt_s)):
        raise TwinValidationError(f"dt_s must be positive and finite, got {dt_s}")


def _any_per_row(cells: int) -> Callable[[BoolArray], BoolArray]:
    """``mask.any(axis=1)`` for a C-contiguous ``(packs, cells)`` bool array, fast.

    With a multiple of 8 cells the rows are read as 64-bit words (8 cells per word).
    """
    if cells % 8:

        def rows(mask: BoolArray) -> BoolArray:
            out: BoolArray = np.any(mask, axis=1)
            return out

        return rows
    words = cells // 8

    def packed(mask: BoolArray) -> BoolArray:
        w = np.ascontiguousarray(mask).view(np.uint64)
        acc = w[:, 0]
        for k in range(1, words):
            acc = acc | w[:, k]
        out: BoolArray = acc != 0
        return out

    return packed
