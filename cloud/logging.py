"""Structured logs: one JSON object per line on stderr, for every ``cloud`` logger.

A record's message goes in ``msg``; fields given as ``extra={"fields": {...}}`` are merged into
the object, so that log processors can filter on them (``battery_id``, ``route``, ...).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

_HANDLER_NAME = "b2l-cloud"


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line: ``ts``, ``level``, ``logger``, ``msg`` and fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                entry.setdefault(str(key), value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, separators=(",", ":"))


def configure_logging(
    level: str = "INFO", json_lines: bool = True, access_log: bool = True
) -> None:
    """Send ``cloud`` and ``uvicorn`` logs to stderr, as JSON lines or as plain text.

    ``access_log`` False silences the per-request lines of ``cloud.access``. Idempotent:
    calling it again replaces the handler it installed before.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    for name in ("cloud", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if h.get_name() == _HANDLER_NAME]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(level.upper())
        logger.propagate = False
    logging.getLogger("cloud.access").setLevel(logging.NOTSET if access_log else logging.WARNING)
