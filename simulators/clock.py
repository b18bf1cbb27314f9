"""Simulation clocks: virtual time as fast as possible (CI) or paced by the wall clock (benches).

``realtime_factor`` is the wall-clock time one simulated second takes (SimPy's ``factor``):
``1.0`` is real time, ``0.01`` runs 100 times faster than real time, ``None`` runs as fast as the
computer can. The real-time environment is not strict: a step that falls behind the wall clock
is processed late rather than raising.
"""

from __future__ import annotations

import math

import simpy
import simpy.rt

__all__ = ["make_environment"]


def make_environment(
    realtime_factor: float | None = None, *, initial_time_s: float = 0.0
) -> simpy.Environment:
    """A SimPy environment: virtual time (``None``) or wall-clock paced at ``realtime_factor``."""
    if not math.isfinite(initial_time_s):
        raise ValueError(f"initial_time_s must be finite, got {initial_time_s}")
    if realtime_factor is None:
        return simpy.Environment(initial_time=initial_time_s)
    if not (math.isfinite(realtime_factor) and realtime_factor > 0.0):
        raise ValueError(f"realtime_factor must be positive and finite, got {realtime_factor}")
    return simpy.rt.RealtimeEnvironment(
        initial_time=initial_time_s, factor=realtime_factor, strict=False
    )
