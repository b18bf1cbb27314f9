"""The security configuration of one cloud process, built once from its settings."""

from __future__ import annotations

from dataclasses import dataclass

from argon2 import PasswordHasher

from cloud.security.lockout import LockoutPolicy
from cloud.security.passwords import make_hasher
from cloud.security.rate_limit import TokenBucketLimiter
from cloud.security.tokens import KeyRing
from cloud.settings import CloudSettings


@dataclass(frozen=True)
class SecurityContext:
    """Keys, hasher, lockout policy, token lifetimes and the ingestion rate limiter."""

    keys: KeyRing
    hasher: PasswordHasher
    lockout: LockoutPolicy
    access_token_ttl_s: float
    refresh_token_ttl_s: float
    ingest_limiter: TokenBucketLimiter | None
    """None: no ingestion rate limit."""

    @classmethod
    def from_settings(cls, settings: CloudSettings) -> SecurityContext:
        """Everything from ``settings`` (``ConfigError`` on unusable keys)."""
        keys = KeyRing.from_secrets(
            settings.jwt_key_id,
            settings.jwt_secret.get_secret_value(),
            {kid: key.get_secret_value() for kid, key in settings.jwt_previous_keys.items()},
        )
        limiter = (
            TokenBucketLimiter(settings.ingest_rate_rows_per_s, settings.ingest_burst_rows)
            if settings.ingest_rate_rows_per_s > 0
            else None
        )
        return cls(
            keys=keys,
            hasher=make_hasher(
                settings.argon2_time_cost, settings.argon2_memory_kib, settings.argon2_parallelism
            ),
            lockout=LockoutPolicy(settings.login_max_failures, settings.login_lockout_s),
            access_token_ttl_s=settings.access_token_ttl_s,
            refresh_token_ttl_s=settings.refresh_token_ttl_s,
            ingest_limiter=limiter,
        )
