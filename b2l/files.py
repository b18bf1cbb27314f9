"""File helpers shared by the commands: read text with a clear error, write atomically."""

from __future__ import annotations

from pathlib import Path

from twin.errors import B2LError


def read_text(path: Path) -> str:
    """The file's UTF-8 text; B2LError (printed as ``b2l: error:``) if it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise B2LError(f"cannot read {path}: {exc}") from None


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, so a reader never sees half of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise B2LError(f"cannot write {path}: {exc}") from None
