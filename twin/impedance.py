"""Small-signal impedance of the cell's equivalent circuit: what an EIS measurement sees.

    Z(f) = j w L + R0 + sum_k R_k / (1 + j w tau_k) + Z_D(w),      w = 2 pi f

with the diffusion tail ``Z_D`` a Warburg element of coefficient ``A_W`` (ohm s^-1/2):

    semi-infinite       Z_D = A_W / sqrt(j w)
    transmissive        Z_D = A_W / sqrt(j w) * tanh(sqrt(j w tau_d))    (finite length;
                                                                           DC limit A_W sqrt(tau_d))
    reflective          Z_D = A_W / sqrt(j w) * coth(sqrt(j w tau_d))    (finite space, bounded:
                                                                           capacitive at DC)

``A_W`` is the coefficient of ``1 / sqrt(j w)``; the classic Warburg ``sigma`` of
``sigma (1 - j) / sqrt(w)`` is ``A_W / sqrt(2)``. R0 and the RC pairs come from a
``CellParameters`` at a SoC and temperature (linear interpolation of its tables, Arrhenius law,
per-cell resistance scale: the same resistances as ``twin.cell_model``). Pure: numpy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from twin.cell_model import GAS_CONSTANT_J_PER_MOL_K, KELVIN, FloatArray
from twin.cell_params import CellParameters
from twin.errors import TwinValidationError

__all__ = [
    "ComplexArray",
    "DiffusionKind",
    "DiffusionTail",
    "EquivalentCircuit",
    "default_diffusion_tail",
    "equivalent_circuit",
    "log_frequencies_hz",
    "magnitude_ohm",
    "phase_deg",
]

ComplexArray = NDArray[np.complex128]
DiffusionKind = Literal["semi_infinite", "transmissive", "reflective"]

DEFAULT_INDUCTANCE_H = 50e-9
"""Cell plus leads of an EIS fixture on a cylindrical cell: a few tens of nH."""


def _sqrt_j_omega(omega: FloatArray) -> ComplexArray:
    """sqrt(j w) = sqrt(w / 2) (1 + j): real part > 0 for w > 0."""
    root = np.sqrt(omega / 2.0)
    out: ComplexArray = root + 1j * root
    return out


def _tanh(x: ComplexArray) -> ComplexArray:
    """tanh for Re(x) >= 0 without overflow: (1 - e^-2x) / (1 + e^-2x)."""
    e: ComplexArray = np.exp(-2.0 * x)
    out: ComplexArray = (1.0 - e) / (1.0 + e)
    return out


@dataclass(frozen=True, slots=True)
class DiffusionTail:
    """A Warburg element: ``coefficient_ohm_per_sqrt_s`` / sqrt(j w), optionally finite."""

    coefficient_ohm_per_sqrt_s: float
    tau_s: float = math.inf
    """Diffusion time L^2 / D; infinite: semi-infinite Warburg (``kind`` is then ignored)."""
    kind: Literal["transmissive", "reflective"] = "reflective"

    def __post_init__(self) -> None:
        a_w = self.coefficient_ohm_per_sqrt_s
        if not (math.isfinite(a_w) and a_w >= 0.0):
            raise TwinValidationError(f"Warburg coefficient must be finite and >= 0, got {a_w}")
        if not self.tau_s > 0.0:
            raise TwinValidationError(f"diffusion tau_s must be positive, got {self.tau_s}")
        if self.kind not in ("transmissive", "reflective"):
            raise TwinValidationError(f"unknown diffusion kind {self.kind!r}")

    @property
    def effective_kind(self) -> DiffusionKind:
        """``semi_infinite`` when ``tau_s`` is infinite, else ``kind``."""
        return "semi_infinite" if math.isinf(self.tau_s) else self.kind

    @property
    def resistance_ohm(self) -> float:
        """Diffusion resistance A_W sqrt(tau_d) (the DC limit of the transmissive element)."""
        return self.coefficient_ohm_per_sqrt_s * math.sqrt(self.tau_s)

    def scaled(self, factor: float) -> DiffusionTail:
        """The same element with its coefficient multiplied by ``factor``."""
        return DiffusionTail(self.coefficient_ohm_per_sqrt_s * factor, self.tau_s, self.kind)

    def impedance_ohm(self, omega_rad_s: FloatArray) -> ComplexArray:
        """Complex impedance at angular frequencies ``omega_rad_s`` (> 0)."""
        s = _sqrt_j_omega(omega_rad_s)
        z: ComplexArray = self.coefficient_ohm_per_sqrt_s / s
        kind = self.effective_kind
        if kind == "semi_infinite":
            return z
        x = s * math.sqrt(self.tau_s)
        t = _tanh(x)
        out: ComplexArray = z * t if kind == "transmissive" else z / t
        return out


@dataclass(frozen=True, slots=True)
class EquivalentCircuit:
    """R0 in series with RC pairs, an optional diffusion tail and a series inductance."""

    r0_ohm: float
    rc_r_ohm: tuple[float, ...] = ()
    rc_tau_s: tuple[float, ...] = ()
    diffusion: DiffusionTail | None = None
    inductance_h: float = 0.0

    def __post_init__(self) -> None:
        if len(self.rc_r_ohm) != len(self.rc_tau_s):
            raise TwinValidationError("rc_r_ohm and rc_tau_s must have the same length")
        values = (self.r0_ohm, *self.rc_r_ohm, *self.rc_tau_s, self.inductance_h)
        if not all(math.isfinite(v) and v >= 0.0 for v in values):
            raise TwinValidationError("resistances, time constants and inductance must be >= 0")
        if any(tau == 0.0 for tau in self.rc_tau_s):
            raise TwinValidationError("RC time constants must be positive")

    @property
    def polarisation_resistance_ohm(self) -> float:
        """Sum of the RC resistances."""
        return math.fsum(self.rc_r_ohm)

    @property
    def dc_resistance_ohm(self) -> float:
        """lim f -> 0 of Re Z: R0 + sum R_k (+ the transmissive tail; infinite for the others)."""
        base = self.r0_ohm + self.polarisation_resistance_ohm
        d = self.diffusion
        if d is None or d.coefficient_ohm_per_sqrt_s == 0.0:
            return base
        return base + d.resistance_ohm if d.effective_kind == "transmissive" else math.inf

    def impedance_ohm(self, frequency_hz: ArrayLike) -> ComplexArray:
        """Complex impedance at ``frequency_hz`` (any shape, every value > 0 and finite)."""
        f = np.asarray(frequency_hz, dtype=np.float64)
        if not np.all(np.isfinite(f)) or np.any(f <= 0.0):
            raise TwinValidationError("frequencies must be positive and finite")
        omega = 2.0 * np.pi * f
        z: ComplexArray = np.full(f.shape, self.r0_ohm, dtype=np.complex128)
        if self.inductance_h:
            z = z + 1j * omega * self.inductance_h
        for r_ohm, tau_s in zip(self.rc_r_ohm, self.rc_tau_s, strict=True):
            z = z + r_ohm / (1.0 + 1j * omega * tau_s)
        if self.diffusion is not None:
            z = z + self.diffusion.impedance_ohm(omega)
        return z


def default_diffusion_tail(params: CellParameters) -> DiffusionTail:
    """A plausible solid-diffusion tail when a parameter set has none (simulators' default).

    Coefficient 0.1 x (R0 + sum R_k) per sqrt(s) at 50 % SoC and the reference temperature
    (about 5 mOhm s^-1/2 for a 5 Ah 21700 cell), reflective, tau_d 10 x the slowest RC tau
    (at least 1000 s): a 45-degree line below ~1 Hz bending to vertical at the lowest
    frequencies. An assumption, not an identified value.
    """
    circuit = equivalent_circuit(params, 0.5, params.reference_temperature_c)
    dc = circuit.r0_ohm + circuit.polarisation_resistance_ohm
    tau_d = max(1000.0, 10.0 * max(circuit.rc_tau_s, default=0.0))
    return DiffusionTail(0.1 * dc, tau_d, "reflective")


def equivalent_circuit(
    params: CellParameters,
    soc: float,
    temperature_c: float = 25.0,
    *,
    resistance_scale: float = 1.0,
    diffusion: DiffusionTail | None = None,
    inductance_h: float = 0.0,
) -> EquivalentCircuit:
    """The cell's circuit at ``soc`` and ``temperature_c``.

    Resistances (and the diffusion coefficient) follow the parameter set's Arrhenius law and
    ``resistance_scale`` (ageing, cell-to-cell spread); time constants do not.
    """
    if not (math.isfinite(soc) and math.isfinite(temperature_c)):
        raise TwinValidationError("soc and temperature must be finite")
    if not (math.isfinite(resistance_scale) and resistance_scale > 0.0):
        raise TwinValidationError("resistance_scale must be positive")
    if temperature_c <= -KELVIN:
        raise TwinValidationError("temperature below absolute zero")
    grid = params.soc_grid
    ea_over_r = params.activation_energy_j_per_mol / GAS_CONSTANT_J_PER_MOL_K
    t_ref_k = params.reference_temperature_c + KELVIN
    factor = resistance_scale * math.exp(
        ea_over_r * (1.0 / (temperature_c + KELVIN) - 1.0 / t_ref_k)
    )

    def at(table: list[float]) -> float:
        return float(np.interp(soc, grid, table))

    return EquivalentCircuit(
        r0_ohm=at(params.r0_ohm) * factor,
        rc_r_ohm=tuple(at(b.r_ohm) * factor for b in params.rc),
        rc_tau_s=tuple(at(b.tau_s) for b in params.rc),
        diffusion=None if diffusion is None else diffusion.scaled(factor),
        inductance_h=inductance_h,
    )


def log_frequencies_hz(f_start_hz: float, f_stop_hz: float, points_per_decade: int) -> FloatArray:
    """Logarithmic sweep from ``f_start_hz`` to ``f_stop_hz`` (either direction), both included.

    ``ceil(decades x points_per_decade) + 1`` points, evenly spaced in log f.
    """
    if not (
        math.isfinite(f_start_hz) and math.isfinite(f_stop_hz) and f_start_hz > 0 and f_stop_hz > 0
    ):
        raise TwinValidationError("sweep frequencies must be positive and finite")
    if points_per_decade < 1:
        raise TwinValidationError("points_per_decade must be at least 1")
    decades = abs(math.log10(f_stop_hz / f_start_hz))
    n = math.ceil(decades * points_per_decade - 1e-9) + 1
    out: FloatArray = np.logspace(math.log10(f_start_hz), math.log10(f_stop_hz), n)
    return out


def magnitude_ohm(z: ArrayLike) -> FloatArray:
    """|Z| in ohm."""
    out: FloatArray = np.abs(np.asarray(z, dtype=np.complex128))
    return out


def phase_deg(z: ArrayLike) -> FloatArray:
    """arg Z in degrees (negative: capacitive, positive: inductive)."""
    out: FloatArray = np.degrees(np.angle(np.asarray(z, dtype=np.complex128)))
    return out
