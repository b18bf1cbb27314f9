"""BMS links: what the edge reads from the battery management system and sends to it.

A link is picked by name from the settings (``open_link``), like a python-can interface:
``can`` (Pillar 2, python-can + the project's DBC) or ``serial`` (Pillar 1, pyserial + the
serial frame codec). Backends are imported lazily. The shared work lives in ``BmsLink``:

* ``poll(timeout_s)`` reads what arrived (waiting at most ``timeout_s``), decodes it, and returns
  ``LinkEvent`` items: ``Sample`` (one measurement snapshot of every cell), ``BmsStatus``,
  ``EisRowEvent``, ``EisDoneEvent``. It also retransmits unacknowledged commands and fails those
  out of retries. It never raises on bad bytes or frames: they are counted in ``counters``.
* commands return a ``BmsRequest`` that ``poll`` resolves when the BMS acknowledges it (or
  gives up). A command the BMS's protocol does not have resolves at once as ``unsupported``.

Links are not thread-safe: one thread polls and commands a link.
"""

from __future__ import annotations

import logging
import math
import secrets
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import numpy as np
from numpy.typing import NDArray

from edge_runtime.clock import SYSTEM_CLOCK, Clock

if TYPE_CHECKING:
    from edge_runtime.config import LinkSettings

__all__ = [
    "BmsLink",
    "BmsRequest",
    "BmsStatus",
    "EisDoneEvent",
    "EisRowEvent",
    "LinkCounters",
    "LinkEvent",
    "Sample",
    "open_link",
    "random_sequence_start",
]

FloatArray: TypeAlias = NDArray[np.float64]
log = logging.getLogger("edge_runtime.links")


@dataclass(frozen=True, slots=True, eq=False)
class Sample:
    """One measurement snapshot of the battery, as the BMS reported it.

    Arrays are indexed like ``cell_ids`` (the cells received; a lost frame leaves a cell out).
    ``current_a`` is the current of each measured cell (positive when charging). Values a pillar
    does not report are NaN (``soh`` and ``equivalent_cycles`` on Pillar 1, ``sot`` and
    ``phase`` on Pillar 2).
    """

    pillar: Literal[1, 2]
    time_s: float
    """Wall clock (epoch seconds) when the snapshot was complete."""
    cell_ids: NDArray[np.int64]
    voltage_v: FloatArray
    temperature_c: FloatArray
    current_a: FloatArray
    soc: FloatArray
    sos: FloatArray
    soh: FloatArray
    equivalent_cycles: FloatArray
    sot: FloatArray
    phase: FloatArray
    pack_voltage_v: float | None = None
    pack_current_a: float | None = None
    bms_state: str | None = None
    faults: frozenset[str] = frozenset()
    complete: bool = True
    """Every cell of the BMS is in the snapshot."""

    @property
    def n_cells(self) -> int:
        """Cells in the snapshot."""
        return int(self.cell_ids.size)


@dataclass(frozen=True, slots=True)
class BmsStatus:
    """What the BMS says about itself (CAN ``BMS_Info``, serial ``STATUS``)."""

    time_s: float
    reporting_period_ms: int
    cell_count: int
    firmware_version: tuple[int, int, int]
    faults: frozenset[str] = frozenset()
    ecm_parameter_version: int | None = None
    rebooted: bool = False
    """The BMS restarted since the previous status (RAM settings are back to defaults)."""


@dataclass(frozen=True, slots=True)
class EisRowEvent:
    """One point of an EIS sweep (Pillar 1)."""

    time_s: float
    event_number: int
    row_index: int
    cell_id: int
    frequency_hz: float
    amplitude_ohm: float
    phase_deg: float
    current_offset_a: float
    v_start_v: float
    v_end_v: float
    temperature_c: float


@dataclass(frozen=True, slots=True)
class EisDoneEvent:
    """End of an EIS sweep (Pillar 1): ``status`` ok, aborted or error."""

    time_s: float
    event_number: int
    status: str
    n_rows: int


LinkEvent: TypeAlias = Sample | BmsStatus | EisRowEvent | EisDoneEvent


@dataclass
class LinkCounters:
    """Health counters of a link (reported in the status file)."""

    frames: int = 0
    """Frames that decoded."""
    bad_frames: int = 0
    """Frames (or serial byte runs) that failed to decode."""
    bytes_read: int = 0
    ignored_frames: int = 0
    """Valid frames that are not for the edge (our own commands echoed, unknown ids)."""
    lost_frames: int = 0
    """Gaps in the BMS's sequence or alive counter."""
    samples: int = 0
    incomplete_samples: int = 0
    bms_reboots: int = 0
    commands_sent: int = 0
    commands_ok: int = 0
    commands_failed: int = 0
    retransmissions: int = 0
    io_errors: int = 0
    reconnects: int = 0
    last_frame_time_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return asdict(self)


@dataclass(eq=False)
class BmsRequest:
    """A command sent to the BMS; ``poll`` sets ``done`` when its acknowledgement came."""

    description: str
    done: bool = False
    ok: bool = False
    result: str = "pending"
    """``ok``, ``rejected``, ``invalid``, ``busy``, ``unsupported`` or ``no_ack``."""
    reason: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def resolve(self, result: str, reason: str | None = None) -> None:
        """Mark the request answered (once; later answers are ignored)."""
        if self.done:
            return
        self.done = True
        self.ok = result == "ok"
        self.result = result
        self.reason = reason if reason is not None or self.ok else result


