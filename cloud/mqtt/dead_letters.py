"""Dead letters: uplink MQTT messages the consumer set aside, as bounded JSON lines on disk.

The cloud schema has no dead-letter table, and a malformed message may name no registered
battery (the events table needs one), so set-aside messages go to ``dead-letters.jsonl`` in a
folder: one JSON object per line with ``received_at``, ``topic``, ``reason`` (the outcome:
malformed, mismatch, unknown_battery, rejected, poison), ``detail`` and the payload (``payload``
as text when it is UTF-8, else ``payload_b64``; cut to ``MAX_PAYLOAD_BYTES``). When the file
passes half of ``max_bytes`` it becomes ``dead-letters.1.jsonl`` (the older one is dropped), so
the two files stay under ``max_bytes``. Each line is flushed and fsynced before the message is
acknowledged. A write error is logged and the message acknowledged all the same: a full disk
must not stop ingestion of the good messages (the counter still counts it).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = ["FILE_NAME", "MAX_PAYLOAD_BYTES", "DeadLetterStore"]

log = logging.getLogger("cloud.mqtt.dead_letters")

FILE_NAME = "dead-letters.jsonl"
ROTATED_NAME = "dead-letters.1.jsonl"
MAX_PAYLOAD_BYTES = 256 * 1024
MAX_DETAIL_CHARS = 2_000


class DeadLetterStore:
    """Appends dead letters to ``directory/dead-letters.jsonl`` (None: log only)."""

    def __init__(self, directory: str | os.PathLike[str] | None, max_bytes: int) -> None:
        self.directory = None if directory is None else Path(directory)
        self.max_bytes = max_bytes
        self.written = 0
        self.failed = 0
        self._lock = threading.Lock()

    @property
    def path(self) -> Path | None:
        """The current file (None when dead letters are only logged)."""
        return None if self.directory is None else self.directory / FILE_NAME

    def put(
        self, *, topic: str, payload: bytes, reason: str, detail: str, received_at: datetime
    ) -> None:
        """Record one set-aside message (never raises)."""
        log.warning(
            "MQTT message on %s set aside (%s): %s",
            topic,
            reason,
            detail[:300],
            extra={"fields": {"topic": topic, "reason": reason}},
        )
        if self.directory is None:
            return
        entry: dict[str, Any] = {
            "received_at": received_at.isoformat(),
            "topic": topic,
            "reason": reason,
            "detail": detail[:MAX_DETAIL_CHARS],
            "payload_bytes": len(payload),
        }
        kept = payload[:MAX_PAYLOAD_BYTES]
        try:
            entry["payload"] = kept.decode("utf-8")
        except UnicodeDecodeError:
            entry["payload_b64"] = base64.b64encode(kept).decode("ascii")
        line = (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            try:
                self._append(line)
                self.written += 1
            except OSError as exc:
                self.failed += 1
                log.error("cannot write a dead letter to %s: %s", self.directory, exc)

    def _append(self, line: bytes) -> None:
        assert self.directory is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / FILE_NAME
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size and size + len(line) > self.max_bytes // 2:
            os.replace(path, self.directory / ROTATED_NAME)
        with open(path, "ab") as out:
            out.write(line)
            out.flush()
            os.fsync(out.fileno())

    def read(self) -> list[dict[str, Any]]:
        """Every stored dead letter, oldest first (for tests and operators)."""
        if self.directory is None:
            return []
        entries: list[dict[str, Any]] = []
        for name in (ROTATED_NAME, FILE_NAME):
            path = self.directory / name
            if path.exists():
                for raw in path.read_text(encoding="utf-8").splitlines():
                    if raw.strip():
                        entries.append(json.loads(raw))
        return entries
