"""Lockout after repeated failed logins: N failures in a row lock the account for T seconds.

Pure rules over the two persisted fields of a user (``failed_login_count``, ``locked_until``);
``cloud.services.users`` stores them. While locked, every attempt is refused, even with the
right password, and does not extend the lock. A successful login resets the count.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class LoginState:
    """What is persisted per user."""

    failed_login_count: int = 0
    locked_until: datetime | None = None


@dataclass(frozen=True)
class LockoutPolicy:
    """``max_failures`` consecutive failures lock an account for ``lockout_s`` seconds."""

    max_failures: int = 5
    lockout_s: float = 900.0

    def __post_init__(self) -> None:
        if self.max_failures < 1 or self.lockout_s <= 0:
            raise ValueError("lockout needs max_failures >= 1 and lockout_s > 0")

    def is_locked(self, state: LoginState, now: datetime) -> bool:
        """True while the lock of ``state`` lasts."""
        return state.locked_until is not None and now < state.locked_until

    def after_failure(self, state: LoginState, now: datetime) -> LoginState:
        """The state after one more failed attempt (a lock starts at the N-th)."""
        if self.is_locked(state, now):
            return state
        count = state.failed_login_count + 1
        if count >= self.max_failures:
            return LoginState(0, now + timedelta(seconds=self.lockout_s))
        return LoginState(count, None)

    def after_success(self, state: LoginState) -> LoginState:
        """The state after a successful login."""
        return LoginState(0, None)
