"""Mosquitto credentials for devices: one password-file line per battery.

SPEC section 5: on MQTT a device logs in with its battery id as user name and its device secret
as password, and the broker's ACL (``docker/mosquitto/acl``: ``pattern write b2l/v1/%u/...``)
lets it reach only its own topics. The cloud keeps only an argon2 hash of the secret, so the
broker's line is made when the secret is, in Mosquitto's own format (``$7$``: PBKDF2-SHA512,
what ``mosquitto_passwd`` writes), and merged into the broker's password file: the broker
reloads it on SIGHUP.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
from pathlib import Path

from twin.errors import ConfigError

__all__ = ["ITERATIONS", "merge_password_file", "password_hash", "verify_password"]

ITERATIONS = 101
"""PBKDF2 rounds of ``mosquitto_passwd`` (Mosquitto 2)."""
SALT_BYTES = 12
_USER = re.compile(r"^[^:\s#]{1,128}$")


def password_hash(password: str, *, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """``$7$<iterations>$<salt>$<hash>`` of ``password``, as Mosquitto 2 stores it."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a ``$7$`` line's hash (what the broker checks)."""
    parts = stored.split("$")
    if len(parts) != 5 or parts[1] != "7":
        return False
    try:
        iterations, salt = int(parts[2]), base64.b64decode(parts[3], validate=True)
    except ValueError:
        return False
    return secrets.compare_digest(password_hash(password, salt=salt, iterations=iterations), stored)


def merge_password_file(path: Path, user: str, password: str) -> None:
    """Set ``user``'s line in the Mosquitto password file ``path`` (created if missing; other
    lines kept), written through a temporary file so the broker never reads half of it."""
    if not _USER.fullmatch(user):
        raise ConfigError(f"{user!r} cannot be a Mosquitto user name")
    try:
        old = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    except OSError as exc:
        raise ConfigError(f"cannot read the Mosquitto password file {path}: {exc}") from None
    lines = [line for line in old if line.strip() and line.split(":", 1)[0] != user]
    lines.append(f"{user}:{password_hash(password)}")
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(f"cannot write the Mosquitto password file {path}: {exc}") from None
