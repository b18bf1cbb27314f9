"""A battery's analytics summary, computed from what the cloud stores (no model fitting).

- **State of health**: the Pillar 2 SoH (reported by the BMS) averaged per time bucket in the
  database, the latest bucket's mean and minimum, and the fade as a least-squares slope of mean
  SoH against equivalent full cycles (per 1,000 FEC) and against time (per year).
- **Equivalent cycles**: the latest value per cell of the Pillar 2 series (mean and max).
- **Warranty reference**: with diagnostic-sizing parameters, the SoH expected at the current
  cycle count (linear interpolation of ``soh_evolution`` against ``fec_evolution``, Table 1)
  and the margin of the measured SoH over it.
- **Mirror vs edge**: per-cell |SoC of the cloud mirror - SoC the edge estimated| now.
- **Events** by severity and type, and ingested records by kind, in the window.

Every figure is None when the data to compute it is missing; nothing is invented.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict
from sqlalchemy import func, select

from cloud.db.engine import Database
from cloud.db.models import CellPillar2Row, EventRow, IngestedRecordRow, SizingRow, TwinRow
from cloud.services.batteries import get_battery_row
from cloud.services.history import bucket_expression
from cloud.services.mirror import mirror_view
from twin.errors import TwinValidationError
from twin.sizing import DiagnosticSizing
from twin.topology import BatteryTopology

MAX_POINTS = 2000
SECONDS_PER_YEAR = 365.25 * 86_400


class SohPoint(BaseModel):
    """Mean SoH of the cells in one bucket."""

    model_config = ConfigDict(frozen=True)

    bucket_start: datetime
    soh_mean: float
    soh_min: float
    equivalent_cycles_max: float
    rows: int


class SohSummary(BaseModel):
    """SoH trend from the Pillar 2 series."""

    model_config = ConfigDict(frozen=True)

    points: list[SohPoint]
    latest_soh_mean: float | None
    latest_soh_min: float | None
    fade_per_1000_fec: float | None
    """Slope of mean SoH against equivalent full cycles, per 1,000 cycles (negative: fading)."""
    fade_per_year: float | None
    """Slope of mean SoH against time, per year."""


class CycleSummary(BaseModel):
    """Equivalent full cycles, latest value per cell."""

    model_config = ConfigDict(frozen=True)

    cells: int
    mean: float | None
    max: float | None


class WarrantySummary(BaseModel):
    """The measured SoH against the sizing's expected trajectory (Table 1)."""

    model_config = ConfigDict(frozen=True)

    sizing_timestamp: datetime
    soh_at_eol: float
    expected_soh: float | None
    """Expected SoH at the current mean equivalent cycles."""
    margin: float | None
    """Measured mean SoH minus expected (negative: ageing faster than sized)."""


class DivergenceSummary(BaseModel):
    """Cloud mirror SoC against the edge's SoC estimate, now."""

    model_config = ConfigDict(frozen=True)

    compared_cells: int
    max_abs_soc: float | None
    mean_abs_soc: float | None
    diverged: bool
    mirror_timestamp: datetime | None


class AnalyticsSummary(BaseModel):
    """The analytics summary of one battery over ``[start, end)``."""

    model_config = ConfigDict(frozen=True)

    battery_id: str
    start: datetime | None
    end: datetime | None
    bucket_s: int
    n_cells: int
    records_by_kind: dict[str, int]
    first_record_at: datetime | None
    last_record_at: datetime | None
    events_by_severity: dict[str, int]
    events_by_type: dict[str, int]
    alarms: int
    soh: SohSummary
    equivalent_cycles: CycleSummary
    warranty: WarrantySummary | None
    soc_divergence: DivergenceSummary


def _slope(x: list[float], y: list[float]) -> float | None:
    """Least-squares slope of ``y`` against ``x`` (None without two distinct x)."""
    if len(x) < 2 or max(x) - min(x) <= 0.0:
        return None
    xs, ys = np.asarray(x), np.asarray(y)
    dx = xs - xs.mean()
    return float(np.dot(dx, ys - ys.mean()) / np.dot(dx, dx))


def expected_soh(sizing: DiagnosticSizing, fec: float) -> float:
    """SoH the sizing expects after ``fec`` equivalent full cycles (clamped to its table)."""
    fecs = np.asarray(sizing.fec_evolution, dtype=float)
    sohs = np.asarray(sizing.soh_evolution, dtype=float)
    order = np.argsort(fecs, kind="stable")
    return float(np.interp(fec, fecs[order], sohs[order]))


