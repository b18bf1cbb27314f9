"""Password and device-secret hashing with argon2id (argon2-cffi).

Only hashes are stored. ``needs_rehash`` tells when a stored hash was made with weaker
parameters than the current ones, so that a successful login can upgrade it.
"""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from twin.errors import TwinValidationError

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024


def make_hasher(
    time_cost: int = 3, memory_cost_kib: int = 65_536, parallelism: int = 4
) -> PasswordHasher:
    """An argon2id hasher (defaults: RFC 9106 low-memory profile, as argon2-cffi's)."""
    return PasswordHasher(time_cost=time_cost, memory_cost=memory_cost_kib, parallelism=parallelism)


def hash_password(hasher: PasswordHasher, password: str) -> str:
    """The argon2id hash (PHC string, salt included) of ``password``."""
    return hasher.hash(password)


def verify_password(hasher: PasswordHasher, password_hash: str, password: str) -> bool:
    """True if ``password`` matches ``password_hash``; False on mismatch or a corrupt hash."""
    try:
        return hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(hasher: PasswordHasher, password_hash: str) -> bool:
    """True if the hash was made with other parameters than ``hasher``'s."""
    try:
        return hasher.check_needs_rehash(password_hash)
    except InvalidHashError:
        return True


def check_password_strength(password: str) -> None:
    """Refuse passwords that are too short or absurdly long (``TwinValidationError``)."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise TwinValidationError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise TwinValidationError(f"a password has at most {MAX_PASSWORD_LENGTH} characters")
