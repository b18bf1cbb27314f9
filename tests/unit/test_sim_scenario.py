"""Scenario files of ``b2l sim pack``: the example loads and builds; bad files name the field."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from b2l.arg_types import duration as _duration
from b2l.cli import main
from simulators.bms import FaultKind
from simulators.load import ProfileLoad
from simulators.pack import build_pack
from simulators.plant import PackPlant
from simulators.profiles import Profile
from simulators.scenario import Scenario, load_scenario, scenario_from_data
from twin.cell_params import load_builtin
from twin.errors import ConfigError
from twin.pack_model import PackModel

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "scenario-pack.yaml"


def test_the_example_scenario_loads_and_builds_a_pack() -> None:
    scenario = load_scenario(EXAMPLE)
    assert scenario.name == "pv-home-second-life"
    assert scenario.pack.cells_in_series == 16 and scenario.load.profile == "domestic"
    assert [f.kind for f in scenario.faults] == [
        FaultKind.FRAME_LOSS,
        FaultKind.INTERNAL_SHORT,
        FaultKind.SENSOR_STUCK,
        FaultKind.BMS_REBOOT,
    ]
    options = scenario.pack_options()
    plant = options["plant"]
    assert plant is not None
    soh = plant.soh[0]
    assert soh[3] == soh[11] == 1.0  # the replaced cells are new
    aged = np.delete(soh, [3, 11])
    assert np.all(aged < 0.95) and np.all(aged > 0.5)
    assert aged.std() > 0.005  # cell-to-cell spread of the years
    assert abs(float(plant.soc.mean()) - 0.55) < 0.01
    pack = build_pack(**options, timestamp_origin_s=0.0)
    pack.env.run(until=5.0)
    assert pack.bms.bms_state in ("charging", "discharging", "standby")
    load = options["current_a"]
    assert isinstance(load, ProfileLoad) and load.offset_s == 39_600.0


def test_json_scenarios_and_per_cell_values(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(
        json.dumps(
            {
                "seed": 3,
                "pack": {
                    "chemistry": "lfp_a123",
                    "cells_in_series": 4,
                    "initial_soc": [0.2, 0.4, 0.6, 0.8],
                    "spread": {"soc_std": 0.0},
                    "age": {"years": [0.0, 2.0, 4.0, 8.0]},
                },
                "load": {"profile": "constant", "current_a": -1.0},
            }
        )
    )
    scenario = load_scenario(path)
    plant = scenario.pack_options()["plant"]
    assert plant is not None
    assert np.allclose(plant.soc[0], [0.2, 0.4, 0.6, 0.8])
    soh = plant.soh[0]
    assert soh[0] == 1.0 and soh[0] > soh[1] > soh[2] > soh[3]  # a mixed-age pack


def test_overrides_replace_scenario_values() -> None:
    scenario = load_scenario(EXAMPLE, {"pack": {"cells_in_series": 12}, "faults": []})
    assert scenario.pack.cells_in_series == 12 and scenario.pack.age.replaced_cells == [3, 11]
    assert scenario.faults == []
    with pytest.raises(ConfigError, match=r"pack: age.replaced_cells \[11\] outside"):
        load_scenario(EXAMPLE, {"pack": {"cells_in_series": 8}})


def _error(data: object, tmp_path: Path, suffix: str = ".yaml") -> str:
    path = tmp_path / f"bad{suffix}"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    return str(info.value)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"pack": {"cels_in_series": 4}}, "pack.cels_in_series: unknown key"),
        ({"pack": {"cells_in_series": "many"}}, "pack.cells_in_series: Input should be"),
        ({"pack": {"cells_in_series": 0}}, "pack.cells_in_series: Input should be greater"),
        ({"faults": [{"kind": "gremlins"}]}, "faults[0].kind: Input should be 'sensor_stuck'"),
        (
            {"faults": [{"kind": "bms_reboot"}, {"kind": "bms_reboot", "start_s": -5}]},
            "faults[1].start_s: Input should be greater than or equal to 0",
        ),
        (
            {"faults": [{"kind": "sensor_stuck"}]},
            "faults[0]: a sensor_stuck fault needs cell_index",
        ),
        (
            {
                "pack": {"cells_in_series": 4},
                "faults": [{"kind": "internal_short", "cell_index": 4}],
            },
            "faults[0].cell_index 4 outside the pack's cells 0..3",
        ),
        ({"bms": {"sample_period_s": -1}}, "bms.sample_period_s: Input should be greater than 0"),
        ({"load": {"profile": "csv", "csv": "missing.csv"}}, "load.csv: no such file"),
        ({"load": {"profile": "domestic", "current_a": 3}}, "current_a is for the constant"),
        ({"pack": {"chemistry": "unobtainium"}}, "pack.chemistry: unknown parameter set"),
        ({"pack": {"cells_in_series": 2, "initial_soc": [0.5]}}, "initial_soc has 1 values"),
        ({"duration_s": 0}, "duration_s: Input should be greater than 0"),
        ("pack: [1, 2", "not YAML"),
        ("- just\n- a list\n", "a scenario is a mapping of sections, not a list"),
    ],
)
def test_bad_scenarios_name_the_field(data: object, expected: str, tmp_path: Path) -> None:
    message = _error(data, tmp_path)
    assert expected in message
    assert str(tmp_path / "bad.yaml") in message


def test_unreadable_and_unknown_format_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the scenario"):
        load_scenario(tmp_path / "nowhere.yaml")
    assert "not JSON" in _error("{", tmp_path, ".json")
    assert ".yaml, .yml or .json" in _error("x", tmp_path, ".toml")


def test_a_csv_profile_is_found_next_to_the_scenario(tmp_path: Path) -> None:
    (tmp_path / "load.csv").write_text("time_s,current_a\n0,-2\n60,1\n")
    scenario = scenario_from_data(
        {"load": {"profile": "csv", "csv": "load.csv"}, "pack": {"cells_in_series": 2}},
        base_dir=tmp_path,
    )
    load = scenario.pack_options()["current_a"]
    assert isinstance(load, ProfileLoad)
    assert load(0.0) == -2.0 and load(61.0) == 1.0


def test_cli_prints_scenario_errors_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("faults:\n  - {kind: gremlins, start_s: 1}\n")
    argv = ["sim", "pack", "--can", "virtual:x", "--scenario", str(path), "--duration", "1"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("b2l: error: ") and "faults[0].kind" in err and "\nTraceback" not in err


def test_cli_needs_a_duration_unless_real_time(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "pack", "--can", "virtual:x"]) == 1
    assert "give --duration" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90.0), ("90s", 90.0), ("10m", 600.0), ("2h", 7200.0), ("3d", 259_200.0)],
)
def test_durations_take_suffixes(text: str, seconds: float) -> None:
    assert _duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "-1h", "0", "ten", "5w", "nan"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        _duration(text)


def test_the_load_guard_rests_a_full_pack_and_an_empty_one() -> None:
    params = load_builtin("nmc_lgm50")
    for soc, current in ((0.999, 2.0), (0.001, -2.0)):
        plant = PackPlant(PackModel.build(params, cells_in_series=4), soc)
        constant = Profile(np.array([0.0, 1.0]), np.array([current, current]))
        guarded = ProfileLoad(plant, constant)
        assert guarded(0.0) == 0.0 and guarded.blocked == 1
        assert ProfileLoad(plant, constant, voltage_guard=False)(0.0) == current
        # the other direction is always allowed
        back = Profile(np.array([0.0, 1.0]), np.array([-current, -current]))
        assert ProfileLoad(plant, back)(0.0) == -current


def test_default_scenario_is_valid() -> None:
    scenario = Scenario()
    assert scenario.pack.cells_in_series == 16 and scenario.faults == []
    options = scenario.pack_options()
    assert options["seed"] == 0 and options["plant"] is not None
