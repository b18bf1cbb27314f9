"""argon2 password hashing, the lockout rules and the ingestion token buckets."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from cloud.security.lockout import LockoutPolicy, LoginState
from cloud.security.passwords import (
    check_password_strength,
    hash_password,
    make_hasher,
    needs_rehash,
    verify_password,
)
from cloud.security.rate_limit import TokenBucketLimiter
from cloud.settings import CloudSettings
from twin.errors import ConfigError, TwinValidationError

pytestmark = pytest.mark.unit

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def test_argon2_hashes() -> None:
    hasher = make_hasher(time_cost=1, memory_cost_kib=1024, parallelism=1)
    stored = hash_password(hasher, "correct horse")
    assert stored.startswith("$argon2id$") and "correct horse" not in stored
    assert stored != hash_password(hasher, "correct horse")  # salted
    assert verify_password(hasher, stored, "correct horse")
    assert not verify_password(hasher, stored, "wrong horse")
    assert not verify_password(hasher, "not a hash", "correct horse")
    assert not needs_rehash(hasher, stored)
    stronger = make_hasher(time_cost=2, memory_cost_kib=1024, parallelism=1)
    assert needs_rehash(stronger, stored)
    assert verify_password(stronger, stored, "correct horse")  # parameters are in the hash


def test_password_strength() -> None:
    check_password_strength("long enough")
    with pytest.raises(TwinValidationError, match="at least"):
        check_password_strength("short")


def test_lockout_after_n_failures() -> None:
    policy = LockoutPolicy(max_failures=3, lockout_s=60)
    state = LoginState()
    for _ in range(2):
        state = policy.after_failure(state, NOW)
        assert not policy.is_locked(state, NOW)
    state = policy.after_failure(state, NOW)
    assert policy.is_locked(state, NOW + timedelta(seconds=59))
    assert policy.after_failure(state, NOW + timedelta(seconds=30)) == state  # no extension
    assert not policy.is_locked(state, NOW + timedelta(seconds=60))
    assert policy.after_success(LoginState(2, None)) == LoginState()


def test_token_bucket() -> None:
    limiter = TokenBucketLimiter(rate_per_s=10.0, burst=20.0)
    assert limiter.try_acquire("a", 20, now_s=0.0) == 0.0
    assert limiter.try_acquire("a", 5, now_s=0.0) == pytest.approx(0.5)
    assert limiter.try_acquire("b", 5, now_s=0.0) == 0.0  # per key
    assert limiter.try_acquire("a", 5, now_s=0.5) == 0.0  # refilled
    assert limiter.try_acquire("a", 1, now_s=0.5) > 0.0
    assert math.isinf(limiter.try_acquire("a", 21, now_s=100.0))  # never fits


def test_token_bucket_forgets_idle_keys() -> None:
    limiter = TokenBucketLimiter(rate_per_s=1.0, burst=1.0, max_keys=2)
    for i, key in enumerate("abc"):
        assert limiter.try_acquire(key, 1, now_s=float(i * 10)) == 0.0
    assert len(limiter._buckets) <= 2


def test_production_refuses_default_and_short_secrets() -> None:
    CloudSettings(mode="development").check_secrets()
    with pytest.raises(ConfigError, match="B2L_JWT_SECRET"):
        CloudSettings(mode="production").check_secrets()
    with pytest.raises(ConfigError, match="B2L_JWT_SECRET"):
        CloudSettings(mode="production", jwt_secret="x" * 10).check_secrets()  # type: ignore[arg-type]
    good = "s" * 40
    CloudSettings(mode="production", jwt_secret=good).check_secrets()  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="PREVIOUS"):
        CloudSettings(
            mode="production",
            jwt_secret=good,  # type: ignore[arg-type]
            jwt_previous_keys={"k0": "short"},  # type: ignore[dict-item]
        ).check_secrets()
