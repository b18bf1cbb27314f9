"""Parameter identification: known parameters recovered from synthetic tests, PyBaMM data,
bad data refused with a useful message, deterministic output."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from twin.cell_model import CellModel
from twin.cell_params import CellParameters, RcBranch
from twin.errors import TwinValidationError
from twin.identification import (
    OcvResult,
    PulseResult,
    identify,
    identify_ocv,
    identify_pulses,
    simulate_voltage,
)
from twin.lab_data import CellLog, cell_log, parse_csv

pytestmark = pytest.mark.unit

PYBAMM_DIR = Path(__file__).resolve().parents[1] / "data" / "pybamm"
CAPACITY_AH = 5.0
GRID = np.linspace(0.0, 1.0, 21)

Step = tuple[float, float, float, float | None]
"""current_a, duration_s, dt_s, stop at this voltage (None: run the whole duration)."""


def truth(hysteresis_v: float = 0.0) -> CellParameters:
    """A 5 Ah NMC-like cell: steep OCV at both ends, R0 and RC rising below 30 % SoC."""
    s = GRID
    ocv = 3.0 + 0.5 * (1 - np.exp(-s / 0.03)) + 0.55 * s + 0.14 * np.exp((s - 1) / 0.04)
    r0 = 0.020 + 0.010 * np.clip((0.3 - s) / 0.3, 0.0, None)
    return CellParameters(
        name="truth",
        chemistry="NMC",
        source="synthetic",
        capacity_ah=CAPACITY_AH,
        soc_grid=s.tolist(),
        ocv_v=ocv.tolist(),
        r0_ohm=r0.tolist(),
        rc=[
            RcBranch(r_ohm=(0.6 * r0).tolist(), tau_s=[2.0] * len(s)),
            RcBranch(r_ohm=(0.8 * r0 + 0.002).tolist(), tau_s=(25.0 + 10.0 * s).tolist()),
        ],
        hysteresis_v=hysteresis_v,
        hysteresis_rate=30.0 if hysteresis_v else 0.0,
        voltage_min_v=3.0,
        voltage_max_v=4.2,
        current_max_charge_a=5.0,
        current_max_discharge_a=10.0,
    )


def run(
    params: CellParameters, steps: Sequence[Step], soc: float = 1.0, noise_v: float = 0.0
) -> CellLog:
    """A lab log of ``CellModel`` under a step schedule (current in row k flows until k+1)."""
    model = CellModel(params)
    state = model.initial_state(soc)
    rows: list[tuple[float, float, float, float]] = []
    t = 0.0
    for current, duration, dt, stop_v in steps:
        end = t + duration
        while t < end - 1e-9:
            v = float(model.terminal_voltage(state, current))
            if stop_v is not None and (v - stop_v) * current >= 0.0:
                break
            rows.append((t, current, v, 25.0))
            state = model.step(state, current, 25.0, dt)
            t += dt
    table = np.array(rows)
    rng = np.random.default_rng(7)
    voltage = table[:, 2] + rng.normal(0.0, noise_v, len(table)) if noise_v else table[:, 2]
    return CellLog(table[:, 0], table[:, 1], voltage, table[:, 3])


def ocv_steps(charge_back: bool = True) -> list[Step]:
    """10 min rest, C/20 discharge to 3.0 V, 1 h rest, C/20 charge to 4.2 V; 60 s samples."""
    i = CAPACITY_AH / 20
    steps: list[Step] = [
        (0.0, 600, 60.0, None),
        (-i, 30 * 3600, 60.0, 3.0),
        (0.0, 3600, 60.0, None),
    ]
    return [*steps, (i, 30 * 3600, 60.0, 4.2)] if charge_back else steps


def hppc_steps(levels: int = 10) -> list[Step]:
    """1C 10 s discharge / 40 s rest / 0.75C 10 s charge / 40 s rest at SoC 1.0..0.1 (1 s
    samples), 10 % SoC steps at C/2 with 30 min rests between (10 s samples)."""
    q = CAPACITY_AH
    steps: list[Step] = [(0.0, 600, 10.0, None)]
    for k in range(levels):
        steps += [(-q, 10, 1.0, None), (0.0, 40, 1.0, None)]
        steps += [(0.75 * q, 10, 1.0, None), (0.0, 40, 1.0, None)]
        if k < levels - 1:
            steps += [(-q / 2, 720, 10.0, None), (0.0, 1800, 10.0, None)]
    return steps


@pytest.fixture(scope="module")
def cell() -> CellParameters:
    return truth()


@pytest.fixture(scope="module")
def ocv_log(cell: CellParameters) -> CellLog:
    return run(cell, ocv_steps())


@pytest.fixture(scope="module")
def hppc_log(cell: CellParameters) -> CellLog:
    return run(cell, hppc_steps())


@pytest.fixture(scope="module")
def ocv(ocv_log: CellLog) -> OcvResult:
    return identify_ocv(ocv_log)


@pytest.fixture(scope="module")
def pulses(hppc_log: CellLog, ocv: OcvResult) -> PulseResult:
    return identify_pulses(hppc_log, ocv)


def at(params: CellParameters, table: Sequence[float], soc: float) -> float:
    return float(np.interp(soc, params.soc_grid, table))


# -- recovery of known parameters -------------------------------------------------------------


def test_capacity_and_ocv_recovered(cell: CellParameters, ocv: OcvResult) -> None:
    assert ocv.capacity_ah == pytest.approx(cell.capacity_ah, rel=0.005)
    error_v = ocv.ocv_v - np.interp(ocv.soc_grid, cell.soc_grid, cell.ocv_v)
    middle = (ocv.soc_grid >= 0.05) & (ocv.soc_grid <= 0.95)
    assert np.max(np.abs(error_v[middle])) < 0.004
    assert np.all(np.diff(ocv.ocv_v) >= 0.0)
    assert (ocv.voltage_min_v, ocv.voltage_max_v) == (3.0, 4.2)
    # half the gap between the branches is the C/20 IR drop (no hysteresis in this cell)
    r_total = at(cell, cell.r0_ohm, 0.5) + sum(at(cell, b.r_ohm, 0.5) for b in cell.rc)
    assert ocv.half_gap_v == pytest.approx(r_total * CAPACITY_AH / 20, rel=0.05)
    assert "average" in ocv.method


def test_pulse_parameters_recovered(cell: CellParameters, pulses: PulseResult) -> None:
    assert len(pulses.pulses) == 20
    socs = [p.soc for p in pulses.pulses[::2]]
    assert socs == pytest.approx(np.linspace(1.0, 0.1, 10), abs=0.01)
    for p in pulses.pulses:
        assert p.r0_ohm == pytest.approx(at(cell, cell.r0_ohm, p.soc), rel=0.02)
        assert p.tau_s[0] < p.tau_s[1]
        assert p.fit_rmse_v < 2e-4
    # the tables at each pulse level: R0 within 2 %, polarisation resistance within 5 %
    for soc in np.mean(np.reshape([p.soc for p in pulses.pulses], (10, 2)), axis=1):
        r0 = float(np.interp(soc, pulses.soc_grid, pulses.r0_ohm))
        r_rc = [float(np.interp(soc, pulses.soc_grid, r)) for r in pulses.r_ohm]
        tau = [float(np.interp(soc, pulses.soc_grid, t)) for t in pulses.tau_s]
        true_rc = [at(cell, b.r_ohm, soc) for b in cell.rc]
        true_r0 = at(cell, cell.r0_ohm, soc)
        assert r0 == pytest.approx(true_r0, rel=0.02)
        assert sum(r_rc) == pytest.approx(sum(true_rc), rel=0.05)
        assert r0 + sum(r_rc) == pytest.approx(true_r0 + sum(true_rc), rel=0.05)
        assert tau[0] == pytest.approx(2.0, rel=0.05)
        assert tau[1] == pytest.approx(at(cell, cell.rc[1].tau_s, soc), rel=0.15)


def test_identify_assembles_a_parameter_set(ocv_log: CellLog, hppc_log: CellLog) -> None:
    messages: list[str] = []
    params = identify(ocv_log, hppc_log, name="cell 7", chemistry="NMC", progress=messages.append)
    assert params.capacity_ah == pytest.approx(CAPACITY_AH, rel=0.005)
    assert len(params.rc) == 2 and len(params.soc_grid) == 101
    assert params.current_max_discharge_a == 5.0 and params.current_max_charge_a == 3.75
    assert (params.voltage_min_v, params.voltage_max_v) == (3.0, 4.2)
    assert "HPPC test" in params.source and "OCV test" in params.source
    fit = params.fit
    assert fit is not None
    assert fit["n_pulses"] == 20
    assert isinstance(fit["pulse_r0_ohm"], list) and len(fit["pulse_r0_ohm"]) == 20
    rmse, max_error = fit["hppc_rmse_v"], fit["hppc_max_abs_error_v"]
    assert isinstance(rmse, float) and isinstance(max_error, float)
    assert rmse < 0.002 and max_error < 0.01
    assert len(messages) == 3 and messages[0].startswith("OCV test: capacity")


def test_noisy_measurements(cell: CellParameters) -> None:
    """0.3 mV of voltage noise (a good cycler's resolution) barely moves the parameters."""
    ocv = identify_ocv(run(cell, ocv_steps(), noise_v=3e-4))
    assert ocv.capacity_ah == pytest.approx(CAPACITY_AH, rel=0.005)
    result = identify_pulses(run(cell, hppc_steps(), noise_v=3e-4), ocv)
    for soc, r0 in zip(result.soc_grid[10:95:10], result.r0_ohm[10:95:10], strict=True):
        total = r0 + sum(np.interp(soc, result.soc_grid, r) for r in result.r_ohm)
        true_total = at(cell, cell.r0_ohm, soc) + sum(at(cell, b.r_ohm, soc) for b in cell.rc)
        assert r0 == pytest.approx(at(cell, cell.r0_ohm, soc), rel=0.02)
        assert total == pytest.approx(true_total, rel=0.05)


def test_hysteresis_is_averaged_out_and_estimated() -> None:
    cell = truth(hysteresis_v=0.015)
    ocv = identify_ocv(run(cell, ocv_steps()))
    error_v = ocv.ocv_v - np.interp(ocv.soc_grid, cell.soc_grid, cell.ocv_v)
    assert np.max(np.abs(error_v[5:96])) < 0.006
    ir_v = 0.050 * CAPACITY_AH / 20  # R0 + R1 + R2 at mid SoC, times the C/20 current
    assert ocv.half_gap_v == pytest.approx(0.015 + ir_v, abs=0.002)


def test_discharge_only_is_corrected_by_the_initial_step(cell: CellParameters) -> None:
    log = run(cell, ocv_steps(charge_back=False))
    ocv = identify_ocv(log)
    assert ocv.half_gap_v is None and "corrected by R = 0.02 ohm" in ocv.method
    error_v = ocv.ocv_v - np.interp(ocv.soc_grid, cell.soc_grid, cell.ocv_v)
    # only R0 is corrected: the OCV reads low by the RC polarisation at C/20 (~9 mV)
    assert np.all(np.abs(error_v[10:91] + 0.009) < 0.004)
    given = identify_ocv(log, resistance_ohm=0.0575)
    error_v = given.ocv_v - np.interp(ocv.soc_grid, cell.soc_grid, cell.ocv_v)
    assert "(given)" in given.method and np.max(np.abs(error_v[10:91])) < 0.003


@pytest.mark.parametrize("n_rc", [1, 3])
def test_other_numbers_of_rc_pairs(ocv_log: CellLog, hppc_log: CellLog, n_rc: int) -> None:
    params = identify(ocv_log, hppc_log, name="x", chemistry="NMC", n_rc=n_rc)
    assert len(params.rc) == n_rc
    taus = np.array([b.tau_s for b in params.rc])
    assert np.all(np.diff(taus, axis=0) > 0.0)
    assert params.fit is not None
    rmse = params.fit["hppc_rmse_v"]
    assert isinstance(rmse, float) and rmse < (0.015 if n_rc == 1 else 0.002)


def test_slow_pair_from_the_rests_after_the_soc_steps() -> None:
    """A cell with a 600 s diffusion pair: 10 s pulses cannot see it, the SoC steps can."""
    data = truth().model_dump()
    r0 = np.array(data["r0_ohm"])
    data["rc"].append({"r_ohm": (0.5 * r0).tolist(), "tau_s": [600.0] * len(r0)})
    cell = CellParameters.model_validate(data)
    ocv_log, hppc_log = run(cell, ocv_steps()), run(cell, hppc_steps())
    pulses_only = identify(ocv_log, hppc_log, name="x", chemistry="NMC", n_rc=3)
    params = identify(ocv_log, hppc_log, name="x", chemistry="NMC", n_rc=3, slow_rc=True)
    assert params.fit is not None and pulses_only.fit is not None
    rmse, rmse_pulses_only = params.fit["hppc_rmse_v"], pulses_only.fit["hppc_rmse_v"]
    assert isinstance(rmse, float) and isinstance(rmse_pulses_only, float)
    assert rmse < 0.004 and rmse < 0.5 * rmse_pulses_only
    assert params.fit["step_soc"] == pytest.approx(np.linspace(0.9, 0.1, 9), abs=0.01)
    slow = params.rc[2]
    for k in range(20, 90, 10):  # SoC 0.2..0.8
        assert slow.tau_s[k] == pytest.approx(600.0, rel=0.1)
        assert slow.r_ohm[k] == pytest.approx(0.5 * at(cell, cell.r0_ohm, k / 100), rel=0.25)
        assert params.rc[0].tau_s[k] < params.rc[1].tau_s[k] < slow.tau_s[k]
    with pytest.raises(TwinValidationError, match="n_rc must be 2 or 3, got 1"):
        identify_pulses(hppc_log, identify_ocv(ocv_log), 1, slow_rc=True)


def test_simulate_voltage_reproduces_the_model(cell: CellParameters, hppc_log: CellLog) -> None:
    assert np.array_equal(simulate_voltage(cell, hppc_log), hppc_log.voltage_v)


def test_identification_is_deterministic(ocv_log: CellLog, hppc_log: CellLog) -> None:
    first = identify(ocv_log, hppc_log, name="x", chemistry="NMC").to_json()
    second = identify(ocv_log, hppc_log, name="x", chemistry="NMC").to_json()
    assert first == second
    assert CellParameters.model_validate_json(first).to_json() == first


# -- PyBaMM DFN reference data (independent physics) ------------------------------------------


def read_log(path: Path) -> CellLog:
    assert path.is_file(), f"missing {path}: generate it with tools/pybamm_reference.py"
    return cell_log(parse_csv(path.read_text(encoding="utf-8"), str(path)), str(path))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("chemistry", "slow_rc", "limit_v"),
    [
        # measured: 9.1 mV with 2 RC pairs from the pulses, 2.2 mV with the slower pair from
        # the rests after the SoC steps
        ("nmc", False, 0.015),
        ("nmc", True, 0.005),
        # measured: 21.1 mV and 11.9 mV. The diffusion-limited end of the LFP cell's last SoC
        # step (down to 10 %) is far beyond what 10 s pulses can see.
        ("lfp", False, 0.025),
        ("lfp", True, 0.015),
    ],
)
def test_pybamm_reference_cells(chemistry: str, slow_rc: bool, limit_v: float) -> None:
    """DFN data (independent physics): the identified model re-simulates the HPPC test."""
    ocv_log = read_log(PYBAMM_DIR / f"{chemistry}_ocv.csv")
    hppc_log = read_log(PYBAMM_DIR / f"{chemistry}_hppc.csv")
    params = identify(
        ocv_log, hppc_log, name=f"pybamm {chemistry}", chemistry=chemistry, slow_rc=slow_rc
    )
    assert params.fit is not None
    rmse = params.fit["hppc_rmse_v"]
    assert isinstance(rmse, float) and rmse < limit_v, f"{chemistry}: HPPC RMSE {rmse * 1e3} mV"
    # The HPPC test steps down by 10 % of the OCV test's C/20 capacity: counted with the
    # identified capacity, its discharge pulses must sit at SoC 1.0, 0.9, ..., 0.1.
    pulse_soc = params.fit["pulse_soc"]
    assert isinstance(pulse_soc, list) and len(pulse_soc) == 20
    assert pulse_soc[::2] == pytest.approx(np.linspace(1.0, 0.1, 10), abs=0.01)
    r0 = params.fit["pulse_r0_ohm"]
    assert isinstance(r0, list) and all(isinstance(r, float) and 0.0 < r < 0.2 for r in r0)


