"""Errors of the security layer, all under ``twin.errors.B2LError``.

    B2LError
     +-- SecurityError
          +-- AuthenticationError      no, bad, expired or revoked credentials (HTTP 401)
          |    +-- AccountLockedError  too many failed logins; refused until the lock ends
          +-- PermissionDeniedError    authenticated, but not allowed (HTTP 403)
          +-- RateLimitedError         over the per-device rate (HTTP 429, Retry-After)

Users, devices or batteries that do not exist raise ``cloud.errors.NotFoundError``; a taken
user name or device id ``cloud.errors.AlreadyExistsError``.
"""

from __future__ import annotations

from twin.errors import B2LError


class SecurityError(B2LError):
    """Root of the security layer's errors."""


class AuthenticationError(SecurityError):
    """Credentials are missing, malformed, wrong, expired or revoked."""


class AccountLockedError(AuthenticationError):
    """The account is locked after repeated failed logins."""


class PermissionDeniedError(SecurityError):
    """The principal is known but may not do this."""


class RateLimitedError(SecurityError):
    """The principal sent more than its rate allows; retry after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
