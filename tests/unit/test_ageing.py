"""The semi-empirical ageing model against the closed forms of the published models."""

from __future__ import annotations

import math

import numpy as np
import pytest

from twin.ageing import (
    GAS_CONSTANT_J_PER_MOL_K,
    AgeingLaw,
    AgeingParameters,
    AgeingState,
    advance_power_law,
    age,
    ageing_parameters_for,
    health,
)
from twin.errors import TwinValidationError

pytestmark = pytest.mark.unit

DAY_S = 86_400.0
NMC = ageing_parameters_for("NMC")
LFP = ageing_parameters_for("LFP")


def kelvin(celsius: float) -> float:
    return celsius + 273.15


def schmalstieg_alpha_cap(voltage_v: float, celsius: float) -> float:
    """Schmalstieg 2014: calendar capacity rate per day**0.75."""
    return (7.543 * voltage_v - 23.75) * 1e6 * math.exp(-6976.0 / kelvin(celsius))


def schmalstieg_alpha_res(voltage_v: float, celsius: float) -> float:
    return (5.270 * voltage_v - 16.32) * 1e5 * math.exp(-5986.0 / kelvin(celsius))


def naumann_k_cap(soc: float, celsius: float) -> float:
    """Naumann 2018: calendar capacity rate per second**0.5."""
    arrhenius = math.exp(-17126.0 / GAS_CONSTANT_J_PER_MOL_K * (1 / kelvin(celsius) - 1 / 298.15))
    return 1.2571e-5 * arrhenius * (2.85750 * (soc - 0.5) ** 3 + 0.60225)


def wang_k_percent(c_rate: float, celsius: float, b: float) -> float:
    """Wang 2011: percent capacity loss per (discharge Ah of the 2.2 Ah cell)**0.55."""
    return b * math.exp(-(31_700.0 - 370.3 * c_rate) / (GAS_CONSTANT_J_PER_MOL_K * kelvin(celsius)))


def rest(params: AgeingParameters, days: float, soc: float, celsius: float, **kw: object):  # type: ignore[no-untyped-def]
    """Calendar ageing of one cell at rest for ``days`` in one step."""
    return age(params, AgeingState.fresh((1,)), soc, celsius, 0.0, days * DAY_S, 5.0, **kw)  # type: ignore[arg-type]


# -- calendar ageing: closed forms -----------------------------------------------------------


@pytest.mark.parametrize(("voltage", "celsius", "days"), [(3.8, 35.0, 200.0), (4.1, 25.0, 730.0)])
def test_nmc_calendar_fade_follows_schmalstieg(voltage: float, celsius: float, days: float) -> None:
    state = rest(NMC, days, 0.5, celsius, voltage_v=voltage)
    expected_cap = schmalstieg_alpha_cap(voltage, celsius) * days**0.75
    expected_res = schmalstieg_alpha_res(voltage, celsius) * days**0.75
    assert state.calendar_capacity_loss[0] == pytest.approx(expected_cap, rel=1e-12)
    assert state.calendar_resistance_growth[0] == pytest.approx(expected_res, rel=1e-12)
    assert state.cycle_capacity_loss[0] == 0.0 and state.cycle_resistance_growth[0] == 0.0
    soh, resistance = health(state)
    assert soh[0] == pytest.approx(1.0 - expected_cap, rel=1e-12)
    assert resistance[0] == pytest.approx(1.0 + expected_res, rel=1e-12)
    assert 0.9 < soh[0] < 1.0  # a plausible size: a few % after months or years


def test_lfp_calendar_fade_follows_naumann() -> None:
    seconds = 300 * DAY_S
    state = rest(LFP, 300, 0.8, 40.0)
    assert state.calendar_capacity_loss[0] == pytest.approx(
        naumann_k_cap(0.8, 40.0) * math.sqrt(seconds), rel=1e-12
    )
    arrhenius = math.exp(-71827.0 / GAS_CONSTANT_J_PER_MOL_K * (1 / kelvin(40.0) - 1 / 298.15))
    growth = 3.4194e-10 * arrhenius * (-3.3903 * 0.3**2 + 1.5604) * seconds
    assert state.calendar_resistance_growth[0] == pytest.approx(growth, rel=1e-12)


def test_low_voltage_stops_schmalstieg_calendar_fade_instead_of_healing() -> None:
    state = rest(NMC, 100, 0.0, 25.0, voltage_v=3.0)  # 7.543 V - 23.75 < 0 below 3.149 V
    assert state.calendar_capacity_loss[0] == 0.0
    assert health(state)[0][0] == 1.0