# -- bad data ---------------------------------------------------------------------------------


def log_of(current_a: Sequence[float], voltage_v: Sequence[float], dt_s: float = 1.0) -> CellLog:
    n = len(current_a)
    return CellLog(
        np.arange(n) * dt_s,
        np.array(current_a, float),
        np.array(voltage_v, float),
        np.full(n, 25.0),
    )


def test_ocv_test_without_discharge(cell: CellParameters) -> None:
    charge_only = run(cell, [(0.25, 10 * 3600, 60.0, 4.2)], soc=0.0)
    with pytest.raises(TwinValidationError, match="no discharge found"):
        identify_ocv(charge_only)
    with pytest.raises(TwinValidationError, match="no discharge found"):
        identify_ocv(log_of([0.0] * 10, np.linspace(3.5, 3.6, 10)))


def test_ocv_test_with_the_wrong_current_sign(ocv_log: CellLog) -> None:
    flipped = CellLog(ocv_log.time_s, -ocv_log.current_a, ocv_log.voltage_v, ocv_log.temperature_c)
    with pytest.raises(TwinValidationError, match="is the current positive when charging"):
        identify_ocv(flipped)


def test_ocv_test_too_fast_or_incomplete(cell: CellParameters) -> None:
    fast = run(cell, [(-5.0, 2 * 3600, 10.0, 3.0)])
    with pytest.raises(TwinValidationError, match=r"complete discharge at C/5 or slower"):
        identify_ocv(fast)
    partial = run(cell, [(-0.25, 10 * 3600, 60.0, 3.0)])
    with pytest.raises(TwinValidationError, match="well above the lower voltage limit 3 V"):
        identify_ocv(partial, voltage_min_v=3.0)
    half_charged = run(cell, ocv_steps(), soc=0.5)
    with pytest.raises(TwinValidationError, match="not fully charged"):
        identify_ocv(half_charged, voltage_max_v=4.2)
    with pytest.raises(TwinValidationError, match="soc_step"):
        identify_ocv(run(cell, ocv_steps()), soc_step=0.3)