class AnalyticsService:
    """Summaries of stored data (reads only)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def summary(
        self,
        battery_id: str,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        bucket_s: int = 86_400,
    ) -> AnalyticsSummary:
        """The summary over ``[start, end)`` (unbounded where None), SoH per ``bucket_s``."""
        if start is not None and end is not None and end <= start:
            raise TwinValidationError("end must be after start")
        if not 60 <= bucket_s <= 366 * 86_400:
            raise TwinValidationError("bucket_s must be within 60..31622400")
        with self.db.read() as session:
            battery = get_battery_row(session, battery_id)
            n_cells = _n_cells(battery.topology)
            twin = session.get(TwinRow, battery_id)
            reported: dict[str, Any] = dict(twin.reported) if twin is not None else {}
            mirror_state = twin.estimator_state if twin is not None else None

            def window(ts: Any) -> list[Any]:
                clauses = []
                if start is not None:
                    clauses.append(ts >= start)
                if end is not None:
                    clauses.append(ts < end)
                return clauses

            rec = IngestedRecordRow
            records = session.execute(
                select(rec.kind, func.count(), func.min(rec.ts), func.max(rec.ts))
                .where(rec.battery_id == battery_id, *window(rec.ts))
                .group_by(rec.kind)
            ).all()
            ev = EventRow
            by_severity = session.execute(
                select(ev.severity, func.count())
                .where(ev.battery_id == battery_id, *window(ev.ts))
                .group_by(ev.severity)
            ).all()
            by_type = session.execute(
                select(ev.event_type, func.count())
                .where(ev.battery_id == battery_id, *window(ev.ts))
                .group_by(ev.event_type)
                .order_by(func.count().desc(), ev.event_type)
                .limit(100)
            ).all()
            p2 = CellPillar2Row
            bucket = bucket_expression(p2.ts, bucket_s, self.db.dialect).label("bucket")
            points = session.execute(
                select(
                    bucket,
                    func.avg(p2.soh),
                    func.min(p2.soh),
                    func.max(p2.equivalent_cycles),
                    func.count(),
                )
                .where(p2.battery_id == battery_id, *window(p2.ts))
                .group_by(bucket)
                .order_by(bucket.desc())
                .limit(MAX_POINTS)
            ).all()
            sizing_json = session.scalar(
                select(SizingRow.parameters)
                .where(SizingRow.battery_id == battery_id)
                .order_by(SizingRow.ts.desc())
                .limit(1)
            )
        soh = _soh_summary(points)
        cycles = _cycles(reported)
        firsts = [r[2] for r in records if r[2] is not None]
        lasts = [r[3] for r in records if r[3] is not None]
        severities = {str(s): int(n) for s, n in by_severity}
        return AnalyticsSummary(
            battery_id=battery_id,
            start=start,
            end=end,
            bucket_s=bucket_s,
            n_cells=n_cells,
            records_by_kind={str(k): int(n) for k, n, _, _ in records},
            first_record_at=min(firsts) if firsts else None,
            last_record_at=max(lasts) if lasts else None,
            events_by_severity=severities,
            events_by_type={str(t): int(n) for t, n in by_type},
            alarms=severities.get("alarm", 0),
            soh=soh,
            equivalent_cycles=cycles,
            warranty=_warranty(sizing_json, soh, cycles),
            soc_divergence=_divergence(battery_id, reported, mirror_state),
        )


def _n_cells(topology: dict[str, Any]) -> int:
    return BatteryTopology.model_validate(topology).n_cells


def _soh_summary(rows: Sequence[Any]) -> SohSummary:
    points = [
        SohPoint(
            bucket_start=datetime.fromtimestamp(int(b), UTC),
            soh_mean=float(mean),
            soh_min=float(low),
            equivalent_cycles_max=float(fec),
            rows=int(n),
        )
        for b, mean, low, fec, n in reversed(rows)
    ]
    if not points:
        return SohSummary(
            points=[],
            latest_soh_mean=None,
            latest_soh_min=None,
            fade_per_1000_fec=None,
            fade_per_year=None,
        )
    sohs = [p.soh_mean for p in points]
    per_fec = _slope([p.equivalent_cycles_max for p in points], sohs)
    per_s = _slope([p.bucket_start.timestamp() for p in points], sohs)
    return SohSummary(
        points=points,
        latest_soh_mean=points[-1].soh_mean,
        latest_soh_min=points[-1].soh_min,
        fade_per_1000_fec=None if per_fec is None else per_fec * 1000.0,
        fade_per_year=None if per_s is None else per_s * SECONDS_PER_YEAR,
    )


def _numbers(group: Any, key: str) -> dict[str, float]:
    if not isinstance(group, dict):
        return {}
    out = {}
    for cell, values in group.items():
        value = values.get(key) if isinstance(values, dict) else None
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[str(cell)] = float(value)
    return out


def _cycles(reported: dict[str, Any]) -> CycleSummary:
    values = list(_numbers(reported.get("cells"), "equivalent_cycles").values())
    if not values:
        return CycleSummary(cells=0, mean=None, max=None)
    return CycleSummary(cells=len(values), mean=sum(values) / len(values), max=max(values))


def _warranty(
    sizing_json: dict[str, Any] | None, soh: SohSummary, cycles: CycleSummary
) -> WarrantySummary | None:
    if sizing_json is None:
        return None
    sizing = DiagnosticSizing.model_validate(sizing_json)
    expected = None if cycles.mean is None else expected_soh(sizing, cycles.mean)
    margin = (
        None if expected is None or soh.latest_soh_mean is None else soh.latest_soh_mean - expected
    )
    return WarrantySummary(
        sizing_timestamp=sizing.timestamp,
        soh_at_eol=sizing.soh_at_eol,
        expected_soh=expected,
        margin=margin,
    )


def _divergence(
    battery_id: str, reported: dict[str, Any], state: dict[str, Any] | None
) -> DivergenceSummary:
    mirror = mirror_view(battery_id, state)
    edge = _numbers(reported.get("estimates"), "soc")
    gaps = [
        abs(mirror.soc[int(cell)] - soc)
        for cell, soc in edge.items()
        if cell.isdigit() and int(cell) < len(mirror.soc)
    ]
    return DivergenceSummary(
        compared_cells=len(gaps),
        max_abs_soc=max(gaps) if gaps else None,
        mean_abs_soc=sum(gaps) / len(gaps) if gaps else None,
        diverged=mirror.diverged,
        mirror_timestamp=mirror.timestamp,
    )
