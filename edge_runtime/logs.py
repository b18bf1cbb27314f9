"""Structured logs of the edge runtime: text for a terminal, JSON lines for journald/Loki.

``configure(settings)`` sets the root logger once. In JSON, every record is one object with
``time`` (UTC ISO 8601), ``level``, ``logger``, ``message`` and the ``extra={...}`` fields the
code passes (``seq``, ``dropped_records``, ...).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from edge_runtime.config import LoggingSettings

__all__ = ["JsonFormatter", "configure"]

_STANDARD = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = (
                    value if isinstance(value, str | int | float | bool | None) else str(value)
                )
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure(settings: LoggingSettings, stream: Any = None) -> None:
    """Route the runtime's logs to ``stream`` (stderr) at the configured level and format."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if settings.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.level)
    for noisy in ("httpx", "httpcore", "can"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