# -- equivalent-time integration ---------------------------------------------------------------


@pytest.mark.parametrize("params", [NMC, LFP], ids=["nmc", "lfp"])
def test_splitting_a_period_into_steps_gives_the_loss_of_one_step(
    params: AgeingParameters,
) -> None:
    conditions = {"voltage_v": 3.9} if params.needs_voltage else {}
    kw = dict(throughput_ah=0.0, **conditions)
    one = age(params, AgeingState.fresh((2,)), 0.7, [30.0, 45.0], 0.0, 365 * DAY_S, 5.0, **kw)  # type: ignore[arg-type]
    many = AgeingState.fresh((2,))
    for _ in range(365):
        many = age(params, many, 0.7, [30.0, 45.0], 0.0, DAY_S, 5.0, **kw)  # type: ignore[arg-type]
    for name in ("calendar_capacity_loss", "calendar_resistance_growth"):
        np.testing.assert_allclose(getattr(many, name), getattr(one, name), rtol=1e-10)
    np.testing.assert_allclose(many.time_s, 365 * DAY_S, rtol=1e-12)


@pytest.mark.parametrize("params", [NMC, LFP], ids=["nmc", "lfp"])
def test_splitting_throughput_into_steps_gives_the_loss_of_one_step(
    params: AgeingParameters,
) -> None:
    kw = {"voltage_v": 3.7} if params.needs_voltage else {}
    common = dict(depth_of_discharge=0.8, **kw)
    one = age(
        params, AgeingState.fresh(()), 0.5, 25.0, 2.5, 0.0, 5.0, throughput_ah=5000.0, **common
    )  # type: ignore[arg-type]
    many = AgeingState.fresh(())
    for _ in range(500):
        many = age(params, many, 0.5, 25.0, 2.5, 0.0, 5.0, throughput_ah=10.0, **common)  # type: ignore[arg-type]
    assert float(many.cycle_capacity_loss) == pytest.approx(
        float(one.cycle_capacity_loss), rel=1e-10
    )
    assert float(many.cycle_resistance_growth) == pytest.approx(
        float(one.cycle_resistance_growth), rel=1e-10
    )
    assert float(many.equivalent_full_cycles) == pytest.approx(500.0, rel=1e-12)


def test_changing_conditions_continue_from_the_equivalent_time() -> None:
    """100 days at 25 degC, then 100 days at 45 degC: the hot curve from the same loss."""
    hot_after_cold = rest(NMC, 100, 0.5, 25.0, voltage_v=3.9)
    hot_after_cold = age(NMC, hot_after_cold, 0.5, 45.0, 0.0, 100 * DAY_S, 5.0, voltage_v=3.9)
    k_cold, k_hot = schmalstieg_alpha_cap(3.9, 25.0), schmalstieg_alpha_cap(3.9, 45.0)
    loss_cold = k_cold * 100**0.75
    t_eq = (loss_cold / k_hot) ** (1 / 0.75)  # days the hot curve needs to reach that loss
    expected = k_hot * (t_eq + 100) ** 0.75
    assert hot_after_cold.calendar_capacity_loss[0] == pytest.approx(expected, rel=1e-12)
    # less than 200 hot days, more than 100 hot days after 100 cold ones
    assert k_hot * 100**0.75 < expected < k_hot * 200**0.75


def test_advance_power_law_keeps_the_loss_where_nothing_drives_it() -> None:
    loss = np.array([0.0, 0.1, 0.1, 0.1])
    rate = np.array([0.0, 0.0, 1e-3, 1e-3])
    out = advance_power_law(loss, rate, 0.5, np.array([10.0, 10.0, 0.0, 10.0]))
    assert out[0] == 0.0 and out[1] == 0.1 and out[2] == 0.1
    assert out[3] == pytest.approx(1e-3 * math.sqrt((0.1 / 1e-3) ** 2 + 10.0), rel=1e-12)


# -- temperature (Arrhenius) ---------------------------------------------------------------


