"""Stuck-sensor detection of the emulated BMS: no false alarms from quantised, noisy readings.

A steady, healthy channel of a coarse sensor (0.1 K steps, 0.05 K noise) repeats one reading
for ten samples quite often; at a 1 s ADC cycle that used to be ten seconds and latched
FaultSensor on a healthy pack within seconds. A real stuck channel must still be found.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import simpy

from simulators.bms import (
    BmsConfig,
    BmsEmulator,
    Fault,
    FaultKind,
    PlantDriver,
    SensorModel,
    repeats_to_prove_stuck,
)
from simulators.plant import PackPlant
from twin.cell_params import load_builtin
from twin.pack_model import PackModel

pytestmark = pytest.mark.unit

CELLS = 16


def _run(
    config: BmsConfig,
    until_s: float,
    *,
    current_a: float = 0.0,
    faults: tuple[Fault, ...] = (),
    seed: int = 1,
) -> tuple[BmsEmulator, float | None]:
    """Run a pack; returns the BMS and the first time FaultSensor was set (None: never)."""
    env = simpy.Environment()
    model = PackModel.build(load_builtin("nmc_lgm50"), cells_in_series=CELLS, seed=seed)
    plant = PackPlant(model, 0.6)
    PlantDriver(env, plant, current_a, config.sample_period_s)
    bms = BmsEmulator(env, plant, config=config, faults=faults, seed=seed)
    first: list[float] = []

    def watch() -> simpy.events.ProcessGenerator:
        while not first:
            yield env.timeout(config.sample_period_s)
            if "sensor_fault" in bms.flags:
                first.append(float(env.now))

    env.process(watch())
    env.run(until=until_s)
    return bms, (first[0] if first else None)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_healthy_pack_at_rest_sampled_every_second_has_no_sensor_fault(seed: int) -> None:
    bms, first = _run(BmsConfig(sample_period_s=1.0), 1200.0, seed=seed)
    assert first is None, f"FaultSensor at {first} s on a healthy pack"
    assert bms.bms_state == "standby"
    assert not bms.hard_fault


def test_stuck_temperature_sensor_is_still_found_at_one_second_sampling() -> None:
    config = BmsConfig(sample_period_s=1.0)
    repeats = repeats_to_prove_stuck(config.cell_temperature_sensor)
    assert repeats == 73  # 0.1 K steps, 0.05 K noise: p = erf(1/sqrt(2)) per reading
    fault = Fault(kind=FaultKind.SENSOR_STUCK, start_s=100.0, cell_index=5, sensor="temperature")
    bms, first = _run(config, 300.0, faults=(fault,))
    assert first is not None
    # the run of equal readings may have begun a few samples before the fault
    assert 100.0 + repeats - 10.0 <= first <= 100.0 + repeats + 2.0
    assert bms.hard_fault and bms.sos[5] == 0.0


def test_stuck_voltage_sensor_is_found_after_the_detection_time_at_one_second() -> None:
    config = BmsConfig(sample_period_s=1.0)
    assert repeats_to_prove_stuck(config.cell_voltage_sensor) == 18  # < 10 s at 0.1 s cycles
    fault = Fault(kind=FaultKind.SENSOR_STUCK, start_s=50.0, cell_index=2)
    _, first = _run(config, 120.0, faults=(fault,))
    assert first is not None and 50.0 + 17.0 <= first <= 50.0 + 20.0


def test_noise_free_sensors_find_a_stuck_channel_when_the_others_move() -> None:
    ideal = SensorModel(noise_std=0.0, quantisation_step=0.001)
    config = BmsConfig(
        sample_period_s=1.0, cell_voltage_sensor=ideal, close_contactor_at_start=True
    )
    assert math.isinf(repeats_to_prove_stuck(ideal))
    # nothing moves at rest, and every cell moves while discharging: no suspect
    for current_a in (0.0, -5.0):
        _, first = _run(config, 200.0, current_a=current_a)
        assert first is None
    # discharging: the others fall by millivolts while channel 3 holds its value
    fault = Fault(kind=FaultKind.SENSOR_STUCK, start_s=20.0, cell_index=3)
    bms, first = _run(config, 200.0, current_a=-5.0, faults=(fault,))
    assert first is not None and 20.0 < first < 20.0 + 60.0
    assert bms.hard_fault


def test_a_configured_repeat_count_overrides_the_sensor_model() -> None:
    config = BmsConfig(sample_period_s=1.0, stuck_min_repeats=200)
    fault = Fault(kind=FaultKind.SENSOR_STUCK, start_s=10.0, cell_index=0, sensor="temperature")
    _, first = _run(config, 180.0, faults=(fault,))
    assert first is None  # 200 repeats not reached yet
    assert np.isfinite(repeats_to_prove_stuck(SensorModel(noise_std=0.1)))
