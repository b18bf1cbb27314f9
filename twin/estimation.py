"""State-of-charge estimation: an extended Kalman filter on the ECM, vectorised over cells.

State per cell (``states`` names the rows)::

    x = [soc, v_rc_0 .. v_rc_{k-1}, (hysteresis_v), (bias_a)]

``hysteresis_v`` is a state when the parameter set has hysteresis; ``bias_a`` (the offset of the
current sensor, ``i_measured = i_true + bias``) when ``EkfConfig.include_bias`` (default). The
process and measurement functions are ``CellModel.step`` and ``CellModel.terminal_voltage`` fed
with the bias-corrected current; their Jacobians are::

    F = diag(1, a_0 .. a_{k-1}, b, 1) + column(bias) = [-eta dt / Q, -R_k (1 - a_k), 0, 0]
    H = [dOCV/dSoC, 1 .. 1, 1, -R0]

Sampling convention (as in ``CellModel`` and the lab logs): the current sampled at one instant
flows until the next sample. ``update`` first predicts over ``dt_s`` with the *previous* sample's
current and temperature (held in the state), then corrects with the new voltage, measured while
the new current flows. ``dt_s = 0`` (the first sample) corrects only.

Noise is specified per unit of time, so the filter behaves the same at 1 Hz or 0.1 Hz:

* process noise: random walks of SoC, RC voltages, hysteresis and bias (``*_per_sqrt_h`` /
  ``*_per_sqrt_s``), added as ``q**2 * dt`` to the diagonal;
* measurement noise: ``voltage_noise_v`` is the error of model + sensor, which is mostly model
  mismatch (10-20 mV against an electrochemical cell) and therefore correlated in time. Treating
  it as white noise at every sample would let a 1 Hz log "average it away" and make the SoC
  overconfident, worst on a flat LFP plateau. So the variance per sample is inflated to
  ``voltage_noise_v**2 * (1 + 2 * voltage_error_correlation_s / dt)``: the information per hour
  is that of independent samples every ``2 * correlation`` seconds, whatever the sampling rate.

Current-sensor offset: the bias is a state (random walk, prior ``bias_std_c`` of 1C). A constant
offset of 0.5 % of 1C drifts a coulomb counter by 12 % a day; the augmented filter estimates it
wherever the OCV has slope, and where it has none (LFP plateau) its prior uncertainty feeds the
SoC covariance, which then grows linearly in time, as the truth does. A SoC random walk alone
would either lag behind the drift (small noise) or throw away good coulomb counting (large noise).

SoC is clamped to 0..1 after each step; its standard deviation is capped at ``max_soc_std``
(rows and columns of P scaled together, so P stays positive semi-definite). A non-finite voltage
skips the correction of that cell (a sensor dropout); a non-finite current or temperature is an
error. Same inputs give the same outputs, bit for bit; ``EkfState`` round-trips through JSON
exactly, so the cloud twin can persist the filter and resume it.
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
# 5-point Gauss-Hermite rule for the standard normal (nodes, weights)
_GH_NODES = np.array([-2.8569700138728056, -1.3556261799742659, 0.0, 1.3556261799742659,
                      2.8569700138728056])  # fmt: skip
_GH_WEIGHTS = np.array([0.011257411327720691, 0.22207592200561266, 0.5333333333333333,
                        0.22207592200561266, 0.011257411327720691])  # fmt: skip


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
    iterations: int = 3
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
    """Extended Kalman filter for SoC on a ``CellModel``; every array has the cells' shape."""

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
        x, p = (state.x, state.p) if dt_s == 0.0 else self._predict(state, dt_s)
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
            x_new[e] = phi * x[e]
        # P' = F P F^T + Q, written so that P' is symmetric bit for bit:
        # F P F^T = (d d^T) * P + c v^T + v c^T,  v = d * P[bias] + P[bias, bias] / 2 * c
        p = (d[:, None] * d[None, :]) * state.p
        if self._i_b >= 0:
            b = self._i_b
            x_new[b] = x[b]
            v = d * state.p[b] + (0.5 * state.p[b, b]) * c
            a = c[:, None] * v[None, :]
            p += a + a.swapaxes(0, 1)
        p[self._diag, self._diag] += self._q_per_s.reshape(-1, *([1] * (p.ndim - 2))) * dt_s
        if self.has_ocv_error:
            p[e, e] += self.config.ocv_error_std_v**2 * (1.0 - phi * phi)
        return x_new, p

    def _measure(
        self,
        x: FloatArray,
        soc_var: FloatArray,
        current_a: FloatArray,
        temperature_c: FloatArray,
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Linearised measurement at ``x``: mean voltage, H, and the linearisation variance.

        The OCV is linearised statistically over N(soc, soc_var) by Gauss-Hermite quadrature
        (slope = Cov(soc, OCV) / Var(soc)); what the line misses is added to R. The rest of the
        model (R0 i, RC, hysteresis, OCV error, bias) is linear at ``x``.
        """
        model = self.model
        current = self._true_current(x, current_a)
        ocv_mean = model.ocv(x[0], temperature_c)
        v: FloatArray = model.terminal_voltage(self._cell_state(x, temperature_c), current)
        std = np.maximum(np.sqrt(soc_var), self.config.min_slope_span_soc)
        nodes = np.clip(x[0] + std * _GH_NODES.reshape(-1, *([1] * x[0].ndim)), 0.0, 1.0)
        ocv = model.ocv(nodes, temperature_c)
        mean = np.einsum("j,j...->...", _GH_WEIGHTS, ocv)
        slope = np.einsum("j,j...->...", _GH_WEIGHTS * _GH_NODES, ocv) / std
        spread = np.einsum("j,j...->...", _GH_WEIGHTS, (ocv - mean) ** 2)
        residual_var = np.maximum(spread - (slope * std) ** 2, 0.0)
        v = v - ocv_mean + mean
        if self.has_ocv_error:
            v = v + x[self._i_e]
        h = np.ones_like(x)
        h[0] = slope
        if self._i_b >= 0:
            r0 = self._interp(x[0], self._r0_table) * model.resistance_factor(temperature_c)
            h[self._i_b] = -r0
        return v, h, residual_var

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
        c = self.config
        inflation = 1.0 + 2.0 * c.voltage_error_correlation_s / dt_s if dt_s > 0.0 else 1.0
        r = c.voltage_noise_v**2 * inflation
        valid = np.isfinite(voltage_v)
        all_valid = bool(np.all(valid))
        prior, xi, soc_var = x, x, p[0, 0]
        for iteration in range(c.iterations):  # iterated posterior linearisation
            v_i, h, linearisation_var = self._measure(xi, soc_var, current_a, temperature_c)
            if iteration == 0:
                v_pred = v_i
                innovation = voltage_v - v_i
            else:
                innovation = voltage_v - v_i - np.einsum("i...,i...->...", h, prior - xi)
            ph = np.einsum("ij...,j...->i...", p, h)  # P H^T
            s = np.einsum("i...,i...->...", h, ph) + (r + linearisation_var)
            if not all_valid:  # a missing voltage: no correction for that cell
                innovation = np.where(valid, innovation, 0.0)
                ph = np.where(valid, ph, 0.0)
            xi = prior + ph * (innovation / s)
            xi[0] = np.clip(xi[0], 0.0, 1.0)
            soc_var = p[0, 0] - ph[0] * ph[0] / s
        x = xi
        w = ph / np.sqrt(s)
        p = p - w[:, None] * w[None, :]  # P - P H^T H P / S, symmetric bit for bit
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
