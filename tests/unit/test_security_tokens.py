"""JWT access and refresh tokens: signing, verification, refusals and key rotation."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import jwt
import pytest

from cloud.security.errors import AuthenticationError
from cloud.security.tokens import KeyRing, TokenType, issue_token, verify_token
from twin.errors import ConfigError

pytestmark = pytest.mark.unit

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
KEY_1 = "k" * 40
KEY_2 = "m" * 40


def _ring(current: str = "k1", previous: dict[str, str] | None = None) -> KeyRing:
    secrets = {"k1": KEY_1, "k2": KEY_2}
    return KeyRing.from_secrets(current, secrets[current], previous or {})


def _issue(ring: KeyRing, token_type: TokenType = TokenType.ACCESS, ttl_s: float = 60.0) -> str:
    return issue_token(
        ring, subject="alice", role="operator", token_type=token_type, ttl_s=ttl_s, now=NOW
    ).token


def _b64(data: dict[str, object]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_round_trip_carries_the_claims() -> None:
    ring = _ring()
    issued = issue_token(
        ring,
        subject="dev-1",
        role="device",
        token_type=TokenType.ACCESS,
        ttl_s=60,
        now=NOW,
        battery_id="B-1",
    )
    claims = verify_token(ring, issued.token, TokenType.ACCESS, NOW + timedelta(seconds=30))
    assert claims == issued.claims
    assert (claims.subject, claims.role, claims.battery_id, claims.key_id) == (
        "dev-1",
        "device",
        "B-1",
        "k1",
    )
    assert jwt.get_unverified_header(issued.token)["kid"] == "k1"


def test_expired_token_refused() -> None:
    token = _issue(_ring(), ttl_s=60)
    with pytest.raises(AuthenticationError, match="expired"):
        verify_token(_ring(), token, TokenType.ACCESS, NOW + timedelta(seconds=120))


def test_token_from_the_future_refused() -> None:
    token = _issue(_ring())
    with pytest.raises(AuthenticationError, match="not valid yet"):
        verify_token(_ring(), token, TokenType.ACCESS, NOW - timedelta(hours=1))


def test_wrong_signature_refused() -> None:
    token = jwt.encode(
        {"sub": "a", "role": "admin", "typ": "access", "jti": "x", "iat": 1, "exp": 2**40},
        "w" * 40,
        algorithm="HS256",
        headers={"kid": "k1"},
    )
    with pytest.raises(AuthenticationError, match="invalid token"):
        verify_token(_ring(), token, TokenType.ACCESS, NOW)


def test_tampered_payload_refused() -> None:
    header, _payload, signature = _issue(_ring()).split(".")
    forged = _b64(
        {"sub": "alice", "role": "admin", "typ": "access", "jti": "x", "iat": 1, "exp": 2**40}
    )
    with pytest.raises(AuthenticationError):
        verify_token(_ring(), f"{header}.{forged}.{signature}", TokenType.ACCESS, NOW)


@pytest.mark.parametrize("alg", ["none", "None", "HS512", "RS256"])
def test_other_algorithms_refused(alg: str) -> None:
    payload = {"sub": "a", "role": "admin", "typ": "access", "jti": "x", "iat": 1, "exp": 2**40}
    token = f"{_b64({'alg': alg, 'typ': 'JWT', 'kid': 'k1'})}.{_b64(payload)}."
    with pytest.raises(AuthenticationError, match="algorithm"):
        verify_token(_ring(), token, TokenType.ACCESS, NOW)


def test_refresh_token_is_not_an_access_token() -> None:
    refresh = _issue(_ring(), TokenType.REFRESH)
    with pytest.raises(AuthenticationError, match="not an access token"):
        verify_token(_ring(), refresh, TokenType.ACCESS, NOW)
    access = _issue(_ring(), TokenType.ACCESS)
    with pytest.raises(AuthenticationError, match="not a refresh token"):
        verify_token(_ring(), access, TokenType.REFRESH, NOW)


def test_unknown_kid_refused() -> None:
    token = _issue(_ring("k2"))
    with pytest.raises(AuthenticationError, match="unknown or retired key"):
        verify_token(_ring("k1"), token, TokenType.ACCESS, NOW)


def test_missing_claims_refused() -> None:
    token = jwt.encode({"sub": "a", "exp": 2**40}, KEY_1, algorithm="HS256", headers={"kid": "k1"})
    with pytest.raises(AuthenticationError):
        verify_token(_ring(), token, TokenType.ACCESS, NOW)


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "a.b", "é.é.é"])
def test_garbage_refused(token: str) -> None:
    with pytest.raises(AuthenticationError):
        verify_token(_ring(), token, TokenType.ACCESS, NOW)


def test_key_rotation() -> None:
    old_token = _issue(_ring("k1"))
    rotated = _ring("k2", previous={"k1": KEY_1})
    assert verify_token(rotated, old_token, TokenType.ACCESS, NOW).key_id == "k1"
    new_token = _issue(rotated)
    assert jwt.get_unverified_header(new_token)["kid"] == "k2"
    retired = _ring("k2")
    with pytest.raises(AuthenticationError, match="unknown or retired key"):
        verify_token(retired, old_token, TokenType.ACCESS, NOW)
    assert verify_token(retired, new_token, TokenType.ACCESS, NOW).subject == "alice"


def test_short_keys_refused() -> None:
    with pytest.raises(ConfigError, match="shorter"):
        KeyRing.from_secrets("k1", "short", {})
    with pytest.raises(ConfigError, match="shorter"):
        KeyRing.from_secrets("k1", KEY_1, {"k0": "short"})


def test_a_remembered_signature_is_still_checked_for_time_and_type() -> None:
    ring = _ring()
    token = _issue(ring, ttl_s=60)
    assert verify_token(ring, token, TokenType.ACCESS, NOW).subject == "alice"
    assert token in ring._verified  # remembered after one check
    with pytest.raises(AuthenticationError, match="expired"):
        verify_token(ring, token, TokenType.ACCESS, NOW + timedelta(seconds=120))
    with pytest.raises(AuthenticationError, match="not a refresh token"):
        verify_token(ring, token, TokenType.REFRESH, NOW)


def test_refused_tokens_are_not_remembered_and_rings_do_not_share() -> None:
    old = _ring("k1")
    token = _issue(old)
    verify_token(old, token, TokenType.ACCESS, NOW)
    head, payload, signature = token.split(".")
    forged = f"{head}.{payload}.{signature[:-2]}AA"
    with pytest.raises(AuthenticationError):
        verify_token(old, forged, TokenType.ACCESS, NOW)
    assert forged not in old._verified
    rotated = _ring("k2")  # k1 retired: its tokens are refused, whatever ``old`` remembers
    with pytest.raises(AuthenticationError, match="unknown or retired"):
        verify_token(rotated, token, TokenType.ACCESS, NOW)


def test_the_remembered_signatures_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("cloud.security.tokens.VERIFIED_CACHE_SIZE", 3)
    ring = _ring()
    tokens = [
        issue_token(ring, subject=f"u{i}", role="operator", token_type=TokenType.ACCESS,
                    ttl_s=60, now=NOW).token
        for i in range(7)
    ]  # fmt: skip
    for token in tokens:
        assert verify_token(ring, token, TokenType.ACCESS, NOW).subject.startswith("u")
        assert len(ring._verified) <= 3
    assert tokens[-1] in ring._verified
