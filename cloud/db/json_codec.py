"""JSON of the database's JSON columns: orjson where it can, the standard library where not.

Ingestion decodes, merges and encodes each twin it touches in every group commit (a 16-cell
twin's reported side and per-leaf stamps are about 12 kB of JSON): the standard library spends
about 130 µs per twin on the decoding and encoding, orjson about 30 µs. orjson refuses a few
values the standard library takes (keys that are not strings, integers beyond 64 bits, numbers
like ``1e400``): those fall back to the standard library, so what is stored and read is the same.
One difference remains: orjson writes NaN and infinities as ``null`` where the standard library
writes ``NaN``, which PostgreSQL refuses; b2l's models refuse them before they get here.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["dumps", "dumps_text", "loads"]


def dumps(value: Any) -> bytes:
    """``value`` as JSON bytes (the psycopg driver takes bytes)."""
    try:
        return orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError: non-string keys, integers beyond 64 bits
        return json.dumps(value).encode()


def dumps_text(value: Any) -> str:
    """``value`` as JSON text (SQLite stores JSON as text)."""
    return dumps(value).decode()


def loads(data: str | bytes | bytearray | memoryview) -> Any:
    """The value of a JSON text."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:  # numbers orjson refuses: integers beyond 64 bits, 1e400
        return json.loads(bytes(data) if isinstance(data, memoryview) else data)