class BmsLink(ABC):
    """Base of the BMS links: counters, clock, request bookkeeping (see the module docstring)."""

    pillar: Literal[1, 2]
    kind: str

    def __init__(
        self,
        *,
        cell_count: int,
        clock: Clock = SYSTEM_CLOCK,
        command_timeout_s: float = 0.25,
        command_retries: int = 3,
        sample_timeout_s: float = 0.5,
        reconnect_s: float = 2.0,
    ) -> None:
        self.cell_count = cell_count
        self.clock = clock
        self.command_timeout_s = command_timeout_s
        self.command_retries = command_retries
        self.sample_timeout_s = sample_timeout_s
        self.reconnect_s = reconnect_s
        """Wait between attempts to (re)open the bus or port."""
        self._next_open_s = -math.inf
        self.counters = LinkCounters()
        self.bms_reporting_period_ms: int | None = None
        """The BMS's reporting period as it last said (None: not heard yet)."""
        self.bms_ecm_parameter_version: int | None = None
        self._closed = False
        self._bad_since_warning = 0
        self._last_warning_s = -math.inf

    def note_bad(self, what: str) -> None:
        """Count one frame (or byte run) that failed to decode; warn at most once a minute."""
        self.counters.bad_frames += 1
        self._bad_since_warning += 1
        log.debug("%s link: bad input: %s", self.kind, what)
        now = self.clock.monotonic_s()
        if now - self._last_warning_s >= 60.0:
            log.warning(
                "%s link: %d bad frame(s) since the last warning, latest: %s",
                self.kind,
                self._bad_since_warning,
                what,
                extra={"bad_frames_total": self.counters.bad_frames},
            )
            self._bad_since_warning = 0
            self._last_warning_s = now

    def _open_due(self) -> bool:
        """The reconnect wait is over: the backend may try to open its bus or port."""
        return self.clock.monotonic_s() >= self._next_open_s

    def _open_failed(self, what: str, exc: BaseException) -> None:
        """Count an I/O error and wait ``reconnect_s`` before the next open."""
        self.counters.io_errors += 1
        self._next_open_s = self.clock.monotonic_s() + self.reconnect_s
        log.warning("%s (retry in %.0f s): %s", what, self.reconnect_s, exc)

    @property
    @abstractmethod
    def connected(self) -> bool:
        """The bus or port is open (it may still be silent: see ``counters.last_frame_time_s``)."""

    # ---------------------------------------------------------------- reading

    def poll(self, timeout_s: float = 0.0) -> list[LinkEvent]:
        """Read and decode what arrives within ``timeout_s``; retransmit or fail old commands."""
        if self._closed:
            return []
        events = self._receive(max(0.0, timeout_s))
        self._service(events)
        return events

    @abstractmethod
    def _receive(self, timeout_s: float) -> list[LinkEvent]:
        """Backend: read, decode, count; never raise on bad input."""

    @abstractmethod
    def _service(self, events: list[LinkEvent]) -> None:
        """Backend: timeouts (incomplete samples, command retries) after a read."""

    # ---------------------------------------------------------------- commands

    def set_reporting_period(self, period_ms: int) -> BmsRequest:
        """Ask the BMS to report every ``period_ms``."""
        return self.unsupported(f"set reporting period {period_ms} ms")

    def start_eis(
        self,
        event_number: int,
        cell_id: int,
        f_start_hz: float,
        f_stop_hz: float,
        points_per_decade: int,
        amplitude_a: float,
    ) -> BmsRequest:
        """Start an EIS sweep on one cell (Pillar 1 only)."""
        return self.unsupported(f"EIS on cell {cell_id}")

    def update_ecm(
        self,
        parameter_version: int,
        cell_ids: Sequence[int] | None,
        r0_ohm: float,
        rc_pairs: Sequence[tuple[float, float]],
    ) -> BmsRequest:
        """Send equivalent-circuit parameters (None: every cell) to the BMS (Pillar 1 only)."""
        return self.unsupported(f"ECM parameters version {parameter_version}")

    def request_balancing(self, mode: str, cells: Sequence[int] = ()) -> BmsRequest:
        """Set the balancing mode (off, auto, manual with ``cells`` bleeding)."""
        return self.unsupported(f"balancing {mode}")

    def reset(self, kind: str) -> BmsRequest:
        """Reset the BMS (``soft``) or clear its latched faults (``clear_faults``)."""
        return self.unsupported(f"reset {kind}")

    def unsupported(self, description: str) -> BmsRequest:
        """A request resolved at once: the protocol has no such command."""
        request = BmsRequest(description)
        request.resolve("unsupported", f"the {self.kind} BMS protocol has no such command")
        return request

    # ---------------------------------------------------------------- life cycle

    def close(self) -> None:
        """Release the bus or port (idempotent)."""
        self._closed = True

    def __enter__(self) -> BmsLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def random_sequence_start(modulus: int) -> int:
    """A random first sequence number in ``0..modulus-1`` (see the links' docstrings)."""
    return secrets.randbelow(modulus)


def nan_array(n: int) -> FloatArray:
    """``n`` NaNs."""
    return np.full(n, math.nan)


def open_link(settings: LinkSettings, *, cell_count: int, clock: Clock = SYSTEM_CLOCK) -> BmsLink:
    """The link named by ``settings.kind`` (backends imported here, lazily)."""
    if settings.kind == "can":
        from edge_runtime.links.can_link import CanLink

        return CanLink.from_settings(settings, cell_count=cell_count, clock=clock)
    from edge_runtime.links.serial_link import SerialLink

    return SerialLink.from_settings(settings, cell_count=cell_count, clock=clock)