def test_hppc_without_pulses(ocv: OcvResult, cell: CellParameters) -> None:
    constant = run(cell, [(-2.5, 1800, 1.0, None)])
    with pytest.raises(TwinValidationError, match="no current pulses found"):
        identify_pulses(constant, ocv)
    with pytest.raises(TwinValidationError, match="current is zero throughout"):
        identify_pulses(log_of([0.0] * 100, np.linspace(4.1, 4.2, 100)), ocv)
    one_pulse = run(cell, [(0.0, 60, 1.0, None), (-5.0, 10, 1.0, None), (0.0, 60, 1.0, None)])
    with pytest.raises(TwinValidationError, match="only 1 current pulse found, need at least 2"):
        identify_pulses(one_pulse, ocv)
    rest: Step = (0.0, 60, 1.0, None)
    long_steps = run(cell, [rest, *[(-5.0, 300, 1.0, None), rest] * 3])
    with pytest.raises(TwinValidationError, match="at most 120 s"):
        identify_pulses(long_steps, ocv)
    pulses_only = run(cell, [rest, *[(-5.0, 10, 1.0, None), rest] * 3])
    with pytest.raises(TwinValidationError, match="slow RC pair needs current steps longer"):
        identify_pulses(pulses_only, ocv, slow_rc=True)