def test_calendar_ageing_accelerates_with_temperature_by_the_arrhenius_factor() -> None:
    cold = rest(NMC, 180, 0.5, 25.0, voltage_v=3.8)
    hot = rest(NMC, 180, 0.5, 45.0, voltage_v=3.8)
    ratio = hot.calendar_capacity_loss[0] / cold.calendar_capacity_loss[0]
    assert ratio == pytest.approx(
        math.exp(6976.0 * (1 / kelvin(25.0) - 1 / kelvin(45.0))), rel=1e-12
    )
    assert 4.0 < ratio < 4.6  # ~4.4x for +20 K (Ea = 58 kJ/mol)
    cold_lfp, hot_lfp = rest(LFP, 180, 0.5, 25.0), rest(LFP, 180, 0.5, 45.0)
    ratio_lfp = hot_lfp.calendar_capacity_loss[0] / cold_lfp.calendar_capacity_loss[0]
    expected = math.exp(17126.0 / GAS_CONSTANT_J_PER_MOL_K * (1 / kelvin(25.0) - 1 / kelvin(45.0)))
    assert ratio_lfp == pytest.approx(expected, rel=1e-12)
    assert 1.5 < ratio_lfp < 1.6
    assert hot_lfp.calendar_resistance_growth[0] > 5 * cold_lfp.calendar_resistance_growth[0]


def test_wang_cycle_fade_depends_on_temperature_and_c_rate() -> None:
    def cycle_loss(celsius: float, c_rate: float, fec: float) -> float:
        state = age(
            LFP,
            AgeingState.fresh(()),
            0.5,
            celsius,
            c_rate * 2.3,
            0.0,
            2.3,
            throughput_ah=2 * fec * 2.3,
        )
        return float(state.cycle_capacity_loss)

    for c_rate, b in ((0.5, 31_630.0), (2.0, 21_681.0)):
        for celsius in (15.0, 45.0):
            expected = wang_k_percent(c_rate, celsius, b) / 100 * (1000 * 2.2) ** 0.55
            assert cycle_loss(celsius, c_rate, 1000) == pytest.approx(expected, rel=1e-12)
    b_1c = 31_630.0 + (21_681.0 - 31_630.0) * (1.0 - 0.5) / (2.0 - 0.5)  # table interpolated
    expected_1c = wang_k_percent(1.0, 25.0, b_1c) / 100 * (1000 * 2.2) ** 0.55
    assert cycle_loss(25.0, 1.0, 1000) == pytest.approx(expected_1c, rel=1e-12)
    assert cycle_loss(45.0, 0.5, 1000) > 2.0 * cycle_loss(25.0, 0.5, 1000)
    assert 0.05 < cycle_loss(25.0, 0.5, 3000) < 0.2  # ~12 % after 3000 cycles at C/2, 25 degC


# -- cycle ageing: throughput ------------------------------------------------------------------


def test_nmc_cycle_fade_follows_the_square_root_of_throughput() -> None:
    def cycle(fec: float, dod: float, voltage: float) -> AgeingState:
        return age(
            NMC,
            AgeingState.fresh(()),
            0.5,
            35.0,
            5.0,
            0.0,
            5.0,
            throughput_ah=2 * fec * 5.0,
            depth_of_discharge=dod,
            voltage_v=voltage,
        )

    beta_cap = 7.348e-3 * (3.7 - 3.667) ** 2 + 7.600e-4 + 4.081e-3 * 0.8
    beta_res = 2.153e-4 * (3.7 - 3.725) ** 2 - 1.521e-5 + 2.798e-4 * 0.8
    q_ref = 500 * 2 * 2.05  # the same number of cycles of Schmalstieg's 2.05 Ah cell
    state = cycle(500, 0.8, 3.7)
    assert float(state.cycle_capacity_loss) == pytest.approx(beta_cap * math.sqrt(q_ref), rel=1e-12)
    assert float(state.cycle_resistance_growth) == pytest.approx(beta_res * q_ref, rel=1e-12)
    four_times = cycle(2000, 0.8, 3.7)
    assert float(four_times.cycle_capacity_loss) == pytest.approx(
        2.0 * float(state.cycle_capacity_loss), rel=1e-12
    )
    assert float(cycle(500, 0.3, 3.7).cycle_capacity_loss) < float(state.cycle_capacity_loss)
    assert float(state.calendar_capacity_loss) == 0.0  # no time passed


def test_throughput_defaults_to_current_times_time() -> None:
    explicit = age(LFP, AgeingState.fresh(()), 0.5, 25.0, 1.15, 3600.0, 2.3, throughput_ah=1.15)
    implicit = age(LFP, AgeingState.fresh(()), 0.5, 25.0, -1.15, 3600.0, 2.3)
    assert float(implicit.throughput_ah) == pytest.approx(1.15, rel=1e-15)
    assert float(implicit.equivalent_full_cycles) == pytest.approx(0.25, rel=1e-15)
    assert float(implicit.cycle_capacity_loss) > 0.0
    explicit_dod = age(
        LFP,
        AgeingState.fresh(()),
        0.5,
        25.0,
        1.15,
        3600.0,
        2.3,
        throughput_ah=1.15,
        depth_of_discharge=0.25,
    )
    assert implicit.to_json() == explicit_dod.to_json()
    assert float(explicit.cycle_capacity_loss) == float(implicit.cycle_capacity_loss)


