"""The equivalent-circuit cell model and the pack model against closed-form physics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from twin.cell_model import CellModel, CellState
from twin.cell_params import CellParameters
from twin.errors import TwinValidationError
from twin.pack_model import CellSpread, PackModel
from twin.topology import BatteryTopology

pytestmark = pytest.mark.unit


def params(**changes: object) -> CellParameters:
    data: dict[str, object] = {
        "name": "test cell",
        "chemistry": "NMC",
        "source": "hand-made for tests",
        "capacity_ah": 5.0,
        "soc_grid": [0.0, 0.5, 1.0],
        "ocv_v": [3.0, 3.7, 4.2],
        "r0_ohm": [0.02, 0.02, 0.02],
        "rc": [{"r_ohm": [0.01] * 3, "tau_s": [30.0] * 3}],
        "voltage_min_v": 2.5,
        "voltage_max_v": 4.2,
        "current_max_charge_a": 5.0,
        "current_max_discharge_a": 10.0,
    }
    data.update(changes)
    return CellParameters.model_validate(data)


def run(model: CellModel, state: CellState, current: float, seconds: int, dt: float = 1.0):  # type: ignore[no-untyped-def]
    for _ in range(int(seconds / dt)):
        state = model.step(state, current, 25.0, dt)
    return state


def test_charge_is_conserved() -> None:
    model = CellModel(params())
    state = run(model, model.initial_state(0.9), -5.0, 1800)  # 1C for half an hour
    assert state.soc == pytest.approx(0.4, abs=1e-12)
    state = run(model, state, 2.5, 3600)
    assert state.soc == pytest.approx(0.9, abs=1e-12)


def test_coulombic_efficiency_applies_to_charge_only() -> None:
    model = CellModel(params(coulombic_efficiency=0.99))
    state = run(model, model.initial_state(0.5), 5.0, 360)
    assert state.soc == pytest.approx(0.5 + 0.99 * 0.1, abs=1e-12)


def test_rc_step_response_is_exact_for_any_time_step() -> None:
    model = CellModel(params())
    for dt in (0.1, 1.0, 10.0):
        state = run(model, model.initial_state(0.5), -5.0, 60, dt)
        expected = -5.0 * 0.01 * (1 - math.exp(-60 / 30))
        assert state.v_rc_v[0] == pytest.approx(expected, rel=1e-9)


def test_voltage_is_ocv_plus_overpotentials_and_relaxes_to_ocv() -> None:
    model = CellModel(params())
    state = model.initial_state(0.5)
    assert model.terminal_voltage(state, -5.0) == pytest.approx(3.7 - 5.0 * 0.02)
    state = run(model, state, -5.0, 600)
    state = run(model, state, 0.0, 3600)
    assert model.terminal_voltage(state, 0.0) == pytest.approx(float(model.ocv(state.soc, 25.0)))


def test_lumped_thermal_model_reaches_the_joule_steady_state() -> None:
    p = params(heat_capacity_j_per_k=100.0, heat_transfer_w_per_k=0.2)
    model = CellModel(p)
    state = run(model, model.initial_state(0.05), 5.0, 3000, 1.0)  # six thermal time constants
    # i^2 (R0 + R1) / hA once the RC branch has settled
    assert state.temperature_c == pytest.approx(25.0 + 25.0 * 0.03 / 0.2, abs=0.02)


def test_resistance_rises_in_the_cold_by_arrhenius() -> None:
    model = CellModel(params(activation_energy_j_per_mol=30_000.0))
    cold = model.initial_state(0.5, temperature_c=0.0)
    warm = model.initial_state(0.5, temperature_c=25.0)
    drop_cold = 3.7 - float(model.terminal_voltage(cold, -5.0))
    drop_warm = 3.7 - float(model.terminal_voltage(warm, -5.0))
    expected = math.exp(30_000 / 8.314462618 * (1 / 273.15 - 1 / 298.15))
    assert drop_cold / drop_warm == pytest.approx(expected, rel=1e-9)


def test_hysteresis_follows_the_direction_of_current() -> None:
    model = CellModel(params(hysteresis_v=0.02, hysteresis_rate=50.0))
    state = run(model, model.initial_state(0.5), 5.0, 600)
    assert state.hysteresis_v == pytest.approx(0.02, abs=1e-4)
    state = run(model, state, -5.0, 600)
    assert state.hysteresis_v == pytest.approx(-0.02, abs=1e-4)
    rest = run(model, state, 0.0, 600)
    assert rest.hysteresis_v == state.hysteresis_v


def test_vectorised_cells_equal_cells_run_one_by_one() -> None:
    rng = np.random.default_rng(1)
    capacity, resistance = rng.uniform(0.8, 1.2, 8), rng.uniform(0.8, 1.5, 8)
    soc0, current = rng.uniform(0.2, 0.9, 8), rng.uniform(-5, 5, (50, 8))
    model = CellModel(params(), capacity, resistance)
    state = model.initial_state(soc0)
    for row in current:
        state = model.step(state, row, 25.0, 1.0)
    for k in range(8):
        single = CellModel(params(), capacity[k], resistance[k])
        s = single.initial_state(soc0[k])
        for row in current:
            s = single.step(s, row[k], 25.0, 1.0)
        assert s.soc == state.soc[k] and s.temperature_c == state.temperature_c[k]


def test_state_round_trips_through_json_bit_for_bit() -> None:
    model = CellModel(params(hysteresis_v=0.01, hysteresis_rate=10.0), np.ones((3, 4)))
    state = run(model, model.initial_state(np.full((3, 4), 0.37)), -3.3, 77)
    again = CellState.from_json_dict(json.loads(json.dumps(state.to_json_dict())))
    for name in ("soc", "v_rc_v", "hysteresis_v", "temperature_c"):
        assert np.array_equal(getattr(again, name), getattr(state, name))
    assert np.array_equal(
        model.step(again, -1.0, 20.0, 1.0).soc, model.step(state, -1.0, 20.0, 1.0).soc
    )
    with pytest.raises(TwinValidationError):
        CellState.from_json_dict({"shape": [2], "soc": [0.1]})


def test_bad_inputs_are_refused() -> None:
    model = CellModel(params())
    with pytest.raises(TwinValidationError):
        model.initial_state(1.2)
    with pytest.raises(TwinValidationError):
        model.step(model.initial_state(0.5), 1.0, 25.0, 0.0)
    with pytest.raises(ValueError, match="ocv_v must not decrease"):
        params(ocv_v=[3.0, 3.9, 3.8])
    with pytest.raises(ValueError, match="r0_ohm has 2 values"):
        params(r0_ohm=[0.01, 0.01])


def test_packs_share_their_current_and_sum_their_voltages() -> None:
    topology = BatteryTopology(modules_per_pack=2, cells_per_module=8)
    packs = PackModel.build(params(), n_packs=3, topology=topology, seed=7)
    state = packs.initial_state([0.3, 0.6, 0.9])
    state = packs.step(state, np.array([-5.0, 0.0, 5.0]), 25.0, 10.0)
    cells = packs.cell_voltages(state, np.array([-5.0, 0.0, 5.0]))
    assert cells.shape == (3, 16)
    assert np.allclose(packs.pack_voltage(state, np.array([-5.0, 0.0, 5.0])), cells.sum(axis=1))
    assert np.all(state.soc[0] < packs.initial_state([0.3, 0.6, 0.9]).soc[0])


def test_spread_is_reproducible_from_its_seed_and_absent_without_spread() -> None:
    a = PackModel.build(params(), n_packs=2, cells_in_series=16, seed=3)
    b = PackModel.build(params(), n_packs=2, cells_in_series=16, seed=3)
    c = PackModel.build(params(), n_packs=2, cells_in_series=16, seed=4)
    assert np.array_equal(a.cell.capacity_as, b.cell.capacity_as)
    assert not np.array_equal(a.cell.capacity_as, c.cell.capacity_as)
    none = CellSpread(capacity_rel_std=0, resistance_rel_std=0, soc_std=0)
    flat = PackModel.build(params(), cells_in_series=4, spread=none)
    assert np.all(flat.initial_state(0.5).soc == 0.5)
