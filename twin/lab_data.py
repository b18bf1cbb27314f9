"""Cell logs from laboratory tests and field data: CSV text to checked arrays (pure).

A log has the columns ``time_s,current_a,voltage_v,temperature_c`` (current positive when
charging) and may have more (``soc_true`` in reference data). Callers read the file; this module
parses the text and refuses what cannot be a cell log, saying which row and column is wrong.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from twin.cell_model import FloatArray
from twin.errors import TwinValidationError

REQUIRED_COLUMNS = ("time_s", "current_a", "voltage_v", "temperature_c")
MAX_ROWS = 20_000_000


@dataclass(frozen=True, slots=True)
class CellLog:
    """Equal-length arrays of one cell's log; ``extra`` holds further numeric columns."""

    time_s: FloatArray
    current_a: FloatArray
    voltage_v: FloatArray
    temperature_c: FloatArray
    extra: dict[str, FloatArray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.time_s)


def parse_csv(text: str, source: str = "input") -> dict[str, FloatArray]:
    """Numeric columns of a CSV text with a header row; errors name the row and column."""
    reader = csv.reader(io.StringIO(text))
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        raise TwinValidationError(f"{source}: empty file, expected a header row") from None
    if len(set(header)) != len(header) or "" in header:
        raise TwinValidationError(f"{source}: header has empty or repeated column names")
    rows: list[list[float]] = []
    for line_no, row in enumerate(reader, start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise TwinValidationError(
                f"{source} line {line_no}: {len(row)} values, the header has {len(header)}"
            )
        try:
            rows.append([float(cell) for cell in row])
        except ValueError:
            bad = next(c for c in row if not _is_float(c))
            raise TwinValidationError(f"{source} line {line_no}: {bad!r} is not a number") from None
        if len(rows) > MAX_ROWS:
            raise TwinValidationError(f"{source}: more than {MAX_ROWS} rows")
    table = np.array(rows, dtype=np.float64).reshape(-1, len(header))
    return {name: table[:, k].copy() for k, name in enumerate(header)}


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def cell_log(columns: Mapping[str, Sequence[float] | FloatArray], source: str = "input") -> CellLog:
    """Check columns and build a CellLog; TwinValidationError says what is wrong and where."""
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise TwinValidationError(
            f"{source}: missing column(s) {', '.join(missing)}; "
            f"expected {','.join(REQUIRED_COLUMNS)} (current positive when charging)"
        )
    arrays = {name: np.asarray(values, dtype=np.float64) for name, values in columns.items()}
    n = len(arrays["time_s"])
    if n < 2:
        raise TwinValidationError(f"{source}: needs at least 2 rows, has {n}")
    for name, values in arrays.items():
        if values.shape != (n,):
            raise TwinValidationError(f"{source}: column {name} has {values.shape} values, not {n}")
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise TwinValidationError(f"{source}: {name} is NaN or infinite at row {bad[0] + 1}")
    steps = np.diff(arrays["time_s"])
    if np.any(steps <= 0):
        row = int(np.flatnonzero(steps <= 0)[0]) + 2
        raise TwinValidationError(f"{source}: time_s must increase strictly (row {row})")
    _check_units(arrays, source)
    extra = {k: v for k, v in arrays.items() if k not in REQUIRED_COLUMNS}
    return CellLog(
        arrays["time_s"], arrays["current_a"], arrays["voltage_v"], arrays["temperature_c"], extra
    )


def _check_units(arrays: Mapping[str, FloatArray], source: str) -> None:
    voltage, temperature, current = (
        arrays["voltage_v"],
        arrays["temperature_c"],
        arrays["current_a"],
    )
    v_max = float(np.max(np.abs(voltage)))
    if v_max > 10.0:
        hint = " (it looks like millivolts)" if v_max > 1000.0 else ""
        raise TwinValidationError(
            f"{source}: voltage_v reaches {v_max:g}, not a cell voltage in volts{hint}"
        )
    if np.min(voltage) < 0.0:
        raise TwinValidationError(f"{source}: voltage_v is negative")
    t_max, t_min = float(np.max(temperature)), float(np.min(temperature))
    if t_max > 150.0 or t_min < -60.0:
        hint = " (it looks like kelvin)" if 200.0 < t_min < 400.0 else ""
        raise TwinValidationError(
            f"{source}: temperature_c spans {t_min:g}..{t_max:g}, not degrees Celsius{hint}"
        )
    if float(np.max(np.abs(current))) > 10_000.0:
        raise TwinValidationError(f"{source}: current_a beyond 10 kA (it looks like milliamps)")
    if math.isclose(float(np.ptp(voltage)), 0.0):
        raise TwinValidationError(f"{source}: voltage_v never changes")
