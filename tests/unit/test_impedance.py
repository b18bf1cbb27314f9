"""Impedance of the cell's equivalent circuit against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest

from twin.cell_model import CellModel
from twin.cell_params import load_builtin
from twin.errors import TwinValidationError
from twin.impedance import (
    DiffusionTail,
    EquivalentCircuit,
    default_diffusion_tail,
    equivalent_circuit,
    log_frequencies_hz,
    magnitude_ohm,
    phase_deg,
)

pytestmark = pytest.mark.unit

RC = EquivalentCircuit(r0_ohm=0.02, rc_r_ohm=(0.01, 0.005), rc_tau_s=(0.01, 10.0))


def test_dc_limit_is_r0_plus_rc_resistances() -> None:
    z = RC.impedance_ohm([1e-9])
    assert z.real[0] == pytest.approx(0.035, rel=1e-9)
    assert abs(z.imag[0]) < 1e-9
    assert RC.dc_resistance_ohm == pytest.approx(0.035)
    assert RC.polarisation_resistance_ohm == pytest.approx(0.015)


def test_high_frequency_limit_is_r0() -> None:
    z = RC.impedance_ohm(1e9)
    assert z.real == pytest.approx(0.02, rel=1e-9)
    assert magnitude_ohm(z) == pytest.approx(0.02, rel=1e-6)


def test_rc_semicircle_peaks_at_its_corner_frequency() -> None:
    circuit = EquivalentCircuit(0.01, (0.02,), (0.5,))
    f = np.logspace(-3, 3, 60_001)
    z = circuit.impedance_ohm(f)
    peak = int(np.argmin(z.imag))
    assert f[peak] == pytest.approx(1 / (2 * math.pi * 0.5), rel=1e-3)
    z_c = circuit.impedance_ohm(1 / (2 * math.pi * 0.5))
    assert z_c.imag == pytest.approx(-0.01, rel=1e-12)  # -R/2 at the top of the semicircle
    assert z_c.real == pytest.approx(0.01 + 0.01, rel=1e-12)
    # the locus is a semicircle of radius R/2 centred at R0 + R/2
    radius = np.abs(z - (0.01 + 0.01))
    np.testing.assert_allclose(radius, 0.01, rtol=1e-9)


def test_vectorised_over_any_shape() -> None:
    f = np.logspace(-2, 3, 12).reshape(3, 4)
    z = RC.impedance_ohm(f)
    assert z.shape == (3, 4)
    assert z[1, 2] == RC.impedance_ohm(f[1, 2])


def test_semi_infinite_warburg_is_a_45_degree_line() -> None:
    tail = DiffusionTail(0.003)
    assert tail.effective_kind == "semi_infinite"
    circuit = EquivalentCircuit(0.02, diffusion=tail)
    f = np.array([0.01, 0.1, 1.0])
    z = circuit.impedance_ohm(f) - 0.02
    omega = 2 * np.pi * f
    np.testing.assert_allclose(z, 0.003 / np.sqrt(1j * omega), rtol=1e-12)
    np.testing.assert_allclose(phase_deg(z), -45.0, atol=1e-9)
    assert math.isinf(circuit.dc_resistance_ohm)


def test_transmissive_warburg_dc_limit_and_high_frequency_asymptote() -> None:
    tail = DiffusionTail(0.002, tau_s=100.0, kind="transmissive")
    assert tail.resistance_ohm == pytest.approx(0.02)
    circuit = EquivalentCircuit(0.01, (0.005,), (1.0,), diffusion=tail)
    assert circuit.dc_resistance_ohm == pytest.approx(0.035)
    assert circuit.impedance_ohm(1e-9).real == pytest.approx(0.035, rel=1e-6)
    z_hf = tail.impedance_ohm(np.array([2 * np.pi * 100.0]))
    assert z_hf[0] == pytest.approx(0.002 / np.sqrt(1j * 2 * np.pi * 100.0), rel=1e-9)


def test_reflective_warburg_turns_capacitive_at_low_frequency() -> None:
    tail = DiffusionTail(0.002, tau_s=100.0, kind="reflective")
    omega = np.array([2 * np.pi * 1e-6])
    z = tail.impedance_ohm(omega)[0]
    # R_d coth(x)/x -> R_d/3 + 1/(j w C_d), C_d = tau/R_d
    r_d = tail.resistance_ohm
    assert z.real == pytest.approx(r_d / 3, rel=1e-3)
    assert z.imag == pytest.approx(-r_d / (omega[0] * 100.0), rel=1e-3)
    assert phase_deg(z) < -89.0
    big = tail.impedance_ohm(np.array([1e12]))  # no overflow warnings at extreme arguments
    assert np.all(np.isfinite(big))


def test_inductance_makes_the_phase_positive_at_high_frequency() -> None:
    circuit = EquivalentCircuit(0.02, inductance_h=1e-6)
    z = circuit.impedance_ohm(1e5)
    assert z.imag == pytest.approx(2 * math.pi * 1e5 * 1e-6)
    assert phase_deg(z) > 0.0


def test_circuit_from_parameters_matches_the_time_domain_model() -> None:
    params = load_builtin("nmc_lgm50")
    model = CellModel(params, resistance_scale=1.3)
    soc, temp = 0.37, 5.0
    circuit = equivalent_circuit(params, soc, temp, resistance_scale=1.3)
    factor = float(model.resistance_factor(np.array(temp)))
    assert circuit.r0_ohm == pytest.approx(np.interp(soc, params.soc_grid, params.r0_ohm) * factor)
    # the DC resistance is what a long pulse sees in the time-domain model
    state = model.initial_state(soc, temp)
    v0 = float(model.terminal_voltage(state, 0.0))
    for _ in range(5000):
        state = model.step(state, -1e-3, temp, 1.0)
        state = type(state)(np.array(soc), state.v_rc_v, np.array(0.0), np.array(temp))
    dv = v0 - float(model.terminal_voltage(state, -1e-3))
    assert dv / 1e-3 == pytest.approx(circuit.dc_resistance_ohm, rel=1e-3)
    assert factor > 1.3  # cold: Arrhenius raises every resistance


def test_default_diffusion_tail_is_scaled_with_the_resistances() -> None:
    params = load_builtin("lfp_a123")
    tail = default_diffusion_tail(params)
    warm = equivalent_circuit(params, 0.5, 25.0, diffusion=tail)
    cold = equivalent_circuit(params, 0.5, 0.0, diffusion=tail)
    assert warm.diffusion is not None and cold.diffusion is not None
    ratio = cold.r0_ohm / warm.r0_ohm
    assert cold.diffusion.coefficient_ohm_per_sqrt_s == pytest.approx(
        warm.diffusion.coefficient_ohm_per_sqrt_s * ratio
    )
    f = log_frequencies_hz(1e3, 1e-2, 10)
    mag = magnitude_ohm(warm.impedance_ohm(f))
    assert mag[0] == pytest.approx(warm.r0_ohm, rel=0.05)
    assert mag[-1] > mag[0]


def test_log_frequencies() -> None:
    f = log_frequencies_hz(0.01, 1000.0, 10)
    assert len(f) == 51
    assert f[0] == pytest.approx(0.01) and f[-1] == pytest.approx(1000.0)
    np.testing.assert_allclose(np.diff(np.log10(f)), 0.1)
    down = log_frequencies_hz(1000.0, 0.01, 10)
    np.testing.assert_allclose(down, f[::-1])
    assert len(log_frequencies_hz(5.0, 5.0, 3)) == 1
    assert len(log_frequencies_hz(1.0, 20.0, 1)) == 3  # 1.3 decades -> ceil(1.3) + 1 points


@pytest.mark.parametrize(
    "call",
    [
        lambda: RC.impedance_ohm([0.0]),
        lambda: RC.impedance_ohm([math.nan]),
        lambda: log_frequencies_hz(-1.0, 10.0, 5),
        lambda: log_frequencies_hz(1.0, 10.0, 0),
        lambda: EquivalentCircuit(0.01, (0.01,), ()),
        lambda: EquivalentCircuit(-0.01),
        lambda: DiffusionTail(0.01, tau_s=0.0),
        lambda: DiffusionTail(math.nan),
    ],
)
def test_invalid_input_raises(call: object) -> None:
    with pytest.raises(TwinValidationError):
        call()  # type: ignore[operator]
