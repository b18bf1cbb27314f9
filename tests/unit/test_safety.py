"""State of Safety: 1 in the comfort band, each alarm on its own condition, exact resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

from twin.cell_params import CellParameters
from twin.errors import TwinValidationError
from twin.safety import Alarm, SafetyConfig, SafetyMonitor, SafetyState, alarm_names

pytestmark = pytest.mark.unit


@pytest.fixture
def params() -> CellParameters:
    return CellParameters(
        name="test-cell",
        chemistry="NMC",
        source="synthetic",
        capacity_ah=5.0,
        soc_grid=[0.0, 1.0],
        ocv_v=[3.0, 4.2],
        r0_ohm=[0.03, 0.03],
        voltage_min_v=2.5,
        voltage_max_v=4.2,
        temperature_min_c=-20.0,
        temperature_max_c=60.0,
        current_max_charge_a=5.0,
        current_max_discharge_a=10.0,
    )


def hold(
    monitor: SafetyMonitor,
    current_a: float,
    voltage_v: float,
    temperature_c: float,
    seconds: int,
    *,
    dv_v_per_s: float = 0.0,
    dt_k_per_s: float = 0.0,
    dt_s: float = 1.0,
) -> SafetyState:
    """One cell sampled every ``dt_s``, with optional linear voltage and temperature ramps."""
    state = monitor.initial(current_a, voltage_v, temperature_c)
    for k in range(1, int(seconds / dt_s) + 1):
        t = k * dt_s
        state = monitor.update(
            state, current_a, voltage_v + dv_v_per_s * t, temperature_c + dt_k_per_s * t, dt_s
        )
    return state


def test_sos_is_1_without_alarms_in_the_comfort_band(params: CellParameters) -> None:
    monitor = SafetyMonitor(params)
    for current, voltage, temperature in [
        (5.0, 4.2, 25.0),  # CV charge at the limit, full charge current
        (-10.0, 2.5, 46.0),  # full discharge current at the lower limit, warm
        (0.0, 3.7, -20.0),
    ]:
        state = hold(monitor, current, voltage, temperature, 600, dt_k_per_s=0.005)
        assert state.sos == 1.0 and state.alarms == 0, (current, voltage, temperature)


@pytest.mark.parametrize(
    ("current", "voltage", "temperature", "alarm"),
    [
        (0.0, 4.25, 25.0, Alarm.OVER_VOLTAGE),
        (0.0, 2.4, 25.0, Alarm.UNDER_VOLTAGE),
        (0.0, 3.7, 65.0, Alarm.OVER_TEMPERATURE),
        (0.0, 3.7, -25.0, Alarm.UNDER_TEMPERATURE),
        (6.0, 3.7, 25.0, Alarm.OVER_CURRENT),
        (-12.0, 3.7, 25.0, Alarm.OVER_CURRENT),
    ],
)
def test_each_limit_alarm_fires_alone(
    params: CellParameters, current: float, voltage: float, temperature: float, alarm: Alarm
) -> None:
    state = SafetyMonitor(params).initial(current, voltage, temperature)
    assert state.alarms == int(alarm)
    assert 0.0 < state.sos < 1.0
    assert alarm_names(int(state.alarms)) == [str(alarm.name).lower()]
    assert state.flags()[str(alarm.name).lower()]


def test_sos_falls_linearly_to_0_at_the_abuse_limit(params: CellParameters) -> None:
    monitor = SafetyMonitor(params)
    voltage = np.array([4.2, 4.25, 4.3, 4.4])
    state = monitor.initial(0.0, voltage, 25.0)
    np.testing.assert_allclose(state.sos, [1.0, 0.5, 0.0, 0.0], atol=1e-12)
    temperature = np.array([50.0, 60.0, 80.0])  # comfort up to 50, 0 at 80
    state = monitor.initial(0.0, 3.7, temperature)
    np.testing.assert_allclose(state.sos, [1.0, 2 / 3, 0.0], atol=1e-12)
    assert list(state.alarms) == [0, 0, int(Alarm.OVER_TEMPERATURE)]
    state = monitor.initial([7.5, -15.0], 3.7, 25.0)  # 1.5 x the charge / discharge limits
    np.testing.assert_allclose(state.sos, [0.0, 0.0], atol=1e-12)


def test_fast_temperature_rise(params: CellParameters) -> None:
    monitor = SafetyMonitor(params)
    slow = hold(monitor, -10.0, 3.7, 25.0, 600, dt_k_per_s=0.5 / 60)  # 0.5 K/min: normal
    assert slow.alarms == 0 and slow.sos == 1.0
    fast = hold(monitor, -10.0, 3.7, 0.0, 720, dt_k_per_s=4.0 / 60)  # 4 K/min up to 48 C
    assert fast.alarms == int(Alarm.FAST_TEMPERATURE_RISE)
    assert fast.temperature_rate_k_per_s == pytest.approx(4.0 / 60, rel=0.01)  # exact on a ramp
    assert fast.sos == pytest.approx(1.0 - (4.0 - 1.0) / (10.0 - 1.0), rel=0.01)


def test_temperature_rate_is_quiet_on_a_quantised_noisy_sensor(params: CellParameters) -> None:
    monitor = SafetyMonitor(params)
    rng = np.random.default_rng(0)
    temperature = np.round(30.0 + rng.normal(0.0, 0.2, (3600, 100)), 1)
    state = monitor.initial(0.0, 3.7, temperature[0])
    worst = 0.0
    for k in range(1, 3600):
        state = monitor.update(state, 0.0, 3.7, temperature[k], 1.0)
        worst = max(worst, float(np.max(np.abs(state.temperature_rate_k_per_s))))
    assert worst * 60 < 0.5  # K/min, far below the 2 K/min alarm


def test_self_discharge_at_rest_is_suspected_after_settling(params: CellParameters) -> None:
    monitor = SafetyMonitor(params)
    drop = -0.010 / 3600  # 10 mV/h at rest, sampled every 10 s
    early = hold(monitor, 0.0, 3.9, 25.0, 3600 + 1700, dv_v_per_s=drop, dt_s=10.0)
    assert early.alarms == 0  # settling (1 h) + window (30 min) not over yet
    late = hold(monitor, 0.0, 3.9, 25.0, 3600 + 1900, dv_v_per_s=drop, dt_s=10.0)
    assert late.alarms == int(Alarm.SELF_DISCHARGE)
    assert late.self_discharge_v_per_s * 3600 == pytest.approx(0.010, rel=0.02)
    assert 0.0 < late.sos < 1.0
    healthy = hold(monitor, 0.0, 3.9, 25.0, 3 * 3600, dv_v_per_s=-0.001 / 3600, dt_s=10.0)
    assert healthy.alarms == 0 and healthy.sos == 1.0
    loaded = hold(monitor, -1.0, 3.9, 25.0, 3 * 3600, dv_v_per_s=drop, dt_s=10.0)  # not a short
    assert loaded.alarms == 0
    # current flow resets the trend
    state = monitor.update(late, -2.0, 3.85, 25.0, 10.0)
    assert state.alarms == 0 and state.rest_s == 0.0 and state.anchor_rest_s == -1.0


def test_cells_are_independent_and_vectorised(params: CellParameters) -> None:
    monitor = SafetyMonitor(params)
    voltage = np.array([[3.7, 3.7, 4.3], [3.7, 2.0, 3.7]])
    state = monitor.initial(np.array([[0.0], [-2.0]]), voltage, 25.0)  # per-pack current
    expected = np.zeros((2, 3), dtype=np.int64)
    expected[0, 2] = Alarm.OVER_VOLTAGE
    expected[1, 1] = Alarm.UNDER_VOLTAGE
    assert np.array_equal(state.alarms, expected)
    assert np.array_equal(state.sos == 1.0, expected == 0)


def test_json_round_trip_and_resume_are_exact(params: CellParameters) -> None:
    monitor = SafetyMonitor(params)
    rng = np.random.default_rng(1)
    current = rng.normal(0.0, 0.02, (4000, 3))
    voltage = 3.8 - 1e-6 * np.arange(4000)[:, None] + rng.normal(0.0, 0.001, (4000, 3))
    temperature = 25.0 + 0.001 * np.arange(4000)[:, None] + np.zeros((1, 3))
    state = monitor.initial(current[0], voltage[0], temperature[0])
    for k in range(1, 3700):
        state = monitor.update(state, current[k], voltage[k], temperature[k], 1.0)
    resumed = SafetyState.from_json_dict(json.loads(json.dumps(state.to_json_dict())))
    fresh = SafetyMonitor(params)
    for k in range(3700, 4000):
        state = monitor.update(state, current[k], voltage[k], temperature[k], 1.0)
        resumed = fresh.update(resumed, current[k], voltage[k], temperature[k], 1.0)
    for name in state.__slots__:
        assert np.array_equal(getattr(state, name), getattr(resumed, name)), name


def test_bad_inputs_are_refused(params: CellParameters) -> None:
    monitor = SafetyMonitor(params)
    state = monitor.initial(0.0, [3.7, 3.7], 25.0)
    with pytest.raises(TwinValidationError):
        monitor.update(state, 0.0, [3.7, np.nan], 25.0, 1.0)
    with pytest.raises(TwinValidationError):
        monitor.update(state, 0.0, [3.7, 3.7, 3.7], 25.0, 1.0)
    with pytest.raises(TwinValidationError):
        monitor.update(state, 0.0, 3.7, 25.0, 0.0)
    with pytest.raises(TwinValidationError):
        SafetyConfig(rise_alarm_k_per_min=20.0)
    with pytest.raises(TwinValidationError):
        SafetyState.from_json_dict({**state.to_json_dict(), "sos": [1.0]})
