"""Load profiles: seeded, reproducible, signed as the SPEC says (positive while charging)."""

from __future__ import annotations

import numpy as np
import pytest

from simulators.profiles import (
    Profile,
    csv_profile,
    domestic_pv_self_consumption,
    industrial_load_levelling,
)
from twin.errors import TwinValidationError

pytestmark = pytest.mark.unit

DAY_S = 86_400.0


def hour_mean(profile: Profile, start_h: float, end_h: float) -> float:
    hour = (profile.time_s % DAY_S) / 3600.0
    return float(profile.values[(hour >= start_h) & (hour < end_h)].mean())


# -- domestic PV self-consumption --------------------------------------------------------------


def test_domestic_profile_is_reproducible_from_its_seed() -> None:
    a = domestic_pv_self_consumption(14, 60.0, 42, 5.0)
    b = domestic_pv_self_consumption(14, 60.0, 42, 5.0)
    c = domestic_pv_self_consumption(14, 60.0, 43, 5.0)
    assert a.values.tobytes() == b.values.tobytes()
    assert a.time_s.tobytes() == b.time_s.tobytes()
    assert not np.array_equal(a.values, c.values)
    assert a.kind == "current" and a.unit == "A" and a.period_s == 14 * DAY_S


def test_domestic_pv_charges_at_midday_and_discharges_in_the_evening() -> None:
    profile = domestic_pv_self_consumption(28, 60.0, 1, 5.0)
    assert hour_mean(profile, 11.0, 15.0) > 0.5  # PV surplus: the battery charges
    assert hour_mean(profile, 19.0, 22.0) < -0.5  # evening peak: the battery discharges
    assert hour_mean(profile, 1.0, 4.0) < 0.0  # night: base load from the battery
    assert profile.values.max() <= 0.5 * 5.0 + 1e-12  # C-rate limits
    assert profile.values.min() >= -0.5 * 5.0 - 1e-12
    daily_discharge_ah = -profile.values[profile.values < 0].sum() * 60.0 / 3600.0 / 28
    assert 0.3 * 5.0 < daily_discharge_ah < 1.5 * 5.0  # the battery cycles, about once a day


def test_domestic_clouds_differ_from_day_to_day() -> None:
    profile = domestic_pv_self_consumption(10, 60.0, 3, 5.0, max_charge_c=10.0)
    noon = profile.values.reshape(10, -1)[:, 11 * 60 : 14 * 60].mean(axis=1)
    assert noon.std() > 0.05 * abs(noon.mean())


# -- industrial load levelling -----------------------------------------------------------------


def test_industrial_profile_shaves_workday_peaks_and_recharges_at_night() -> None:
    capacity = 4.0
    profile = industrial_load_levelling(14, 60.0, 5, capacity, daily_shave_e=0.8)
    again = industrial_load_levelling(14, 60.0, 5, capacity, daily_shave_e=0.8)
    other = industrial_load_levelling(14, 60.0, 6, capacity, daily_shave_e=0.8)
    assert profile.values.tobytes() == again.values.tobytes()
    assert not np.array_equal(profile.values, other.values)
    per_day = profile.values.reshape(14, -1)
    hour = np.arange(per_day.shape[1]) / 60.0
    discharged_ah = -np.minimum(per_day, 0.0).sum(axis=1) * 60.0 / 3600.0
    workday = (np.arange(14) % 7) < 5
    np.testing.assert_allclose(discharged_ah[workday], 0.8 * capacity, rtol=1e-6)
    assert np.all(discharged_ah[~workday] == 0.0)  # weekends: no shaving
    assert np.all(per_day[:, hour < 6.0] >= 0.0)  # night: charging only
    assert np.all(per_day[:, (hour >= 6.0)] <= 0.0)  # day: discharging or idle
    assert profile.values.min() >= -0.5 * capacity - 1e-12
    assert profile.values.max() <= 0.25 * capacity + 1e-12


# -- CSV profiles ------------------------------------------------------------------------------


def test_csv_current_profile_holds_each_sample_and_repeats() -> None:
    profile = csv_profile("time_s,current_a,voltage_v\n100,1.5,3.7\n160,-2,3.6\n220,0,3.6\n")
    assert profile.kind == "current"
    np.testing.assert_array_equal(profile.time_s, [0.0, 60.0, 120.0])
    assert profile.period_s == 180.0
    np.testing.assert_array_equal(
        profile.current_at([0.0, 59.9, 60.0, 150.0, 179.0, 180.0, 245.0, -1.0]),
        [1.5, 1.5, -2.0, 0.0, 0.0, 1.5, -2.0, 0.0],
    )


def test_csv_profile_interpolates_linearly_on_request() -> None:
    profile = csv_profile("time_s,current_a\n0,0\n10,10\n", interpolation="linear", period_s=20.0)
    np.testing.assert_allclose(profile.current_at([5.0, 10.0, 15.0, 25.0]), [5.0, 10.0, 5.0, 5.0])


def test_csv_power_profile_needs_the_pack_voltage() -> None:
    profile = csv_profile("time_s,power_w\n0,100\n60,-50\n", scale=2.0)
    assert profile.kind == "power" and profile.unit == "W"
    np.testing.assert_allclose(profile.current_at([0.0, 60.0], pack_voltage_v=50.0), [4.0, -2.0])
    with pytest.raises(TwinValidationError, match="pack voltage"):
        profile.current_at(0.0)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty"),
        ("time_s,voltage_v\n0,3.7\n1,3.7\n", "neither current_a nor power_w"),
        ("time_s,current_a,power_w\n0,1,3\n1,1,3\n", "both current_a and power_w"),
        ("t,current_a\n0,1\n1,1\n", "missing column time_s"),
        ("time_s,current_a\n0,1\n", "at least 2 rows"),
        ("time_s,current_a\n0,1\n1,abc\n", "line 3: 'abc' is not a number"),
        ("time_s,current_a\n0,1\n1,2,3\n", "line 3: 3 values"),
        ("time_s,current_a\n0,1\n1,nan\n", "current_a is NaN or infinite at row 2"),
        ("time_s,current_a\n0,1\n5,1\n5,2\n", r"increase strictly \(row 3\)"),
    ],
)
def test_csv_errors_say_what_is_wrong(text: str, match: str) -> None:
    with pytest.raises(TwinValidationError, match=match):
        csv_profile(text, source="load.csv")


def test_csv_period_must_cover_the_samples() -> None:
    with pytest.raises(TwinValidationError, match="period_s"):
        csv_profile("time_s,current_a\n0,1\n10,2\n", period_s=5.0)


def test_generators_refuse_nonsense() -> None:
    with pytest.raises(TwinValidationError, match="days"):
        domestic_pv_self_consumption(0, 60.0, 1, 5.0)
    with pytest.raises(TwinValidationError, match="capacity_ah"):
        domestic_pv_self_consumption(1, 60.0, 1, -5.0)
    with pytest.raises(TwinValidationError, match="night_hours"):
        industrial_load_levelling(1, 60.0, 1, 5.0, night_hours=(6.0, 2.0))
    with pytest.raises(TwinValidationError, match="increase strictly"):
        Profile(np.array([0.0, 0.0]), np.array([1.0, 2.0]))
