"""State-of-charge estimation: a Kalman filter on the ECM, vectorised over any number of cells.

State per cell (``EkfState.states`` names the rows)::

    x = [soc, v_rc_0 .. v_rc_{k-1}, (hysteresis_v), (ocv_error_v), (bias_a)]

Process model: ``CellModel.step`` fed with the bias-corrected current ``i_measured - bias``; the
OCV error decays with SoC throughput, the bias is a random walk. Its Jacobian is
``F = diag(1, a_k, b, phi, 1)`` plus the bias column ``[-eta dt / Q, -R_k (1 - a_k), 0, 0, 1]``.
Measurement: ``CellModel.terminal_voltage + ocv_error_v``; everything but the OCV is linear in x
(``dV/dv_rc = dV/dh = dV/de = 1``, ``dV/dbias = -R0``).

Design choices, all for robustness against a real cell (an electrochemical model's data fitted
with 10-20 mV of ECM mismatch) rather than against the filter's own model:

* **Current-sensor offset: a bias state** (prior ``bias_std_c`` = 1 % of 1C, slow random walk).
  A 0.5 %-of-1C offset drifts a coulomb counter by 12 % a day. A SoC random walk large enough to
  follow that drift would throw away good coulomb counting; the bias state instead learns the
  offset wherever the OCV has slope, and on a flat LFP plateau its uncertainty feeds the SoC
  covariance, which then grows linearly with time, as the real error does.
* **OCV error state** (``ocv_error_std_v`` 10 mV, decorrelating over 30 % of SoC throughput):
  an OCV table identified from a C/20 test is off by a few mV, slowly along SoC. As a state, such
  an error cannot masquerade as SoC, and on a plateau (slope ~0.05 V per unit SoC: 10 mV = 20 %
  SoC) the filter keeps counting coulombs instead of chasing the voltage.
* **Correlated measurement error**: ``voltage_noise_v`` (15 mV) is mostly model mismatch, which is
  correlated in time; per sample its variance is ``voltage_noise_v**2 * (1 + 2 corr / dt)``, so the
  information per hour is that of independent samples every ``2 * corr`` (60 s) whatever the
  sampling rate, and a 1 Hz log cannot average the mismatch away into overconfidence.
* **Statistical linearisation of the OCV**: the slope is Cov(soc, OCV) / Var(soc) over the current
  SoC uncertainty (3-point Gauss-Hermite), and the variance the line misses is added to R; a
  second pass re-linearises around the updated SoC (iterated posterior linearisation). A wrong
  start near a knee (0.1 when the truth is 0.6) or on an LFP plateau therefore neither overshoots
  nor collapses the covariance; with a small std it is the local ``dOCV/dSoC``.
* Noise is given per unit of time (``*_per_sqrt_h``), so 1 Hz and 0.1 Hz logs behave alike.

Sampling convention (as in ``CellModel`` and the lab logs): a sampled current flows until the next
sample. ``update`` predicts over ``dt_s`` with the previous sample's current and temperature (held
in the state), then corrects with the new voltage, measured while the new current flows;
``dt_s = 0`` (the first sample) only corrects. SoC is clamped to 0..1 and its std capped at
``max_soc_std``. A NaN voltage skips the correction of that cell (sensor dropout); a non-finite
current or temperature is an error. P is propagated entry by entry on its upper triangle (arrays
of the cells' size stay in cache) and is symmetric bit for bit. Same inputs give the same outputs,
bit for bit, and ``EkfState`` round-trips through JSON exactly, so the cloud twin can persist the
filter and resume it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from twin.cell_model import CellModel, CellState, FloatArray
from twin.errors import TwinValidationError

STATE_KIND = "b2l.soc_ekf_state"
STATE_VERSION = 1
SOC, HYSTERESIS, OCV_ERROR, BIAS = "soc", "hysteresis_v", "ocv_error_v", "bias_a"
# 3-point Gauss-Hermite rule for the standard normal (the unscented transform in 1-D)
_GH_NODES = np.array([-math.sqrt(3.0), 0.0, math.sqrt(3.0)])
_GH_WEIGHTS = np.array([1.0 / 6.0, 2.0 / 3.0, 1.0 / 6.0])


@dataclass(frozen=True, slots=True)
class EkfConfig:
    """Noise settings and priors of the SoC filter (defaults tolerate 10-20 mV model mismatch)."""

    voltage_noise_v: float = 0.015
    """Std of the voltage error per sample: sensor noise plus model mismatch."""
    voltage_error_correlation_s: float = 30.0
    """Correlation time of that error; inflates the per-sample variance (see the module doc)."""
    ocv_error_std_v: float = 0.01
    """Std of the slowly varying OCV error (a state; 0: no such state)."""
    ocv_error_correlation_soc: float = 0.3
    """SoC throughput over which that error decorrelates."""
    soc_noise_per_sqrt_h: float = 0.002
    """SoC random walk (capacity and current-gain errors)."""
    rc_noise_v_per_sqrt_s: float = 0.0005
    hysteresis_noise_v_per_sqrt_s: float = 0.0001
    include_bias: bool = True
    """Estimate the current-sensor offset as a state."""
    bias_std_c: float = 0.01
    """Prior std of the current offset, as a fraction of 1C (A per Ah of capacity)."""
    bias_noise_c_per_sqrt_h: float = 0.001
    initial_soc_std: float = 0.3
    iterations: int = 2
    """Gauss-Newton iterations of the correction (iterated EKF): 1 is the plain EKF."""
    min_slope_span_soc: float = 0.005
    """dOCV/dSoC is the secant over +-max(std, this) of the SoC (statistical linearisation)."""
    initial_rc_std_v: float = 0.01
    max_soc_std: float = 0.3

    def __post_init__(self) -> None:
        if not 1 <= self.iterations <= 10:
            raise TwinValidationError(f"EkfConfig.iterations must be 1..10, got {self.iterations}")
        for name in (
            "voltage_noise_v",
            "bias_std_c",
            "initial_soc_std",
            "min_slope_span_soc",
            "ocv_error_correlation_soc",
            "initial_rc_std_v",
            "max_soc_std",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0.0):
                raise TwinValidationError(f"EkfConfig.{name} must be positive, got {value}")
        for name in (
            "voltage_error_correlation_s",
            "ocv_error_std_v",
            "soc_noise_per_sqrt_h",
            "rc_noise_v_per_sqrt_s",
            "hysteresis_noise_v_per_sqrt_s",
            "bias_noise_c_per_sqrt_h",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0.0):
                raise TwinValidationError(f"EkfConfig.{name} must be >= 0, got {value}")


@dataclass(frozen=True, slots=True)
class EkfState:
    """Filter state of many cells: ``x`` (n_states, *cells), ``p`` (n_states, n_states, *cells).

    ``current_a`` and ``temperature_c`` are the last samples (held over the next interval);
    ``voltage_pred_v`` is the voltage the model predicted for the last sample, before correction.
    """

    states: tuple[str, ...]
    x: FloatArray
    p: FloatArray
    current_a: FloatArray
    temperature_c: FloatArray
    voltage_pred_v: FloatArray

    @property
    def soc(self) -> FloatArray:
        """Estimated SoC, 0..1."""
        out: FloatArray = self.x[0]
        return out

    @property
    def soc_std(self) -> FloatArray:
        """Standard deviation of the SoC estimate."""
        out: FloatArray = np.sqrt(self.p[0, 0])
        return out

    @property
    def bias_a(self) -> FloatArray:
        """Estimated current-sensor offset (zeros when the filter has no bias state)."""
        out: FloatArray = (
            self.x[self.states.index(BIAS)] if BIAS in self.states else 0.0 * self.x[0]
        )
        return out

    def to_json_dict(self) -> dict[str, Any]:
        """Plain lists of floats; ``from_json_dict`` restores the arrays bit for bit."""
        return {
            "kind": STATE_KIND,
            "version": STATE_VERSION,
            "states": list(self.states),
            "shape": list(self.x.shape[1:]),
            "x": self.x.ravel().tolist(),
            "p": self.p.ravel().tolist(),
            "current_a": self.current_a.ravel().tolist(),
            "temperature_c": self.temperature_c.ravel().tolist(),
            "voltage_pred_v": self.voltage_pred_v.ravel().tolist(),
        }

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> EkfState:
        """Inverse of ``to_json_dict``; TwinValidationError on a malformed document."""
        try:
            if data["kind"] != STATE_KIND or data["version"] != STATE_VERSION:
                raise TwinValidationError(f"not a {STATE_KIND} version {STATE_VERSION} document")
            states = tuple(str(s) for s in data["states"])
            shape = tuple(int(n) for n in data["shape"])
            n = len(states)
            if n < 1 or states[0] != SOC:
                raise TwinValidationError("the first state must be soc")

            def arr(name: str, full: tuple[int, ...]) -> FloatArray:
                values = np.asarray(data[name], dtype=np.float64)
                if not np.all(np.isfinite(values)):
                    raise TwinValidationError(f"{name} holds NaN or infinity")
                return values.reshape(full)

            return cls(
                states=states,
                x=arr("x", (n, *shape)),
                p=arr("p", (n, n, *shape)),
                current_a=arr("current_a", shape),
                temperature_c=arr("temperature_c", shape),
                voltage_pred_v=arr("voltage_pred_v", shape),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, TwinValidationError):
                raise
            raise TwinValidationError(f"not an EKF state document: {exc}") from exc


class SocEstimator:
    """Kalman filter for SoC on a ``CellModel``; arrays have the cells' shape (e.g. packs x cells).

    ``initial`` (or ``initial_from_voltage``) makes a state, ``update`` advances it by one sample.
    """

    def __init__(self, model: CellModel, config: EkfConfig | None = None) -> None:
        self.model = model
        self.config = config or EkfConfig()
        params = model.params
        self.n_rc = model.n_rc
        self.has_hysteresis = params.hysteresis_v > 0.0
        names = [SOC, *(f"v_rc_{k}_v" for k in range(self.n_rc))]
        if self.has_hysteresis:
            names.append(HYSTERESIS)
        self.has_ocv_error = self.config.ocv_error_std_v > 0.0
        if self.has_ocv_error:
            names.append(OCV_ERROR)
        if self.config.include_bias:
            names.append(BIAS)
        self.states = tuple(names)
        self.n_states = len(names)
        self._i_h = names.index(HYSTERESIS) if self.has_hysteresis else -1
        self._i_e = names.index(OCV_ERROR) if self.has_ocv_error else -1
        self._i_b = names.index(BIAS) if self.config.include_bias else -1
        c = self.config
        q_per_s = [(c.soc_noise_per_sqrt_h / 60.0) ** 2] + [c.rc_noise_v_per_sqrt_s**2] * self.n_rc
        if self.has_hysteresis:
            q_per_s.append(c.hysteresis_noise_v_per_sqrt_s**2)
        if self.has_ocv_error:
            q_per_s.append(0.0)  # added per step, from the SoC throughput
        if self.config.include_bias:
            q_per_s.append((c.bias_noise_c_per_sqrt_h * params.capacity_ah / 60.0) ** 2)
        self._q_per_s = np.array(q_per_s)
        self._diag = np.arange(self.n_states)
        self._upper = [(i, j) for i in range(self.n_states) for j in range(i, self.n_states)]
        self._bias_coupled = frozenset(range(1 + self.n_rc))  # rows of F's bias column != 0
        # tables for the Jacobians (the model's own interpolation is an implementation detail)
        self._soc_grid = np.asarray(params.soc_grid)
        self._r0_table = np.asarray(params.r0_ohm)
        self._rc_tables = [(np.asarray(b.r_ohm), np.asarray(b.tau_s)) for b in params.rc]

    def initial(
        self,
        soc0: ArrayLike,
        temperature_c: ArrayLike = 25.0,
        *,
        soc_std: float | None = None,
        current_a: ArrayLike = 0.0,
    ) -> EkfState:
        """Filter state for cells believed at ``soc0`` (a guess: std ``soc_std``), RC at rest."""
        c = self.config
        soc = np.asarray(soc0, dtype=np.float64)
        if not np.all(np.isfinite(soc)) or np.any((soc < 0.0) | (soc > 1.0)):
            raise TwinValidationError("initial SoC must be within 0..1")
        shape = np.broadcast_shapes(
            soc.shape, np.shape(self.model.capacity_as), np.shape(temperature_c)
        )
        x = np.zeros((self.n_states, *shape))
        x[0] = soc
        std = [c.initial_soc_std if soc_std is None else soc_std]
        std += [c.initial_rc_std_v] * self.n_rc
        if self.has_hysteresis:
            std.append(self.model.params.hysteresis_v)
        if self.has_ocv_error:
            std.append(c.ocv_error_std_v)
        if c.include_bias:
            std.append(c.bias_std_c * self.model.params.capacity_ah)
        if not (math.isfinite(std[0]) and std[0] > 0.0):
            raise TwinValidationError("initial SoC std must be positive")
        p = np.zeros((self.n_states, self.n_states, *shape))
        p[self._diag, self._diag] = (np.array(std) ** 2).reshape(-1, *([1] * len(shape)))
        temperature = self._cells(temperature_c, shape, "temperature_c")
        state = CellState(
            soc=x[0],
            v_rc_v=x[1 : 1 + self.n_rc],
            hysteresis_v=np.zeros(shape),
            temperature_c=temperature,
        )
        current = self._cells(current_a, shape, "current_a")
        return EkfState(
            states=self.states,
            x=x,
            p=p,
            current_a=current,
            temperature_c=temperature,
            voltage_pred_v=self.model.terminal_voltage(state, current),
        )

    def initial_from_voltage(
        self,
        voltage_v: ArrayLike,
        current_a: ArrayLike = 0.0,
        temperature_c: ArrayLike = 25.0,
        *,
        soc_std: float | None = None,
    ) -> EkfState:
        """Filter state with the SoC guessed from a first voltage sample (``soc_from_voltage``)."""
        soc0 = soc_from_voltage(self.model, voltage_v, current_a)
        return self.initial(soc0, temperature_c, soc_std=soc_std, current_a=current_a)

    def update(
        self,
        state: EkfState,
        current_a: ArrayLike,
        voltage_v: ArrayLike,
        temperature_c: ArrayLike,
        dt_s: float,
    ) -> EkfState:
        """Predict over ``dt_s`` with the held current, then correct with the new sample."""
        if state.states != self.states:
            raise TwinValidationError(
                f"the state has rows {state.states}, this filter expects {self.states}"
            )
        shape = state.x.shape[1:]
        current = self._cells(current_a, shape, "current_a")
        temperature = self._cells(temperature_c, shape, "temperature_c")
        try:
            voltage = np.broadcast_to(np.asarray(voltage_v, dtype=np.float64), shape)
        except ValueError:
            raise TwinValidationError(f"voltage_v does not fit the cells' shape {shape}") from None
        if not (math.isfinite(dt_s) and dt_s >= 0.0):
            raise TwinValidationError(f"dt_s must be finite and >= 0, got {dt_s}")
        x, p = (state.x, state.p.copy()) if dt_s == 0.0 else self._predict(state, dt_s)
        return self._correct(x, p, current, voltage, temperature, dt_s)

    # -- internals ------------------------------------------------------------------------------

    def _cells(self, values: ArrayLike, shape: tuple[int, ...], name: str) -> FloatArray:
        arr = np.asarray(values, dtype=np.float64)
        if not np.all(np.isfinite(arr)):
            raise TwinValidationError(f"{name} holds NaN or infinity")
        try:
            return np.broadcast_to(arr, shape).copy()
        except ValueError:
            raise TwinValidationError(f"{name} has shape {arr.shape}, cells are {shape}") from None

    def _cell_state(self, x: FloatArray, temperature_c: FloatArray) -> CellState:
        hysteresis = x[self._i_h] if self.has_hysteresis else np.zeros_like(x[0])
        return CellState(
            soc=x[0],
            v_rc_v=x[1 : 1 + self.n_rc],
            hysteresis_v=hysteresis,
            temperature_c=temperature_c,
        )

    def _true_current(self, x: FloatArray, current_a: FloatArray) -> FloatArray:
        return current_a - x[self._i_b] if self._i_b >= 0 else current_a

    def _predict(self, state: EkfState, dt_s: float) -> tuple[FloatArray, FloatArray]:
        model = self.model
        x = state.x
        current = self._true_current(x, state.current_a)
        nxt = model.step(
            self._cell_state(x, state.temperature_c), current, state.temperature_c, dt_s
        )

        # Jacobian: F = diag(d) + column c at the bias row (c = 0 without a bias state).
        r_factor = model.resistance_factor(state.temperature_c)
        d = np.ones_like(x)
        c = np.zeros_like(x)
        x_new = np.empty_like(x)
        x_new[0] = np.clip(nxt.soc, 0.0, 1.0)
        eta = np.where(current > 0.0, model.params.coulombic_efficiency, 1.0)
        c[0] = -eta * dt_s / model.capacity_as
        for k, (r_table, tau_table) in enumerate(self._rc_tables):
            decay = np.exp(-dt_s / self._interp(x[0], tau_table))
            d[1 + k] = decay
            c[1 + k] = -self._interp(x[0], r_table) * r_factor * (1.0 - decay)
        x_new[1 : 1 + self.n_rc] = nxt.v_rc_v
        if self.has_hysteresis:
            rate = model.params.hysteresis_rate / model.capacity_as
            d[self._i_h] = np.exp(-np.abs(eta * current) * dt_s * rate)
            x_new[self._i_h] = nxt.hysteresis_v
        if self.has_ocv_error:
            e = self._i_e
            phi = np.exp(np.abs(x_new[0] - x[0]) * (-1.0 / self.config.ocv_error_correlation_soc))
            d[e] = phi
        q = [q_i * dt_s for q_i in self._q_per_s]
        if self.has_ocv_error:
            x_new[e] = phi * x[e]
            q[e] = q[e] + self.config.ocv_error_std_v**2 * (1.0 - phi * phi)
        # P' = F P F^T + Q = (d d^T) * P + c v^T + v c^T + Q,  v = d P[bias] + P[bias, bias] c / 2
        # (c = 0 without a bias state), entry by entry on the upper triangle and mirrored: small
        # arrays stay in cache, and P' is symmetric bit for bit.
        p_old = state.p
        p = np.empty_like(p_old)
        b = self._i_b
        if b >= 0:
            x_new[b] = x[b]
            v = d * p_old[b] + (0.5 * p_old[b, b]) * c
        for i, j in self._upper:
            entry = (d[i] * d[j]) * p_old[i, j]
            if b >= 0 and (i in self._bias_coupled or j in self._bias_coupled):
                entry += c[i] * v[j] + v[i] * c[j]
            if i == j:
                entry += q[i]
            p[i, j] = entry
            p[j, i] = entry
        return x_new, p

    def _ocv_statistics(
        self, soc: FloatArray, soc_var: FloatArray, temperature_c: FloatArray
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Mean, slope and residual variance of the OCV over N(soc, soc_var).

        Statistical linearisation by 3-point Gauss-Hermite quadrature: slope = Cov(soc, OCV) /
        Var(soc); the variance the line misses is added to R, so a knee near a wide estimate
        does not make the filter overconfident. A small std gives the local slope.
        """
        std = np.maximum(np.sqrt(soc_var), self.config.min_slope_span_soc)
        nodes = np.clip(soc + std * _GH_NODES.reshape(-1, *([1] * soc.ndim)), 0.0, 1.0)
        ocv = self.model.ocv(nodes, temperature_c)
        mean: FloatArray = np.einsum("j,j...->...", _GH_WEIGHTS, ocv)
        slope: FloatArray = np.einsum("j,j...->...", _GH_WEIGHTS * _GH_NODES, ocv) / std
        spread = np.einsum("j,j...->...", _GH_WEIGHTS, (ocv - mean) ** 2)
        residual_var: FloatArray = np.maximum(spread - (slope * std) ** 2, 0.0)
        return mean, slope, residual_var

    def _interp(self, soc: FloatArray, table: FloatArray) -> FloatArray:
        out: FloatArray = np.interp(soc, self._soc_grid, table)
        return out

    def _correct(
        self,
        x: FloatArray,
        p: FloatArray,
        current_a: FloatArray,
        voltage_v: FloatArray,
        temperature_c: FloatArray,
        dt_s: float,
    ) -> EkfState:
        c, model = self.config, self.model
        inflation = 1.0 + 2.0 * c.voltage_error_correlation_s / dt_s if dt_s > 0.0 else 1.0
        r = c.voltage_noise_v**2 * inflation
        valid = np.isfinite(voltage_v)
        all_valid = bool(np.all(valid))

        # V = OCV(soc) + rest, with rest (R0 i, RC, hysteresis, OCV error, bias) linear in x
        current = self._true_current(x, current_a)
        v_model = model.terminal_voltage(self._cell_state(x, temperature_c), current)
        rest = v_model - model.ocv(x[0], temperature_c)
        if self.has_ocv_error:
            rest = rest + x[self._i_e]
        h = np.ones_like(x)
        if self._i_b >= 0:
            r0 = self._interp(x[0], self._r0_table) * model.resistance_factor(temperature_c)
            h[self._i_b] = -r0
        ph_rest = np.zeros_like(x)  # P H^T without the SoC column, row by row (cache-sized)
        for i in range(self.n_states):
            for j in range(1, self.n_states):
                ph_rest[i] += p[i, j] * h[j]
        # iterated posterior linearisation: re-linearise the OCV around the updated SoC
        soc, soc_var = x[0], p[0, 0]
        for iteration in range(c.iterations):
            mean, slope, linearisation_var = self._ocv_statistics(soc, soc_var, temperature_c)
            if iteration == 0:
                v_pred = mean + rest
            innovation = voltage_v - mean - rest - slope * (x[0] - soc)
            h[0] = slope
            ph = ph_rest + p[:, 0] * slope
            s = np.einsum("i...,i...->...", h, ph) + (r + linearisation_var)
            if not all_valid:  # a missing voltage: no correction for that cell
                innovation = np.where(valid, innovation, 0.0)
                ph = np.where(valid, ph, 0.0)
            gain = ph / s
            soc = np.clip(x[0] + gain[0] * innovation, 0.0, 1.0)
            soc_var = p[0, 0] - gain[0] * ph[0]
        x = x + gain * innovation
        x[0] = soc
        w = ph / np.sqrt(s)
        for i, j in self._upper:  # P -= P H^T H P / S in place (p is ours), symmetric bit for bit
            p[i, j] -= w[i] * w[j]
            p[j, i] = p[i, j]
        # cap the SoC std: scale row and column 0 alike (a congruence keeps P positive)
        var_cap = c.max_soc_std**2
        if np.any(p[0, 0] > var_cap):
            scale = np.sqrt(np.minimum(1.0, var_cap / p[0, 0]))
            p[0, :] *= scale
            p[:, 0] *= scale
        return EkfState(
            states=self.states,
            x=x,
            p=p,
            current_a=current_a,
            temperature_c=temperature_c,
            voltage_pred_v=v_pred,
        )


def soc_from_voltage(
    model: CellModel, voltage_v: ArrayLike, current_a: ArrayLike = 0.0
) -> FloatArray:
    """SoC whose OCV matches ``voltage_v`` minus the ohmic drop (a first guess, best at rest)."""
    params = model.params
    r0 = float(np.median(params.r0_ohm))
    ocv = np.asarray(voltage_v, dtype=np.float64) - r0 * np.asarray(current_a, dtype=np.float64)
    if not np.all(np.isfinite(ocv)):
        raise TwinValidationError("voltage and current must be finite")
    table = np.maximum.accumulate(np.asarray(params.ocv_v))
    out: FloatArray = np.interp(ocv, table, np.asarray(params.soc_grid))
    return out
