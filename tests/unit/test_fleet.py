"""Fleet mode: charge conservation, ageing in virtual time, mixed ages, the voltage guard, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from b2l.cli import main
from simulators.fleet import SOC_MARGIN, AgeSpread, Fleet
from simulators.plant import PackPlant
from simulators.profiles import Profile, csv_profile, domestic_pv_self_consumption
from twin.ageing import AgeingLaw, AgeingParameters, AgeingState, age, health
from twin.cell_params import CellParameters, load_builtin
from twin.errors import TwinValidationError
from twin.pack_model import PackModel

pytestmark = pytest.mark.unit

DAY_S = 86_400.0
SETS = ("nmc_lgm50", "lfp_a123")


def constant(current_a: float) -> Profile:
    return csv_profile(f"time_s,current_a\n0,{current_a}\n3600,{current_a}\n")


def domestic(params: CellParameters, days: float = 31) -> Profile:
    return domestic_pv_self_consumption(days, 300.0, 11, params.capacity_ah)


# -- charge conservation -----------------------------------------------------------------------


@pytest.mark.parametrize("name", SETS)
def test_charge_is_conserved_through_steps_guard_and_ageing(name: str) -> None:
    params = load_builtin(name)
    fleet = Fleet(
        params,
        3,
        16,
        domestic(params),
        seed=2,
        age_spread=AgeSpread(max_years=3.0, replaced_fraction=0.2),
    )
    cell = fleet.plant.model.cell
    capacity0_ah = cell.capacity_as / 3600.0
    soc0 = fleet.plant.soc.copy()
    summary = fleet.run(30, 600.0)
    capacity1_ah = cell.capacity_as / 3600.0
    stored_change_ah = fleet.plant.soc * capacity1_ah - soc0 * capacity0_ah
    counted_ah = fleet.plant.charge_ah
    assert np.max(np.abs(counted_ah - stored_change_ah) / capacity0_ah) < 1e-9
    # the run did move charge, hit the guard and aged the cells
    assert summary.charge_throughput_ah > 30 * 3 * 0.3 * params.capacity_ah
    assert summary.guard_blocked_fraction > 0.0
    assert summary.ageing_updates == 30 * 24
    assert np.all(fleet.plant.soh < fleet.soh_initial)
    assert not np.array_equal(capacity1_ah, capacity0_ah)


# -- ageing in virtual time --------------------------------------------------------------------


def test_fleet_ageing_integrates_the_model_exactly_at_constant_conditions() -> None:
    law = AgeingLaw(
        driver="time",
        unit=DAY_S,
        exponent=0.75,
        scale=2e-3,
        activation_energy_j_per_mol=50_000.0,
    )
    ageing = AgeingParameters(
        name="test",
        chemistry="NMC",
        source="test law",
        calendar_capacity=law,
        calendar_resistance=law.model_copy(update={"exponent": 1.0, "scale": 1e-3}),
    )
    params = load_builtin("nmc_lgm50")
    fleet = Fleet(
        params,
        2,
        8,
        constant(0.0),
        ageing=ageing,
        ambient_c=35.0,
        seed=1,
        ageing_interval_s=5 * DAY_S,
    )
    fleet.run(90, 3600.0)
    arrhenius = math.exp(-50_000.0 / 8.314462618 * (1 / 308.15 - 1 / 298.15))
    expected_loss = 2e-3 * arrhenius * 90**0.75
    np.testing.assert_allclose(fleet.plant.soh, 1.0 - expected_loss, rtol=1e-12)
    np.testing.assert_allclose(fleet.plant.resistance_factor, 1 + 1e-3 * arrhenius * 90, rtol=1e-12)
    np.testing.assert_allclose(fleet.ageing_state.time_s, 90 * DAY_S, rtol=1e-12)


def test_resting_nmc_fleet_fades_as_schmalstieg_says() -> None:
    params = load_builtin("nmc_lgm50")
    fleet = Fleet(
        params,
        2,
        8,
        constant(0.0),
        ambient_c=40.0,
        initial_soc=0.5,
        seed=4,
        ageing_interval_s=DAY_S,
    )
    ocv = fleet.plant.model.cell.ocv
    voltage_start = ocv(fleet.plant.soc, 40.0)
    summary = fleet.run(120, 3600.0)
    voltage_end = ocv(fleet.plant.soc, 40.0)  # the SoC creeps up as capacity fades (charge kept)
    arrhenius = 1e6 * math.exp(-6976.0 / 313.15) * 120**0.75
    loss = 1.0 - fleet.plant.soh
    assert np.all(loss > (7.543 * voltage_start - 23.75) * arrhenius)
    assert np.all(loss < (7.543 * voltage_end - 23.75) * arrhenius)
    np.testing.assert_allclose(loss, (7.543 * voltage_end - 23.75) * arrhenius, rtol=0.02)
    assert 0.01 < 1.0 - summary.soh_final.mean < 0.1
    assert summary.soh_final.mean < summary.soh_initial.mean == 1.0
    assert summary.resistance_factor_final.min > 1.0


def test_cycling_ages_faster_than_resting() -> None:
    params = load_builtin("lfp_a123")
    resting = Fleet(params, 2, 8, constant(0.0), seed=5).run(40, 1800.0)
    cycling = Fleet(params, 2, 8, domestic(params, 41), seed=5).run(40, 1800.0)
    assert cycling.equivalent_full_cycles.mean > 20
    assert resting.equivalent_full_cycles.mean == 0.0
    assert cycling.soh_final.mean < resting.soh_final.mean < 1.0


# -- mixed ages --------------------------------------------------------------------------------


def test_packs_start_with_mixed_histories_from_the_seed() -> None:
    params = load_builtin("lfp_a123")
    spread = AgeSpread(max_years=6.0, fec_per_year=300.0, replaced_fraction=0.25)
    fleet = Fleet(params, 12, 8, constant(0.0), age_spread=spread, seed=9)
    soh = fleet.soh_initial
    state = fleet.ageing_state
    replaced = state.time_s == 0.0
    assert 0.1 < replaced.mean() < 0.4
    assert np.all(soh[replaced] == 1.0)
    assert np.all(soh[~replaced] < 1.0)
    assert np.ptp(soh.mean(axis=1)) > 0.02  # packs differ
    assert np.all(np.ptp(soh, axis=1) > 0.0)  # and so do the cells inside each pack
    np.testing.assert_array_equal(fleet.plant.soh, soh)
    np.testing.assert_array_equal(fleet.plant.resistance_factor, health(state)[1])
    # the history is the model run at the drawn conditions
    expected = age(
        fleet.ageing,
        AgeingState.fresh(soh.shape),
        0.5,
        25.0,
        0.5 * fleet.capacity_ah,
        state.time_s,
        fleet.capacity_ah,
        throughput_ah=state.throughput_ah,
        depth_of_discharge=0.8,
    )
    np.testing.assert_array_equal(health(expected)[0], soh)
    np.testing.assert_allclose(fleet.plant.soc.mean(), 0.5, atol=0.02)  # SoC of aged capacity
    same = Fleet(params, 12, 8, constant(0.0), age_spread=spread, seed=9)
    np.testing.assert_array_equal(same.soh_initial, soh)


# -- voltage guard -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", SETS)
def test_voltage_guard_stops_charging_at_the_upper_limit(name: str) -> None:
    params = load_builtin(name)
    fleet = Fleet(
        params,
        3,
        8,
        constant(params.capacity_ah / 2),
        initial_soc=0.9,
        phase_spread_s=0.0,
        scale_spread=0.0,
        seed=3,
    )
    worst = 0.0
    for _ in range(600):
        fleet.advance(1, 2.0)
        worst = max(worst, float(fleet.plant.cell_voltages_v().max()))
    assert worst <= params.voltage_max_v + 0.02  # overshoot: at most about one 2 s step
    assert worst > params.voltage_max_v - 0.1  # it did get there
    assert np.all(fleet.plant.current_a == 0.0)  # and stopped
    assert np.all(fleet.plant.soc <= 1.0 - SOC_MARGIN)


@pytest.mark.parametrize("name", SETS)
def test_voltage_guard_stops_discharging_at_the_lower_limit(name: str) -> None:
    params = load_builtin(name)
    current = -params.capacity_ah  # 1C
    fleet = Fleet(
        params,
        3,
        8,
        constant(current),
        initial_soc=0.08,
        phase_spread_s=0.0,
        scale_spread=0.0,
        seed=3,
    )
    worst = 10.0
    for _ in range(300):
        fleet.advance(1, 2.0)
        worst = min(worst, float(fleet.plant.cell_voltages_v().min()))
    assert worst >= params.voltage_min_v - 0.03
    assert worst < params.voltage_min_v + 0.2
    assert np.all(fleet.plant.current_a == 0.0)
    assert np.all(fleet.plant.soc >= SOC_MARGIN)


def test_request_is_clipped_to_the_cell_current_limits() -> None:
    params = load_builtin("nmc_lgm50")
    fleet = Fleet(params, 2, 8, constant(100.0), scale_spread=0.0, seed=1)
    np.testing.assert_array_equal(fleet.requested_current_a(0.0), params.current_max_charge_a)


def test_power_profiles_become_currents_through_the_pack_voltage() -> None:
    params = load_builtin("lfp_a123")
    profile = csv_profile("time_s,power_w\n0,-20\n60,-20\n")
    fleet = Fleet(params, 2, 8, profile, phase_spread_s=0.0, scale_spread=0.0, seed=1)
    summary = fleet.run(1 / 24, 10.0)
    pack_voltage = fleet.plant.pack_voltages_v()
    np.testing.assert_allclose(fleet.plant.current_a * pack_voltage, -20.0, rtol=0.01)
    assert summary.energy_discharged_kwh == pytest.approx(2 * 20 / 1000, rel=0.01)
    assert summary.guard_blocked_fraction == 0.0
    assert summary.notes


# -- reproducibility and the summary -----------------------------------------------------------


def test_same_seed_same_run() -> None:
    params = load_builtin("nmc_lgm50")

    def run(seed: int) -> dict[str, object]:
        fleet = Fleet(
            params, 3, 8, domestic(params, 8), seed=seed, age_spread=AgeSpread(max_years=2.0)
        )
        document = fleet.run(7, 900.0).to_json_dict()
        for key in ("wall_s", "cell_steps_per_s"):
            document.pop(key)
        return document

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_fleet_refuses_nonsense() -> None:
    params = load_builtin("nmc_lgm50")
    with pytest.raises(TwinValidationError, match="at least one pack"):
        Fleet(params, 0, 8, constant(0.0))
    with pytest.raises(TwinValidationError, match="initial_soc"):
        Fleet(params, 1, 8, constant(0.0), initial_soc=1.5)
    with pytest.raises(TwinValidationError, match="age spread"):
        AgeSpread(replaced_fraction=2.0)
    fleet = Fleet(params, 1, 8, constant(0.0))
    with pytest.raises(TwinValidationError, match="dt_s"):
        fleet.run(1, 0.0)


# -- b2l sim fleet -----------------------------------------------------------------------------


def test_cli_sim_fleet_writes_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "summary.json"
    argv = [
        "sim",
        "fleet",
        "--packs",
        "3",
        "--cells",
        "8",
        "--days",
        "2",
        "--dt",
        "300",
        "--chemistry",
        "lfp_a123",
        "--age-spread",
        "2",
        "--seed",
        "4",
        "-o",
        str(out),
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "cell-steps/s" in captured.out
    assert "3 packs x 8 cells" in captured.out
    assert "b2l sim:" in captured.err  # progress on stderr
    summary = json.loads(out.read_text())
    assert summary["kind"] == "b2l.fleet_summary"
    assert summary["cell_steps"] == 3 * 8 * 2 * 288
    assert summary["chemistry"] == "LFP"
    assert summary["ageing_model"].startswith("Wang")
    assert summary["soh_final"]["mean"] < summary["soh_initial"]["mean"] < 1.0
    assert summary["command"]["packs"] == 3
    assert not list(tmp_path.glob(".*.tmp"))


def test_cli_sim_fleet_runs_a_csv_profile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    profile = tmp_path / "load.csv"
    profile.write_text("time_s,current_a\n0,2\n3600,-2\n")
    argv = [
        "sim",
        "fleet",
        "--packs",
        "2",
        "--cells",
        "4",
        "--days",
        "1",
        "--dt",
        "600",
        "--profile",
        str(profile),
        "--quiet",
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "cell-steps/s" in captured.out and captured.err == ""


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--chemistry", "unobtainium"], "no parameter set"),
        (["--profile", "missing.csv"], "cannot read"),
        (["--ageing", "NaIon"], "no ageing model"),
    ],
)
def test_cli_sim_fleet_errors_are_clear(
    extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["sim", "fleet", "--packs", "1", "--cells", "4", "--days", "1", *extra]
    assert main(argv) == 1
    assert message in capsys.readouterr().err


def test_cli_sim_fleet_refuses_bad_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["sim", "fleet", "--packs", "0", "--cells", "4", "--days", "1"])
    assert exc.value.code == 2
    assert "not positive" in capsys.readouterr().err


def test_fleet_plant_matches_a_plain_plant_bit_for_bit() -> None:
    """The fleet's speed-ups (shared Arrhenius factor, per-pack look-ahead) change no bit."""
    params = load_builtin("nmc_lgm50")
    fleet = Fleet(params, 4, 8, domestic(params, 3), seed=1, age_spread=AgeSpread(max_years=3.0))
    model = PackModel.build(params, n_packs=4, cells_in_series=8, seed=1)
    plain = PackPlant(model, 0.5, fleet.plant.ambient_c)
    plain.set_health(fleet.plant.capacity_factor, fleet.plant.resistance_factor)
    plain.state = fleet.plant.state
    for _ in range(150):  # 2.5 h at 60 s: two ageing updates
        fleet.advance(1, 60.0)
        plain.step(fleet.plant.current_a, 60.0)
        if not np.array_equal(fleet.plant.capacity_factor, plain.capacity_factor):
            plain.set_health(fleet.plant.capacity_factor, fleet.plant.resistance_factor)
    assert fleet.time_s == 150 * 60.0 and np.all(fleet.plant.soh < fleet.soh_initial)
    for name in ("soc", "v_rc_v", "hysteresis_v", "temperature_c"):
        assert getattr(fleet.plant.state, name).tobytes() == getattr(plain.state, name).tobytes()
    assert fleet.plant.charge_ah.tobytes() == plain.charge_ah.tobytes()
