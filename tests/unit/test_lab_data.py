"""Cell logs: CSV text to checked arrays, and clear errors for bad files."""

from __future__ import annotations

import pytest

from twin.errors import TwinValidationError
from twin.lab_data import cell_log, parse_csv

pytestmark = pytest.mark.unit

GOOD = "time_s,current_a,voltage_v,temperature_c,soc_true\n0,0,3.7,25,0.5\n1,-2,3.65,25,0.49\n"


def log(text: str):  # type: ignore[no-untyped-def]
    return cell_log(parse_csv(text, source="log.csv"), source="log.csv")


def test_a_good_log_parses_with_extra_columns() -> None:
    parsed = log(GOOD)
    assert len(parsed) == 2
    assert list(parsed.current_a) == [0.0, -2.0]
    assert list(parsed.extra) == ["soc_true"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty file"),
        ("time_s,current_a,voltage_v\n0,0,3.7\n1,0,3.6\n", "missing column.*temperature_c"),
        (GOOD.replace("3.65", "nan"), "voltage_v is NaN or infinite at row 2"),
        (GOOD.replace("1,-2", "0,-2"), "time_s must increase strictly"),
        (GOOD.replace("3.7,", "3700,").replace("3.65", "3650"), "millivolts"),
        (GOOD.replace(",25,", ",298.15,"), "kelvin"),
        (GOOD.replace("3.65", "three"), "line 3: 'three' is not a number"),
        (GOOD + "2,1\n", "line 4: 2 values"),
        ("time_s,current_a,voltage_v,temperature_c\n0,0,3.7,25\n", "at least 2 rows"),
        (GOOD.replace("-2", "-20000"), "milliamps"),
    ],
)
def test_bad_logs_say_what_and_where(text: str, message: str) -> None:
    with pytest.raises(TwinValidationError, match=message):
        log(text)