# -- state, parameters, determinism ------------------------------------------------------------


def aged_state() -> AgeingState:
    rng = np.random.default_rng(7)
    shape = (3, 5)
    state = AgeingState.fresh(shape)
    for _ in range(20):
        state = age(
            NMC,
            state,
            rng.uniform(0.1, 0.9, shape),
            rng.uniform(10.0, 45.0, shape),
            rng.uniform(-5.0, 5.0, shape),
            rng.uniform(100.0, 90_000.0),
            5.0,
            voltage_v=rng.uniform(3.4, 4.1, shape),
            depth_of_discharge=rng.uniform(0.0, 1.0, shape),
        )
    return state


def test_state_json_round_trip_is_exact() -> None:
    state = aged_state()
    back = AgeingState.from_json(state.to_json())
    for name in (
        "time_s",
        "throughput_ah",
        "equivalent_full_cycles",
        "calendar_capacity_loss",
        "cycle_capacity_loss",
        "calendar_resistance_growth",
        "cycle_resistance_growth",
    ):
        a, b = getattr(state, name), getattr(back, name)
        assert a.shape == b.shape == (3, 5)
        assert a.tobytes() == b.tobytes(), name
    assert back.to_json() == state.to_json()


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[1, 2]", "JSON object"),
        ("{nope", "not JSON"),
        ('{"kind": "other", "version": 1}', "b2l.ageing_state"),
        ('{"kind": "b2l.ageing_state", "version": 1, "shape": [2]}', "not an ageing state"),
    ],
)
def test_malformed_state_documents_are_refused(text: str, match: str) -> None:
    with pytest.raises(TwinValidationError, match=match):
        AgeingState.from_json(text)


def test_state_with_nan_is_refused() -> None:
    data = AgeingState.fresh((2,)).to_json_dict()
    data["cycle_capacity_loss"] = [0.0, float("nan")]
    with pytest.raises(TwinValidationError, match="NaN"):
        AgeingState.from_json_dict(data)


def test_same_inputs_give_the_same_bits() -> None:
    assert aged_state().to_json() == aged_state().to_json()


@pytest.mark.parametrize("params", [NMC, LFP], ids=["nmc", "lfp"])
def test_parameters_round_trip_through_json(params: AgeingParameters) -> None:
    assert AgeingParameters.model_validate_json(params.to_json()) == params
    assert "doi:" in params.source


def test_parameters_for_chemistries() -> None:
    assert ageing_parameters_for("nmc811").name == NMC.name
    assert ageing_parameters_for("LiFePO4").name == LFP.name
    with pytest.raises(TwinValidationError, match="no ageing model"):
        ageing_parameters_for("NaIon")


def test_bad_laws_are_refused() -> None:
    with pytest.raises(ValueError, match="go together"):
        AgeingLaw(driver="time", unit=1.0, exponent=0.5, scale=1.0, c_rate_points=[1.0])
    with pytest.raises(ValueError, match="increase strictly"):
        AgeingLaw(
            driver="time",
            unit=1.0,
            exponent=0.5,
            scale=1.0,
            c_rate_points=[1.0, 1.0],
            c_rate_factors=[1.0, 2.0],
        )
    law = AgeingLaw(driver="time", unit=1.0, exponent=0.5, scale=1.0)
    with pytest.raises(ValueError, match="driven by throughput"):
        AgeingParameters(name="x", chemistry="X", source="test", cycle_capacity=law)


def test_bad_inputs_are_refused() -> None:
    fresh = AgeingState.fresh((2,))
    with pytest.raises(TwinValidationError, match="needs voltage_v"):
        age(NMC, fresh, 0.5, 25.0, 0.0, 10.0, 5.0)
    with pytest.raises(TwinValidationError, match="dt_s"):
        age(LFP, fresh, 0.5, 25.0, 0.0, -1.0, 2.3)
    with pytest.raises(TwinValidationError, match="shape"):
        age(LFP, fresh, [0.5, 0.5, 0.5], 25.0, 0.0, 10.0, 2.3)
    with pytest.raises(TwinValidationError, match="finite"):
        age(LFP, fresh, 0.5, float("nan"), 0.0, 10.0, 2.3)
    with pytest.raises(TwinValidationError, match="capacity_ah"):
        age(LFP, fresh, 0.5, 25.0, 0.0, 10.0, 0.0)
