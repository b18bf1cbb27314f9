"""The status file: a small JSON document next to the outbox, rewritten every few seconds.

``b2l edge status`` reads it (``read_status``); monitoring can too. It holds the last sample
time, the queue depth, the last acknowledgement, the link's and the uplink's counters. Written
atomically (temporary file + rename), so a reader never sees half of it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from twin.errors import B2LError

__all__ = ["read_status", "write_status"]


def write_status(path: Path, status: dict[str, Any]) -> None:
    """Replace ``path`` with ``status`` as JSON (atomically); errors are the caller's to log."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(status, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


def read_status(path: Path) -> dict[str, Any]:
    """The last status written; B2LError if there is none (the runtime never ran there)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise B2LError(
            f"no status at {path}: has `b2l edge run` started with this config?"
        ) from None
    except (OSError, ValueError) as exc:
        raise B2LError(f"cannot read the status {path}: {exc}") from None
    if not isinstance(data, dict):
        raise B2LError(f"{path} is not a status document")
    return data
