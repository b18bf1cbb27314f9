"""SoC filter: accuracy from a wrong start, current offset, honest covariance, exact resume, CLI."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from b2l.cell_estimate_cmd import add_estimate
from twin.cell_model import CellModel, FloatArray
from twin.cell_params import CellParameters, RcBranch
from twin.errors import B2LError, TwinValidationError
from twin.estimation import EkfConfig, EkfState, SocEstimator, soc_from_voltage

pytestmark = pytest.mark.unit

SETTLE = 900  # samples (1 s) before errors are scored


def nmc_params() -> CellParameters:
    """NMC-like 5 Ah cell: OCV slope 0.5-1 V per unit SoC."""
    soc = [0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    ocv = [3.0, 3.35, 3.45, 3.55, 3.62, 3.68, 3.74, 3.82, 3.91, 4.0, 4.08, 4.18]
    n = len(soc)
    return CellParameters(
        name="test-nmc",
        chemistry="NMC",
        source="synthetic",
        capacity_ah=5.0,
        soc_grid=soc,
        ocv_v=ocv,
        r0_ohm=[0.03 - 0.006 * s for s in soc],
        rc=[
            RcBranch(r_ohm=[0.01] * n, tau_s=[10.0] * n),
            RcBranch(r_ohm=[0.015] * n, tau_s=[200.0] * n),
        ],
        activation_energy_j_per_mol=20_000.0,
        voltage_min_v=2.5,
        voltage_max_v=4.2,
        current_max_charge_a=5.0,
        current_max_discharge_a=10.0,
    )


def lfp_params() -> CellParameters:
    """LFP-like 2.3 Ah cell: a 3.26-3.34 V plateau from 20 % to 90 % SoC, 10 mV hysteresis."""
    soc = [0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.65, 0.7, 0.8, 0.9, 0.95, 0.98, 1.0]
    ocv = [2.8, 3.0, 3.18, 3.23, 3.26, 3.285, 3.295, 3.30, 3.305, 3.32, 3.33, 3.335, 3.34,
           3.35, 3.40, 3.55]  # fmt: skip
    n = len(soc)
    return CellParameters(
        name="test-lfp",
        chemistry="LFP",
        source="synthetic",
        capacity_ah=2.3,
        soc_grid=soc,
        ocv_v=ocv,
        r0_ohm=[0.012] * n,
        rc=[
            RcBranch(r_ohm=[0.005] * n, tau_s=[10.0] * n),
            RcBranch(r_ohm=[0.008] * n, tau_s=[300.0] * n),
        ],
        hysteresis_v=0.01,
        hysteresis_rate=20.0,
        voltage_min_v=2.5,
        voltage_max_v=3.65,
        current_max_charge_a=2.3,
        current_max_discharge_a=4.6,
    )


@dataclass(frozen=True)
class Log:
    """Measured signals (rows: 1 s samples, columns: cells) and the true SoC."""

    current_a: FloatArray
    voltage_v: FloatArray
    temperature_c: FloatArray
    soc_true: FloatArray


def simulate(
    params: CellParameters,
    soc0: list[float],
    seconds: int,
    *,
    seed: int = 1,
    offset_c: float = 0.005,
    first: tuple[float, float] = (0.0, 0.0),
    dt_s: float = 1.0,
) -> Log:
    """Random pulses of -1C..+0.8C (10-300 s, some rests) on CellModel, with sensor errors.

    Sensors: current offset ``offset_c`` of 1C plus 10 mA noise, 2 mV voltage noise, 0.1 K
    temperature quantisation. ``first`` = (C-rate, seconds) of an opening segment. One row per
    ``dt_s``.
    """
    rng = np.random.default_rng(seed)
    model = CellModel(params)
    cap = params.capacity_ah
    cells = len(soc0)
    state = model.initial_state(soc0, 25.0)
    shape = (int(seconds / dt_s), cells)
    i_true, v_true, t_true, soc = (np.empty(shape) for _ in range(4))
    level, left = np.full(cells, first[0] * cap), np.full(cells, first[1])
    for k in range(shape[0]):
        new = left <= 0
        pulse = np.where(rng.uniform(size=cells) < 0.2, 0.0, rng.uniform(-1.0, 0.8, cells) * cap)
        level = np.where(new, pulse, level)
        left = np.where(new, rng.uniform(10, 300, cells), left) - dt_s
        level = np.where((state.soc < 0.1) & (level < 0), 0.5 * cap, level)
        level = np.where((state.soc > 0.97) & (level > 0), -0.5 * cap, level)
        i_true[k], soc[k], t_true[k] = level, state.soc, state.temperature_c
        v_true[k] = model.terminal_voltage(state, level)
        state = model.step(state, level, 25.0, dt_s)
    noise = np.random.default_rng(seed + 1000)
    return Log(
        current_a=i_true + offset_c * cap + noise.normal(0.0, 0.01, shape),
        voltage_v=v_true + noise.normal(0.0, 0.002, shape),
        temperature_c=np.round(t_true, 1),
        soc_true=soc,
    )


def run_filter(
    estimator: SocEstimator, log: Log, soc0: list[float], dt_s: float = 1.0
) -> tuple[FloatArray, FloatArray, EkfState]:
    """SoC and its std at every sample, and the final state."""
    state = estimator.initial(soc0, log.temperature_c[0])
    soc, std = np.empty_like(log.soc_true), np.empty_like(log.soc_true)
    for k in range(len(soc)):
        dt = 0.0 if k == 0 else dt_s
        state = estimator.update(
            state, log.current_a[k], log.voltage_v[k], log.temperature_c[k], dt
        )
        soc[k], std[k] = state.soc, state.soc_std
    return soc, std, state


def scores(soc: FloatArray, truth: FloatArray, settle: int = SETTLE) -> tuple[float, float]:
    error = (soc - truth)[settle:]
    return float(np.sqrt(np.mean(error**2))), float(np.max(np.abs(error)))


# -- accuracy ----------------------------------------------------------------------------------


def test_nmc_converges_from_a_wrong_soc_despite_a_current_offset() -> None:
    params = nmc_params()
    log = simulate(params, [0.9, 0.2, 0.6], 5400)
    soc, std, _ = run_filter(SocEstimator(CellModel(params)), log, [0.5, 0.6, 0.1])
    rmse, max_error = scores(soc, log.soc_true)
    assert rmse <= 0.01 and max_error <= 0.03, (rmse, max_error)
    # the reported std is honest: errors stay within 3 sigma after convergence
    assert np.all(np.abs(soc - log.soc_true)[SETTLE:] <= 3 * std[SETTLE:])


def test_lfp_converges_once_it_reaches_the_top_knee() -> None:
    # LFP BMSs re-calibrate at full charge: a 0.5C top-up first, then a random profile
    params = lfp_params()
    log = simulate(params, [0.9, 0.85], 2 * 3600, first=(0.5, 900.0), dt_s=5.0)
    soc, std, _ = run_filter(SocEstimator(CellModel(params)), log, [0.5, 0.3], 5.0)
    rmse, max_error = scores(soc, log.soc_true, settle=SETTLE // 5)
    assert rmse <= 0.01 and max_error <= 0.03, (rmse, max_error)
    assert np.all(np.abs(soc - log.soc_true)[SETTLE // 5 :] <= 3 * std[SETTLE // 5 :])


def test_the_bias_state_learns_the_offset_a_plain_filter_drifts() -> None:
    # 12 h sampled every 10 s (the filter's noise is per unit of time), offset 1 % of 1C = 50 mA
    params = nmc_params()
    log = simulate(params, [0.8, 0.5, 0.3], 12 * 3600, offset_c=0.01, dt_s=10.0)
    with_bias, _, state = run_filter(SocEstimator(CellModel(params)), log, [0.8, 0.5, 0.3], 10.0)
    plain = SocEstimator(CellModel(params), EkfConfig(include_bias=False))
    without, _, _ = run_filter(plain, log, [0.8, 0.5, 0.3], 10.0)
    np.testing.assert_allclose(state.bias_a, 0.05, atol=0.01)
    rmse, max_error = scores(with_bias, log.soc_true, settle=90)
    assert rmse <= 0.005 and max_error <= 0.015, (rmse, max_error)
    assert rmse < 0.5 * scores(without, log.soc_true, settle=90)[0]


# -- covariance --------------------------------------------------------------------------------


def test_soc_std_shrinks_after_convergence_and_stays_wide_on_a_flat_ocv() -> None:
    nmc, lfp = nmc_params(), lfp_params()
    # a gentle profile on the LFP plateau (40-60 % SoC): +-0.2C pulses, sampled every 5 s
    dt_s = 5.0
    time_s = np.arange(0.0, 7200.0, dt_s)
    current = 0.2 * np.sign(np.sin(time_s / 600.0))[:, None]
    shape = current.shape
    stds = {}
    for params in (nmc, lfp):
        model = CellModel(params)
        state = model.initial_state([0.5])
        voltage = np.empty(shape)
        for k in range(shape[0]):
            voltage[k] = model.terminal_voltage(state, current[k] * params.capacity_ah)
            state = model.step(state, current[k] * params.capacity_ah, 25.0, dt_s)
        log = Log(current * params.capacity_ah, voltage, np.full(shape, 25.0), np.empty(shape))
        _, std, _ = run_filter(SocEstimator(CellModel(params)), log, [0.5], dt_s)
        stds[params.chemistry] = std[:, 0]
    initial = EkfConfig().initial_soc_std
    assert stds["NMC"][-1] < 0.02 < initial
    assert np.all(np.diff(stds["NMC"][SETTLE // 5 :]) < 1e-3)  # no jumps up once converged
    assert stds["LFP"][-1] > 3 * stds["NMC"][-1]
    assert stds["LFP"][-1] > 0.05  # the plateau says little: the filter knows it


def test_a_voltage_dropout_skips_the_correction_and_keeps_the_std_wider() -> None:
    params = nmc_params()
    estimator = SocEstimator(CellModel(params))
    state = estimator.initial([0.5, 0.5])
    # the current sampled now flows until the next sample (the module's sampling convention)
    state = estimator.update(state, -5.0, [3.70, 3.70], 25.0, 0.0)
    after = estimator.update(state, -5.0, [np.nan, 3.7], 25.0, 10.0)
    expected = state.soc[0] - 5.0 * 10.0 / (3600 * params.capacity_ah)
    assert after.soc[0] == pytest.approx(expected, abs=1e-4)  # coulomb counting alone
    assert after.soc_std[0] == pytest.approx(state.soc_std[0], rel=0.01)  # nothing learnt
    assert after.soc_std[1] < after.soc_std[0]  # the cell with a voltage learnt something


def test_soc_is_clamped_to_0_1() -> None:
    estimator = SocEstimator(CellModel(nmc_params()))
    state = estimator.initial([0.95, 0.05])
    for _ in range(20):
        state = estimator.update(state, 0.0, [4.5, 2.5], 25.0, 1.0)
    assert state.soc[0] == 1.0 and state.soc[1] == 0.0
    assert np.all(np.isfinite(state.p))


# -- determinism, vectorisation, persistence -----------------------------------------------------


def test_same_inputs_same_outputs_and_json_resume_is_exact() -> None:
    params = lfp_params()
    log = simulate(params, [0.7, 0.4, 0.2], 600, seed=7)
    estimator = SocEstimator(CellModel(params))
    first, _, final = run_filter(estimator, log, [0.5, 0.5, 0.5])
    again, _, final_again = run_filter(SocEstimator(CellModel(params)), log, [0.5, 0.5, 0.5])
    assert np.array_equal(first, again) and np.array_equal(final.p, final_again.p)

    state = estimator.initial([0.5, 0.5, 0.5], log.temperature_c[0])
    for k in range(300):
        args = (log.current_a[k], log.voltage_v[k], log.temperature_c[k], float(k > 0))
        state = estimator.update(state, *args)
    text = json.dumps(state.to_json_dict())
    resumed = EkfState.from_json_dict(json.loads(text))
    for name in ("x", "p", "current_a", "temperature_c", "voltage_pred_v"):
        assert np.array_equal(getattr(resumed, name), getattr(state, name)), name
    fresh = SocEstimator(CellModel(params))  # another process: new estimator, same parameters
    for k in range(300, 600):
        args = (log.current_a[k], log.voltage_v[k], log.temperature_c[k], 1.0)
        state = estimator.update(state, *args)
        resumed = fresh.update(resumed, *args)
        assert np.array_equal(resumed.x, state.x) and np.array_equal(resumed.p, state.p)
    assert np.array_equal(state.soc, first[-1])


def test_the_covariance_stays_symmetric_bit_for_bit() -> None:
    log = simulate(nmc_params(), [0.6, 0.3], 200, seed=3)
    _, _, state = run_filter(SocEstimator(CellModel(nmc_params())), log, [0.5, 0.5])
    assert np.array_equal(state.p, state.p.swapaxes(0, 1))
    assert np.all(np.linalg.eigvalsh(np.moveaxis(state.p, (0, 1), (-2, -1))) > 0.0)


def test_packs_of_cells_match_cells_one_by_one() -> None:
    params = nmc_params()
    estimator = SocEstimator(CellModel(params))
    soc0 = np.array([[0.2, 0.5, 0.8], [0.3, 0.6, 0.9]])
    current = np.array([[-5.0], [2.0]])  # one current per pack, broadcast over its cells
    voltage = np.array([[3.50, 3.72, 3.95], [3.60, 3.85, 4.10]])
    packs = estimator.initial(soc0)
    packs = estimator.update(packs, current, voltage, 25.0, 0.0)
    packs = estimator.update(packs, current, voltage - 0.01, 25.0, 1.0)
    for index in np.ndindex(soc0.shape):
        one = estimator.initial(soc0[index])
        one = estimator.update(one, current[index[0], 0], voltage[index], 25.0, 0.0)
        one = estimator.update(one, current[index[0], 0], voltage[index] - 0.01, 25.0, 1.0)
        np.testing.assert_allclose(packs.x[(slice(None), *index)], one.x, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(packs.soc_std[index], one.soc_std, rtol=1e-12)


def test_bad_inputs_are_refused() -> None:
    estimator = SocEstimator(CellModel(nmc_params()))
    state = estimator.initial([0.5, 0.5])
    with pytest.raises(TwinValidationError):
        estimator.update(state, np.nan, 3.7, 25.0, 1.0)
    with pytest.raises(TwinValidationError):
        estimator.update(state, [1.0, 2.0, 3.0], 3.7, 25.0, 1.0)
    with pytest.raises(TwinValidationError):
        estimator.update(state, 0.0, 3.7, 25.0, -1.0)
    with pytest.raises(TwinValidationError):
        estimator.initial(1.5)
    with pytest.raises(TwinValidationError):
        EkfConfig(voltage_noise_v=0.0)
    other = SocEstimator(CellModel(nmc_params()), EkfConfig(include_bias=False))
    with pytest.raises(TwinValidationError, match="rows"):
        other.update(state, 0.0, 3.7, 25.0, 1.0)
    document = state.to_json_dict()
    with pytest.raises(TwinValidationError):
        EkfState.from_json_dict({**document, "p": document["p"][:-1]})
    with pytest.raises(TwinValidationError):
        EkfState.from_json_dict({**document, "kind": "something else"})


def test_soc_from_voltage_inverts_the_ocv() -> None:
    model = CellModel(nmc_params())
    soc = np.array([0.1, 0.45, 0.9])
    np.testing.assert_allclose(soc_from_voltage(model, model.ocv(soc, 25.0)), soc, atol=1e-9)


# -- command line ------------------------------------------------------------------------------


def run_cli(argv: list[str]) -> int:
    """``b2l cell estimate`` through a parser of our own (b2l/cli.py wires the real one)."""
    parser = argparse.ArgumentParser(prog="b2l")
    groups = parser.add_subparsers(dest="command", required=True)
    cell = groups.add_parser("cell").add_subparsers(dest="cell_command", required=True)
    add_estimate(cell)
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code


@pytest.fixture
def lab_files(tmp_path: Path) -> tuple[Path, Path]:
    params = nmc_params()
    log = simulate(params, [0.8], 1800, seed=11)
    rows = ["time_s,current_a,voltage_v,temperature_c,soc_true"]
    rows += [
        f"{k},{log.current_a[k, 0]:.5f},{log.voltage_v[k, 0]:.5f},"
        f"{log.temperature_c[k, 0]:.1f},{log.soc_true[k, 0]:.6f}"
        for k in range(1800)
    ]
    (tmp_path / "params.json").write_text(params.to_json())
    (tmp_path / "log.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "params.json", tmp_path / "log.csv"


def test_cli_writes_the_estimate_and_scores_it(
    lab_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    params, log = lab_files
    out = tmp_path / "out.csv"
    argv = ["cell", "estimate", "--params", str(params), "--input", str(log)]
    assert run_cli([*argv, "--initial-soc", "0.4", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "RMSE" in text and "max" in text
    lines = out.read_text().splitlines()
    assert lines[0] == "time_s,soc,soc_std,voltage_pred_v" and len(lines) == 1801
    table = np.loadtxt(out, delimiter=",", skiprows=1)
    assert np.all((table[:, 1] >= 0) & (table[:, 1] <= 1)) and np.all(table[:, 2] > 0)
    assert not list(tmp_path.glob("*.tmp"))

    assert run_cli([*argv, "-o", str(out), "--json-summary"]) == 0  # SoC from the first voltage
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == 1800 and summary["rmse"] <= 0.01
    assert summary["max_abs_error"] <= 0.03


def test_cli_reports_bad_files_as_b2l_errors(lab_files: tuple[Path, Path], tmp_path: Path) -> None:
    params, log = lab_files
    out = str(tmp_path / "out.csv")
    with pytest.raises(B2LError, match="not a cell parameter file"):
        run_cli(["cell", "estimate", "--params", str(log), "--input", str(log), "-o", out])
    with pytest.raises(B2LError, match="cannot read"):
        run_cli(["cell", "estimate", "--params", "missing.json", "--input", str(log), "-o", out])
    log.write_text("time_s,current_a,voltage_v\n0,1,3.7\n1,1,3.8\n")
    with pytest.raises(B2LError, match="temperature_c"):
        run_cli(["cell", "estimate", "--params", str(params), "--input", str(log), "-o", out])
    with pytest.raises(SystemExit):
        run_cli(["cell", "estimate", "--params", str(params), "--input", str(log), "-o", out,
                 "--initial-soc", "1.5"])  # fmt: skip