def test_hppc_with_the_wrong_current_sign(hppc_log: CellLog, ocv: OcvResult) -> None:
    flipped = CellLog(
        hppc_log.time_s, -hppc_log.current_a, hppc_log.voltage_v, hppc_log.temperature_c
    )
    with pytest.raises(TwinValidationError, match="is the current positive when charging"):
        identify_pulses(flipped, ocv)


def test_hppc_that_does_not_match_the_capacity(hppc_log: CellLog, ocv: OcvResult) -> None:
    small = OcvResult(1.0, ocv.soc_grid, ocv.ocv_v, 3.0, 4.2, -0.05, None, "test")
    with pytest.raises(TwinValidationError, match=r"does not match the capacity 1 Ah"):
        identify_pulses(hppc_log, small)
    with pytest.raises(TwinValidationError, match="n_rc must be 1 or 2 or 3"):
        identify_pulses(hppc_log, ocv, n_rc=4)
    with pytest.raises(TwinValidationError, match="soc_start"):
        identify_pulses(hppc_log, ocv, soc_start=1.5)


def test_invalid_name_or_chemistry(ocv_log: CellLog, hppc_log: CellLog) -> None:
    with pytest.raises(TwinValidationError, match="chemistry: String should match pattern"):
        identify(ocv_log, hppc_log, name="x", chemistry="NMC 811")
    with pytest.raises(TwinValidationError, match="name"):
        identify(ocv_log, hppc_log, name="", chemistry="NMC")
