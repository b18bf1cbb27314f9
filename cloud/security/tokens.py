"""JSON Web Tokens (PyJWT, HS256) for access and refresh, with key ids for rotation.

A token's header names its key (``kid``); verification looks the key up among the current one
and the previous ones still accepted (``CloudSettings.jwt_previous_keys``), and refuses any
other key id, any algorithm but HS256 (``alg: none`` included), a wrong signature, an expired
token and a token of the wrong type (a refresh token is not an access token).

Claims: ``sub`` (user name or device id), ``role``, ``typ`` (``access`` | ``refresh``),
``iat``, ``nbf``, ``exp`` (seconds since the epoch), ``jti`` (unique id) and, for devices,
``bat`` (the device's battery id).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import jwt

from cloud.security.errors import AuthenticationError
from twin.errors import ConfigError

ALGORITHM = "HS256"
MIN_KEY_LENGTH = 32
LEEWAY_S = 5.0
"""Clock skew tolerated between cloud processes when checking ``exp``, ``nbf`` and ``iat``."""


class TokenType(StrEnum):
    """What a token may be used for."""

    ACCESS = "access"
    REFRESH = "refresh"


VERIFIED_CACHE_SIZE = 4096
"""Tokens whose signature a key ring remembers having checked (then it forgets them all)."""


@dataclass(frozen=True)
class KeyRing:
    """The signing key (``current_kid``) and every key still accepted for verification.

    It remembers the payloads of the last ``VERIFIED_CACHE_SIZE`` tokens whose header and
    signature it verified: a token string is signed once, so checking it again with the same
    keys gives the same answer; the claims that depend on time are checked on every use.
    """

    current_kid: str
    keys: Mapping[str, bytes]
    _verified: dict[str, tuple[str, dict[str, Any]]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.current_kid not in self.keys:
            raise ConfigError(f"the signing key id {self.current_kid!r} has no key")
        for kid, key in self.keys.items():
            if not kid:
                raise ConfigError("a JWT key id must not be empty")
            if len(key) < MIN_KEY_LENGTH:
                raise ConfigError(f"the JWT key {kid!r} is shorter than {MIN_KEY_LENGTH} bytes")

    @classmethod
    def from_secrets(cls, current_kid: str, current: str, previous: Mapping[str, str]) -> KeyRing:
        """A key ring from text secrets; the current key wins over a previous one of its id."""
        keys = {kid: secret.encode() for kid, secret in previous.items()}
        keys[current_kid] = current.encode()
        return cls(current_kid=current_kid, keys=keys)

    def signed_payload(self, token: str) -> tuple[str, dict[str, Any]]:
        """The key id and payload of a token whose header (HS256, a known ``kid``) and
        signature are valid, with the required claims present; ``AuthenticationError``
        otherwise. Do not change the payload: it is remembered."""
        known = self._verified.get(token)
        if known is not None:
            return known
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise AuthenticationError("malformed token") from None
        if header.get("alg") != ALGORITHM:
            raise AuthenticationError(f"token algorithm must be {ALGORITHM}")
        kid = header.get("kid")
        if not isinstance(kid, str) or kid not in self.keys:
            raise AuthenticationError("token signed with an unknown or retired key")
        try:
            payload = jwt.decode(
                token,
                self.keys[kid],
                algorithms=[ALGORITHM],
                options={
                    "require": ["exp", "iat", "sub", "typ", "jti", "role"],
                    "verify_exp": False,  # checked on every use, against the injected clock
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidTokenError as exc:
            raise AuthenticationError(f"invalid token: {exc}") from None
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified.clear()
        self._verified[token] = (kid, payload)
        return kid, payload


@dataclass(frozen=True)
class TokenClaims:
    """The verified content of a token."""

    subject: str
    role: str
    token_type: TokenType
    token_id: str
    issued_at: datetime
    expires_at: datetime
    key_id: str
    battery_id: str | None = None


@dataclass(frozen=True)
class IssuedToken:
    """A freshly signed token and its claims."""

    token: str
    claims: TokenClaims


def issue_token(
    keys: KeyRing,
    *,
    subject: str,
    role: str,
    token_type: TokenType,
    ttl_s: float,
    now: datetime,
    battery_id: str | None = None,
) -> IssuedToken:
    """Sign a token with the current key, valid from ``now`` for ``ttl_s`` seconds."""
    if ttl_s <= 0:
        raise ConfigError("a token lifetime must be positive")
    issued_at = now.astimezone(UTC).replace(microsecond=0)
    expires_at = issued_at + timedelta(seconds=ttl_s)
    claims = TokenClaims(
        subject=subject,
        role=role,
        token_type=token_type,
        token_id=uuid.uuid4().hex,
        issued_at=issued_at,
        expires_at=expires_at,
        key_id=keys.current_kid,
        battery_id=battery_id,
    )
    payload: dict[str, Any] = {
        "sub": subject,
        "role": role,
        "typ": token_type.value,
        "jti": claims.token_id,
        "iat": int(issued_at.timestamp()),
        "nbf": int(issued_at.timestamp()),
        "exp": int(expires_at.timestamp()),
    }
    if battery_id is not None:
        payload["bat"] = battery_id
    token = jwt.encode(
        payload,
        keys.keys[keys.current_kid],
        algorithm=ALGORITHM,
        headers={"kid": keys.current_kid},
    )
    return IssuedToken(token=token, claims=claims)


def verify_token(keys: KeyRing, token: str, expected_type: TokenType, now: datetime) -> TokenClaims:
    """The claims of a valid token of ``expected_type`` at ``now``; ``AuthenticationError``
    otherwise. ``exp``, ``nbf`` and ``iat`` are checked against ``now`` (± ``LEEWAY_S``).
    """
    kid, payload = keys.signed_payload(token)
    now_s = now.timestamp()
    for name in ("exp", "iat"):
        if not isinstance(payload[name], int | float) or isinstance(payload[name], bool):
            raise AuthenticationError(f"invalid token: bad {name!r} claim")
    if now_s >= payload["exp"] + LEEWAY_S:
        raise AuthenticationError("token expired")
    not_before_s = payload.get("nbf", payload["iat"])
    if not isinstance(not_before_s, int | float) or now_s + LEEWAY_S < max(
        not_before_s, payload["iat"]
    ):
        raise AuthenticationError("token not valid yet")
    if payload.get("typ") != expected_type.value:
        article = "an" if expected_type is TokenType.ACCESS else "a"
        raise AuthenticationError(f"not {article} {expected_type.value} token")
    battery_id = payload.get("bat")
    for name in ("sub", "role", "jti"):
        if not isinstance(payload[name], str) or not payload[name]:
            raise AuthenticationError(f"invalid token: bad {name!r} claim")
    if battery_id is not None and not isinstance(battery_id, str):
        raise AuthenticationError("invalid token: bad 'bat' claim")
    return TokenClaims(
        subject=payload["sub"],
        role=payload["role"],
        token_type=expected_type,
        token_id=payload["jti"],
        issued_at=datetime.fromtimestamp(payload["iat"], UTC),
        expires_at=datetime.fromtimestamp(payload["exp"], UTC),
        key_id=kid,
        battery_id=battery_id,
    )
