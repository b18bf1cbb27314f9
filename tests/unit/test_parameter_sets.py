"""The published parameter sets in ``twin/parameters``: they load, and they behave like the cells.

Expected numbers are the cells' published ratings (datasheets; Chen et al. 2020 for the LG M50,
Prada et al. 2013 for the A123 ANR26650M1), with tolerances wide enough for an ECM.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from twin.cell_model import CellModel
from twin.cell_params import CellParameters, builtin_parameter_sets, load_builtin

pytestmark = pytest.mark.unit


@dataclass(frozen=True)
class Published:
    """What the datasheet / literature says about a cell."""

    name: str
    chemistry: str
    nominal_ah: float
    voltage_min_v: float
    voltage_max_v: float
    dc_resistance_ohm: tuple[float, float]
    """Range of the 10 s, 1C DC resistance at 50 % SoC, 25 degC."""


CELLS = [
    # LG M50: 5.0 Ah nominal; 10 s pulse resistance a few tens of mOhm (Chen 2020's DFN: ~29)
    Published("nmc_lgm50", "NMC", 5.0, 2.5, 4.2, (0.015, 0.045)),
    # A123 ANR26650M1: 2.3 Ah; 6 mOhm at 1 kHz, ~10 mOhm DC
    Published("lfp_a123", "LFP", 2.3, 2.0, 3.6, (0.007, 0.015)),
]
IDS = [c.name for c in CELLS]
DT_S = 1.0


def _discharge(params: CellParameters, current_a: float, seconds: float | None = None):
    """Constant-current discharge from full at 25 degC ambient: time, voltage, temperature."""
    model = CellModel(params)
    state = model.initial_state(1.0, 25.0)
    times, volts, temps = [], [], []
    t = 0.0
    while seconds is None or t < seconds:
        state = model.step(state, -current_a, 25.0, DT_S)
        t += DT_S
        v = float(model.terminal_voltage(state, -current_a))
        times.append(t)
        volts.append(v)
        temps.append(float(state.temperature_c))
        if seconds is None and v <= params.voltage_min_v:
            break
        if t > 4 * 3600:
            raise AssertionError("discharge did not reach the lower voltage limit")
    return np.array(times), np.array(volts), np.array(temps)


def test_builtin_sets_are_listed() -> None:
    names = builtin_parameter_sets()
    assert {"nmc_lgm50", "lfp_a123"} <= set(names)


@pytest.mark.parametrize("cell", CELLS, ids=IDS)
def test_set_loads_with_its_citation(cell: Published) -> None:
    params = load_builtin(cell.name)
    assert params.chemistry == cell.chemistry
    assert params.voltage_min_v == cell.voltage_min_v
    assert params.voltage_max_v == cell.voltage_max_v
    assert params.capacity_ah == pytest.approx(cell.nominal_ah, rel=0.05)
    assert "tools/make_parameter_sets.py" in params.source
    assert "PyBaMM" in params.source
    assert params.activation_energy_j_per_mol > 0.0
    assert 0.0 < params.hysteresis_v <= 0.02
    # round trip through the project's own writer
    assert CellParameters.model_validate_json(params.to_json()) == params


@pytest.mark.parametrize("cell", CELLS, ids=IDS)
def test_ocv_rises_across_the_voltage_window(cell: Published) -> None:
    params = load_builtin(cell.name)
    ocv = np.array(params.ocv_v)
    assert np.all(np.diff(ocv) >= 0.0)
    assert ocv[0] == pytest.approx(cell.voltage_min_v, abs=0.05)
    assert ocv[-1] == pytest.approx(cell.voltage_max_v, abs=0.05)


def test_nmc_ocv_shape() -> None:
    params = load_builtin("nmc_lgm50")
    soc, ocv = np.array(params.soc_grid), np.array(params.ocv_v)
    assert 3.0 < np.interp(0.05, soc, ocv) < 3.3
    assert 3.6 < np.interp(0.5, soc, ocv) < 3.9
    assert 4.05 < np.interp(0.9, soc, ocv) < 4.15
    # entropic coefficient of NMC/graphite: a fraction of a mV/K
    assert np.max(np.abs(params.docv_dt_v_per_k or [1.0])) < 1e-3


def test_lfp_ocv_has_its_flat_plateau() -> None:
    params = load_builtin("lfp_a123")
    soc, ocv = np.array(params.soc_grid), np.array(params.ocv_v)
    on_plateau = (ocv >= 3.15) & (ocv <= 3.4)
    assert on_plateau.mean() > 0.7
    assert 3.2 < np.interp(0.5, soc, ocv) < 3.35
    # flat: less than 0.2 V between 25 % and 90 % SoC
    assert np.interp(0.9, soc, ocv) - np.interp(0.25, soc, ocv) < 0.2


@pytest.mark.parametrize("cell", CELLS, ids=IDS)
def test_1c_discharge_delivers_about_the_nominal_capacity(cell: Published) -> None:
    params = load_builtin(cell.name)
    times, volts, _ = _discharge(params, cell.nominal_ah)
    delivered_ah = cell.nominal_ah * times[-1] / 3600.0
    assert delivered_ah == pytest.approx(cell.nominal_ah, rel=0.10)
    assert volts[-1] == pytest.approx(cell.voltage_min_v, abs=0.05)
    # mid-discharge the voltage sits below the OCV plateau but well inside the window
    assert cell.voltage_min_v + 0.5 < np.median(volts) < cell.voltage_max_v


@pytest.mark.parametrize("cell", CELLS, ids=IDS)
def test_1c_voltage_drop_matches_published_dc_resistance(cell: Published) -> None:
    params = load_builtin(cell.name)
    model = CellModel(params)
    state = model.initial_state(0.5, 25.0)
    rest_v = float(model.terminal_voltage(state, 0.0))
    current = cell.nominal_ah
    for _ in range(10):
        state = model.step(state, -current, 25.0, DT_S)
    drop_v = rest_v - float(model.terminal_voltage(state, -current))
    # the OCV moves a little in 10 s and the hysteresis starts swinging: both part of the drop
    low, high = cell.dc_resistance_ohm
    assert low < drop_v / current < high


@pytest.mark.parametrize(
    ("name", "nominal_ah", "low_k", "high_k"),
    [
        # ~1 W of heat into hA = 0.053 W/K: well above "a few K"; PyBaMM's lumped DFN with the
        # Chen2020 set (no entropic heat) warms by 14 K, the set's O'Regan 2022 entropic
        # coefficient adds ~3 K at the end of discharge
        ("nmc_lgm50", 5.0, 8.0, 25.0),
        # high-power LFP: ~10 mOhm at 2.3 A, 0.1 W: one or two K
        ("lfp_a123", 2.3, 0.5, 4.0),
    ],
)
def test_1c_discharge_warms_an_isolated_cell(
    name: str, nominal_ah: float, low_k: float, high_k: float
) -> None:
    params = load_builtin(name)
    _, _, temps = _discharge(params, nominal_ah)
    rise = temps.max() - 25.0
    assert low_k < rise < high_k
    assert np.all(np.diff(temps[:600]) > 0.0)  # warming from the start


def test_resistances_rise_when_cold() -> None:
    params = load_builtin("nmc_lgm50")
    model = CellModel(params)
    factor = model.resistance_factor(np.array([0.0, 25.0, 45.0]))
    assert factor[0] > 1.5 and factor[1] == pytest.approx(1.0) and factor[2] < 1.0
