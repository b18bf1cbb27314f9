"""``b2l cell identify`` end to end in-process: CSV files in, a parameter file out, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from b2l.cli import main
from twin.cell_model import CellModel
from twin.cell_params import CellParameters, RcBranch

pytestmark = pytest.mark.unit

HEADER = "time_s,current_a,voltage_v,temperature_c"
Step = tuple[float, float, float, float | None]


def cell() -> CellParameters:
    """A 2 Ah cell with one RC pair."""
    s = np.linspace(0.0, 1.0, 11)
    ocv = 3.0 + 0.4 * (1 - np.exp(-s / 0.03)) + 0.6 * s + 0.2 * np.exp((s - 1) / 0.04)
    return CellParameters(
        name="truth",
        chemistry="NMC",
        source="synthetic",
        capacity_ah=2.0,
        soc_grid=s.tolist(),
        ocv_v=ocv.tolist(),
        r0_ohm=[0.03] * 11,
        rc=[RcBranch(r_ohm=[0.02] * 11, tau_s=[10.0] * 11)],
        voltage_min_v=3.0,
        voltage_max_v=4.2,
        current_max_charge_a=2.0,
        current_max_discharge_a=4.0,
    )


def csv_text(steps: list[Step]) -> str:
    """The log of ``cell()`` under a step schedule, as CSV text."""
    model = CellModel(cell())
    state = model.initial_state(1.0)
    lines, t = [HEADER], 0.0
    for current, duration, dt, stop_v in steps:
        end = t + duration
        while t < end - 1e-9:
            v = float(model.terminal_voltage(state, current))
            if stop_v is not None and (v - stop_v) * current >= 0.0:
                break
            lines.append(f"{t:g},{current:g},{v:.6f},25")
            state = model.step(state, current, 25.0, dt)
            t += dt
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("logs")
    ocv = folder / "ocv.csv"
    ocv.write_text(
        csv_text(
            [(-0.1, 30 * 3600, 60.0, 3.0), (0.0, 3600, 60.0, None), (0.1, 30 * 3600, 60.0, 4.2)]
        )
    )
    hppc: list[Step] = [(0.0, 300, 10.0, None)]
    for _ in range(4):
        hppc += [(-2.0, 10, 1.0, None), (0.0, 40, 1.0, None), (1.5, 10, 1.0, None)]
        hppc += [(0.0, 40, 1.0, None), (-1.0, 1440, 10.0, None), (0.0, 1200, 10.0, None)]
    pulse = folder / "hppc.csv"
    pulse.write_text(csv_text(hppc))
    return ocv, pulse


def test_identify_writes_a_parameter_file(
    logs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ocv, pulse = logs
    out = tmp_path / "cell7.json"
    code = main(["cell", "identify", "--ocv", str(ocv), "--pulse", str(pulse), "-o", str(out),
                 "--chemistry", "NMC", "--rc", "1"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    params = CellParameters.model_validate(json.loads(out.read_text()))
    assert params.name == "cell7" and params.chemistry == "NMC" and len(params.rc) == 1
    assert params.capacity_ah == pytest.approx(2.0, rel=0.005)
    assert params.r0_ohm[50] == pytest.approx(0.03, rel=0.02)
    assert params.rc[0].r_ohm[50] == pytest.approx(0.02, rel=0.05)
    assert "ocv.csv (OCV) and hppc.csv (HPPC)" in params.source
    assert params.fit is not None and params.fit["n_pulses"] == 8
    rmse = params.fit["hppc_rmse_v"]
    assert isinstance(rmse, float) and rmse < 0.003
    summary = captured.out.strip().splitlines()
    assert len(summary) == 1 and "capacity 1.99" in summary[0] and "RMSE" in summary[0]
    assert "b2l cell: OCV test: capacity" in captured.err
    assert [p.name for p in tmp_path.iterdir()] == ["cell7.json"]  # no temporary file left


def test_identify_name_and_voltage_limits(
    logs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ocv, pulse = logs
    out = tmp_path / "p.json"
    argv = ["cell", "identify", "--ocv", str(ocv), "--pulse", str(pulse), "-o", str(out)]
    assert main([*argv, "--name", "bench cell 3", "--voltage-min", "2.9"]) == 0
    params = CellParameters.model_validate_json(out.read_text())
    assert params.name == "bench cell 3" and params.voltage_min_v == 2.9 and len(params.rc) == 2
    assert params.chemistry == "unknown"
    capsys.readouterr()
    assert main([*argv, "--chemistry", "NMC 811"]) == 1
    assert (
        "b2l: error: the identified parameters are not valid: chemistry" in capsys.readouterr().err
    )


def test_identify_with_the_slow_pair(
    logs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ocv, pulse = logs
    out = tmp_path / "p.json"
    argv = ["cell", "identify", "--ocv", str(ocv), "--pulse", str(pulse), "-o", str(out)]
    assert main([*argv, "--slow-rc"]) == 0
    params = CellParameters.model_validate_json(out.read_text())
    assert len(params.rc) == 2 and params.fit is not None and len(params.fit["step_soc"]) == 4
    assert "the slowest from 4 SoC steps" in capsys.readouterr().err
    assert main([*argv, "--slow-rc", "--rc", "1"]) == 1
    assert "b2l: error: n_rc must be 2 or 3, got 1" in capsys.readouterr().err


def test_rc_choices_are_enforced(logs: tuple[Path, Path], tmp_path: Path) -> None:
    ocv, pulse = logs
    with pytest.raises(SystemExit) as info:
        main(["cell", "identify", "--ocv", str(ocv), "--pulse", str(pulse), "-o", "x", "--rc", "4"])
    assert info.value.code == 2


def corrupt(text: str, row: int, column: str, value: str) -> str:
    lines = text.splitlines()
    index = HEADER.split(",").index(column)
    cells = lines[row].split(",")
    cells[index] = value
    lines[row] = ",".join(cells)
    return "\n".join(lines) + "\n"


def drop_temperature(text: str) -> str:
    return "\n".join(line.rsplit(",", 1)[0] for line in text.splitlines()) + "\n"


def millivolts(text: str) -> str:
    lines = text.splitlines()
    out = [lines[0]]
    for line in lines[1:]:
        t, i, v, temp = line.split(",")
        out.append(f"{t},{i},{float(v) * 1000:.3f},{temp}")
    return "\n".join(out) + "\n"


@pytest.mark.parametrize(
    ("name", "damage", "message"),
    [
        ("missing column", drop_temperature, "missing column(s) temperature_c"),
        ("NaN", lambda t: corrupt(t, 5, "voltage_v", "nan"), "voltage_v is NaN or infinite at row"),
        ("time goes back", lambda t: corrupt(t, 7, "time_s", "0"), "time_s must increase"),
        ("millivolts", millivolts, "it looks like millivolts"),
        ("text", lambda t: corrupt(t, 3, "current_a", "abc"), "line 4: 'abc' is not a number"),
        ("empty", lambda t: "", "empty file"),
    ],
)
def test_bad_csv_files_exit_1_with_a_clear_message(
    logs: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    damage: object,
    message: str,
) -> None:
    ocv, pulse = logs
    bad = tmp_path / "bad.csv"
    assert callable(damage)
    bad.write_text(damage(pulse.read_text()))
    out = tmp_path / "out.json"
    code = main(["cell", "identify", "--ocv", str(ocv), "--pulse", str(bad), "-o", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1, name
    assert err[-1].startswith(f"b2l: error: {bad}") and message in err[-1], err[-1]
    assert not out.exists()


def test_unidentifiable_data_and_missing_files(
    logs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ocv, pulse = logs
    out = tmp_path / "out.json"
    argv = ["cell", "identify", "-o", str(out)]
    assert main([*argv, "--ocv", str(pulse), "--pulse", str(pulse)]) == 1
    assert "b2l: error: OCV test: the discharge gives" in capsys.readouterr().err
    assert main([*argv, "--ocv", str(ocv), "--pulse", str(ocv)]) == 1
    assert "b2l: error: HPPC test: no current pulses found" in capsys.readouterr().err
    missing = tmp_path / "nope.csv"
    assert main([*argv, "--ocv", str(missing), "--pulse", str(pulse)]) == 1
    assert f"b2l: error: cannot read {missing}" in capsys.readouterr().err
    assert not out.exists()
