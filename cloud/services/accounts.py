"""Users, devices, grants and tokens: the persistence side of the security layer.

Every function takes the ``Database`` handle and runs its own transactions, so that a failed
login is counted (committed) even though the login is refused. Time is passed in (``now``).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, select, true, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cloud.db.base import table_of
from cloud.db.changes import note_changed
from cloud.db.engine import Database
from cloud.db.models import BatteryRow
from cloud.db.security_models import AccessGrant, Device, RefreshToken, User
from cloud.errors import AlreadyExistsError, NotFoundError
from cloud.security.context import SecurityContext
from cloud.security.errors import AccountLockedError, AuthenticationError
from cloud.security.lockout import LoginState
from cloud.security.passwords import (
    MAX_PASSWORD_LENGTH,
    check_password_strength,
    hash_password,
    needs_rehash,
    verify_password,
)
from cloud.security.policy import DATA_CATEGORIES, Category, Grant, Principal, Role
from cloud.security.tokens import TokenType, issue_token, verify_token
from cloud.services.audit import record_audit
from twin.base import BATTERY_ID_PATTERN
from twin.errors import TwinValidationError

DEVICE_ID_PREFIX = "dev-"
"""Device ids start with it; user names may not, so a login name is never ambiguous."""
DEVICE_SECRET_BYTES = 32
MAX_NAME_LENGTH = 64
INVALID_LOGIN = "incorrect name or password, or the account is locked or disabled"
_USER_NAME_RE = BATTERY_ID_PATTERN
_DUMMY_HASH_CACHE: dict[int, str] = {}


@dataclass(frozen=True)
class TokenPair:
    """What the token endpoints return."""

    access_token: str
    refresh_token: str
    expires_in_s: int
    principal: Principal


@dataclass(frozen=True)
class NewDevice:
    """A created device with its secret, shown once: only its hash is stored."""

    device_id: str
    battery_id: str
    secret: str


# -- users -----------------------------------------------------------------------------------


def create_user(
    db: Database, ctx: SecurityContext, name: str, role: Role | str, password: str, now: datetime
) -> Principal:
    """Create a user with an argon2id hash of ``password`` (``AlreadyExistsError`` if taken)."""
    role = _parse_role(role)
    if not re.fullmatch(_USER_NAME_RE, name) or name.startswith(DEVICE_ID_PREFIX):
        raise TwinValidationError(
            f"user name {name!r}: 1-64 letters, digits or . _ : -, "
            f"not starting with {DEVICE_ID_PREFIX!r}"
        )
    if role is Role.DEVICE:
        raise TwinValidationError("devices are created with create_device, not as users")
    check_password_strength(password)
    password_hash = hash_password(ctx.hasher, password)
    try:
        with db.write() as session:
            session.add(
                User(
                    name=name,
                    password_hash=password_hash,
                    role=role.value,
                    failed_login_count=0,
                    locked_until=None,
                    created_at=now,
                    disabled=False,
                )
            )
    except IntegrityError:
        raise AlreadyExistsError(f"a user named {name!r} already exists") from None
    return Principal(subject=name, role=role)


def set_user_disabled(db: Database, name: str, disabled: bool) -> None:
    """Disable (or enable again) a user; a disabled user cannot log in or refresh."""
    with db.write() as session:
        result = session.execute(update(User).where(User.name == name).values(disabled=disabled))
        if result.rowcount == 0:  # type: ignore[attr-defined]
            raise NotFoundError(f"no user named {name!r}")


def authenticate_user(
    db: Database, ctx: SecurityContext, name: str, password: str, now: datetime
) -> Principal:
    """The user's principal if ``password`` is right and the account usable.

    Counts failures and locks the account after ``ctx.lockout.max_failures`` of them; while it
    is locked every attempt is refused, the right password included (``AccountLockedError``).
    """
    with db.read() as session:
        row = session.execute(
            select(
                User.user_id,
                User.password_hash,
                User.role,
                User.disabled,
                User.failed_login_count,
                User.locked_until,
            ).where(User.name == name)
        ).one_or_none()
    if row is None:
        verify_password(ctx.hasher, _dummy_hash(ctx), password)  # same work as a real login
        raise AuthenticationError(INVALID_LOGIN)
    user_id, password_hash, role, disabled, failures, locked_until = row
    if ctx.lockout.is_locked(LoginState(failures, locked_until), now):
        raise AccountLockedError(INVALID_LOGIN)
    ok = verify_password(ctx.hasher, password_hash, password)
    with db.write() as session:
        user = session.get(User, user_id, with_for_update=True)
        if user is None:
            raise AuthenticationError(INVALID_LOGIN)
        state = LoginState(user.failed_login_count, user.locked_until)
        if ctx.lockout.is_locked(state, now):
            ok = False  # locked meanwhile by concurrent failures
        if ok:
            after = ctx.lockout.after_success(state)
            if needs_rehash(ctx.hasher, user.password_hash):
                user.password_hash = hash_password(ctx.hasher, password)
        else:
            after = ctx.lockout.after_failure(state, now)
        user.failed_login_count = after.failed_login_count
        user.locked_until = after.locked_until
    if not ok or disabled:
        raise AuthenticationError(INVALID_LOGIN)
    return Principal(subject=name, role=_parse_role(role))


def _dummy_hash(ctx: SecurityContext) -> str:
    key = id(ctx.hasher)
    if key not in _DUMMY_HASH_CACHE:
        _DUMMY_HASH_CACHE[key] = hash_password(ctx.hasher, secrets.token_urlsafe(16))
    return _DUMMY_HASH_CACHE[key]


# -- devices ---------------------------------------------------------------------------------


def create_device(
    db: Database,
    ctx: SecurityContext,
    battery_id: str,
    now: datetime,
    device_id: str | None = None,
) -> NewDevice:
    """New credentials for the edge runtime of ``battery_id``; the secret is returned once."""
    device_id = device_id or DEVICE_ID_PREFIX + secrets.token_hex(8)
    if not device_id.startswith(DEVICE_ID_PREFIX) or len(device_id) > 64:
        raise TwinValidationError(f"a device id starts with {DEVICE_ID_PREFIX!r}, ≤ 64 chars")
    secret = secrets.token_urlsafe(DEVICE_SECRET_BYTES)
    secret_hash = hash_password(ctx.hasher, secret)
    with db.write() as session:
        if not battery_exists(session, battery_id):
            raise NotFoundError(f"no battery {battery_id!r}")
        if session.get(Device, device_id) is not None:
            raise AlreadyExistsError(f"a device {device_id!r} already exists")
        session.add(
            Device(
                device_id=device_id,
                battery_id=battery_id,
                secret_hash=secret_hash,
                created_at=now,
                revoked=False,
            )
        )
    return NewDevice(device_id=device_id, battery_id=battery_id, secret=secret)


def revoke_device(db: Database, device_id: str, now: datetime) -> None:
    """Revoke a device's credentials and its refresh tokens (access tokens end at expiry)."""
    with db.write() as session:
        device = session.get(Device, device_id)
        if device is None:
            raise NotFoundError(f"no device {device_id!r}")
        device.revoked = True
        _revoke_subject_tokens(session, device_id, now)


def authenticate_device(
    db: Database, ctx: SecurityContext, device_id: str, secret: str
) -> Principal:
    """The device's principal if ``secret`` is its secret and it is not revoked."""
    with db.read() as session:
        row = session.execute(
            select(Device.secret_hash, Device.battery_id, Device.revoked).where(
                Device.device_id == device_id
            )
        ).one_or_none()
    if row is None:
        verify_password(ctx.hasher, _dummy_hash(ctx), secret)
        raise AuthenticationError(INVALID_LOGIN)
    secret_hash, battery_id, revoked = row
    if not verify_password(ctx.hasher, secret_hash, secret) or revoked:
        raise AuthenticationError(INVALID_LOGIN)
    return Principal(subject=device_id, role=Role.DEVICE, battery_id=battery_id)


def authenticate(
    db: Database, ctx: SecurityContext, username: str, password: str, now: datetime
) -> Principal:
    """A user by name, or a device by id (``dev-…``) with its secret.

    Absurdly long names or passwords are refused before any hashing work.
    """
    if len(username) > MAX_NAME_LENGTH or len(password) > MAX_PASSWORD_LENGTH:
        raise AuthenticationError(INVALID_LOGIN)
    if username.startswith(DEVICE_ID_PREFIX):
        return authenticate_device(db, ctx, username, password)
    return authenticate_user(db, ctx, username, password, now)


def battery_exists(session: Session, battery_id: str) -> bool:
    """True if the battery is registered."""
    found = session.scalar(select(BatteryRow.battery_id).where(BatteryRow.battery_id == battery_id))
    return found is not None


# -- grants ----------------------------------------------------------------------------------


def grant_access(
    db: Database,
    *,
    user_name: str,
    battery_id: str | None,
    categories: Iterable[Category | str],
    valid_from: datetime,
    valid_until: datetime | None,
    granted_by: str,
    now: datetime,
    actor: Principal | None = None,
) -> int:
    """Give ``user_name`` access to ``battery_id`` (None: all) for ``categories``; the grant id.
    With ``actor``, its ``grant.create`` audit row is written in the same transaction."""
    parsed = sorted({_parse_category(c) for c in categories})
    if not parsed:
        raise TwinValidationError("a grant needs at least one category")
    if valid_until is not None and valid_until <= valid_from:
        raise TwinValidationError("a grant's valid_until must be after its valid_from")
    with db.write() as session:
        user_id = session.scalar(select(User.user_id).where(User.name == user_name))
        if user_id is None:
            raise NotFoundError(f"no user named {user_name!r}")
        if battery_id is not None and not battery_exists(session, battery_id):
            raise NotFoundError(f"no battery {battery_id!r}")
        grant = AccessGrant(
            user_id=user_id,
            battery_id=battery_id,
            categories=[c.value for c in parsed],
            valid_from=valid_from,
            valid_until=valid_until,
            granted_by=granted_by,
            created_at=now,
        )
        session.add(grant)
        session.flush()
        detail = {
            "grant_id": grant.grant_id,
            "user": user_name,
            "categories": [c.value for c in parsed],
        }
        _access_changed(session, actor, "grant.create", battery_id, detail, now)
        return grant.grant_id


def _grant(
    battery_id: str | None,
    categories: Iterable[str],
    valid_from: datetime,
    valid_until: datetime | None,
) -> Grant:
    known = frozenset(Category(c) for c in categories if c in _CATEGORY_VALUES)
    return Grant(battery_id, known, valid_from, valid_until)


_CATEGORY_VALUES = frozenset(c.value for c in DATA_CATEGORIES)


@dataclass(frozen=True)
class AccessFacts:
    """What an access decision on one battery needs from the database."""

    manufacturer: str | None
    owner: str | None
    grants: tuple[Grant, ...]
    """The grants of the user that may cover the battery (none asked: empty)."""


_grants, _users, _batteries = table_of(AccessGrant), table_of(User), table_of(BatteryRow)
_COVERING_GRANTS = (
    select(
        _grants.c.battery_id,
        _grants.c.categories,
        _grants.c.valid_from,
        _grants.c.valid_until,
    )
    .join(_users, _users.c.user_id == _grants.c.user_id)
    .where(
        _users.c.name == bindparam("user_name"),
        (_grants.c.battery_id == bindparam("battery_id")) | _grants.c.battery_id.is_(None),
    )
    .subquery()
)
"""The grants of a user that may cover a battery (its own or every battery's)."""
_PARTIES = select(_batteries.c.manufacturer, _batteries.c.owner).where(
    _batteries.c.battery_id == bindparam("battery_id")
)
_PARTIES_AND_GRANTS = _PARTIES.add_columns(*_COVERING_GRANTS.c).outerjoin(_COVERING_GRANTS, true())
"""Core statements (tables, not mapped classes): no ORM work on the per-request path."""


def access_facts(session: Session, battery_id: str, user_name: str | None) -> AccessFacts:
    """The battery's manufacturer and owner and the grants of ``user_name`` (None: do not
    look) that may cover it, in one query; NotFoundError for an unknown battery."""
    if user_name is None:
        parties = session.execute(_PARTIES, {"battery_id": battery_id}).one_or_none()
        if parties is None:
            raise NotFoundError(f"no battery {battery_id!r}")
        return AccessFacts(parties[0], parties[1], ())
    rows = session.execute(
        _PARTIES_AND_GRANTS, {"battery_id": battery_id, "user_name": user_name}
    ).all()
    if not rows:
        raise NotFoundError(f"no battery {battery_id!r}")
    grants = tuple(
        _grant(grant_battery, categories, valid_from, valid_until)
        for _, _, grant_battery, categories, valid_from, valid_until in rows
        if valid_from is not None  # no grant: the outer join's NULLs
    )
    return AccessFacts(rows[0][0], rows[0][1], grants)


@dataclass(frozen=True)
class GrantRecord:
    """A stored grant, as the admin API lists it."""

    grant_id: int
    user_name: str
    battery_id: str | None
    categories: list[str]
    valid_from: datetime
    valid_until: datetime | None
    granted_by: str
    created_at: datetime


def list_grants(
    db: Database,
    *,
    user_name: str | None = None,
    battery_id: str | None = None,
    grant_id: int | None = None,
    limit: int = 1000,
) -> list[GrantRecord]:
    """Grants by id, filtered by user, by battery (a battery's list includes the grants on
    all batteries) and by id."""
    query = (
        select(AccessGrant, User.name)
        .join(User, User.user_id == AccessGrant.user_id)
        .order_by(AccessGrant.grant_id)
        .limit(max(1, min(limit, 1000)))
    )
    if user_name is not None:
        query = query.where(User.name == user_name)
    if battery_id is not None:
        query = query.where(
            (AccessGrant.battery_id == battery_id) | AccessGrant.battery_id.is_(None)
        )
    if grant_id is not None:
        query = query.where(AccessGrant.grant_id == grant_id)
    with db.read() as session:
        return [
            GrantRecord(
                grant_id=grant.grant_id,
                user_name=name,
                battery_id=grant.battery_id,
                categories=list(grant.categories),
                valid_from=grant.valid_from,
                valid_until=grant.valid_until,
                granted_by=grant.granted_by,
                created_at=grant.created_at,
            )
            for grant, name in session.execute(query)
        ]


def revoke_grant(
    db: Database,
    grant_id: int,
    *,
    battery_id: str | None = None,
    actor: Principal | None = None,
    now: datetime | None = None,
) -> None:
    """Delete a grant; NotFoundError if there is none with this id (on ``battery_id`` alone,
    when given: an owner withdraws only grants on its battery). With ``actor``, its
    ``grant.delete`` audit row is written in the same transaction. Access ends at once: this
    process's caches drop it at the commit, the other processes' when PostgreSQL tells them
    (within milliseconds)."""
    query = delete(AccessGrant).where(AccessGrant.grant_id == grant_id)
    if battery_id is not None:
        query = query.where(AccessGrant.battery_id == battery_id)
    with db.write() as session:
        result = session.execute(query)
        if result.rowcount == 0:  # type: ignore[attr-defined]
            raise NotFoundError(f"no grant {grant_id}")
        _access_changed(session, actor, "grant.delete", battery_id, {"grant_id": grant_id}, now)


def _access_changed(
    session: Session,
    actor: Principal | None,
    action: str,
    battery_id: str | None,
    detail: dict[str, Any],
    now: datetime | None,
) -> None:
    """Note a change of access facts for the read caches and, with ``actor``, audit it, in
    the transaction that makes the change."""
    note_changed(session, access=True)
    if actor is not None:
        record_audit(
            session, actor=actor, action=action, battery_id=battery_id, detail=detail, at=now
        )


def list_devices(
    db: Database, battery_id: str | None = None
) -> Sequence[tuple[str, str, datetime, bool]]:
    """(device_id, battery_id, created_at, revoked) of the devices (of one battery), by id."""
    query = select(Device.device_id, Device.battery_id, Device.created_at, Device.revoked)
    if battery_id is not None:
        query = query.where(Device.battery_id == battery_id)
    with db.read() as session:
        rows = session.execute(query.order_by(Device.device_id))
        return [(d, b, c, r) for d, b, c, r in rows]


# -- tokens ----------------------------------------------------------------------------------


def issue_token_pair(
    db: Database, ctx: SecurityContext, principal: Principal, now: datetime
) -> TokenPair:
    """A new access token and a new (stored) refresh token for ``principal``."""
    with db.write() as session:
        return _issue_pair(session, ctx, principal, now)[0]


def _issue_pair(
    session: Session, ctx: SecurityContext, principal: Principal, now: datetime
) -> tuple[TokenPair, str]:
    """The pair and the id of its refresh token (stored in ``session``)."""
    access, refresh = (
        issue_token(
            ctx.keys,
            subject=principal.subject,
            role=principal.role.value,
            token_type=token_type,
            ttl_s=ttl_s,
            now=now,
            battery_id=principal.battery_id,
        )
        for token_type, ttl_s in (
            (TokenType.ACCESS, ctx.access_token_ttl_s),
            (TokenType.REFRESH, ctx.refresh_token_ttl_s),
        )
    )
    session.execute(  # forget this subject's expired refresh tokens
        delete(RefreshToken).where(
            RefreshToken.subject == principal.subject, RefreshToken.expires_at < now
        )
    )
    session.add(
        RefreshToken(
            token_id=refresh.claims.token_id,
            subject=principal.subject,
            is_device=principal.is_device,
            issued_at=refresh.claims.issued_at,
            expires_at=refresh.claims.expires_at,
            revoked_at=None,
            replaced_by=None,
        )
    )
    pair = TokenPair(
        access_token=access.token,
        refresh_token=refresh.token,
        expires_in_s=int(ctx.access_token_ttl_s),
        principal=principal,
    )
    return pair, refresh.claims.token_id


def refresh_token_pair(
    db: Database, ctx: SecurityContext, refresh_token: str, now: datetime
) -> TokenPair:
    """Rotate a refresh token: the old one is revoked, a new pair is returned.

    A refresh token used twice (stolen, or replayed) revokes every refresh token of its
    subject. The subject's current role and status are read again from the database.
    """
    claims = verify_token(ctx.keys, refresh_token, TokenType.REFRESH, now)
    reused = False
    with db.write() as session:
        stored = session.get(RefreshToken, claims.token_id, with_for_update=True)
        if stored is None or stored.subject != claims.subject:
            raise AuthenticationError("unknown refresh token")
        if stored.revoked_at is not None:
            _revoke_subject_tokens(session, claims.subject, now)
            reused = True
        else:
            principal = _current_principal(session, claims.subject, stored.is_device)
            pair, new_token_id = _issue_pair(session, ctx, principal, now)
            stored.revoked_at = now
            stored.replaced_by = new_token_id
    if reused:
        raise AuthenticationError("refresh token already used; all sessions revoked")
    return pair


def _current_principal(session: Session, subject: str, is_device: bool) -> Principal:
    if is_device:
        device = session.get(Device, subject)
        if device is None or device.revoked:
            raise AuthenticationError("device revoked")
        return Principal(subject=subject, role=Role.DEVICE, battery_id=device.battery_id)
    user = session.scalar(select(User).where(User.name == subject))
    if user is None or user.disabled:
        raise AuthenticationError("user unknown or disabled")
    return Principal(subject=subject, role=_parse_role(user.role))


def _revoke_subject_tokens(session: Session, subject: str, now: datetime) -> None:
    session.execute(
        update(RefreshToken)
        .where(RefreshToken.subject == subject, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )


def list_users(db: Database) -> Sequence[tuple[str, str, bool]]:
    """(name, role, disabled) of every user, by name."""
    with db.read() as session:
        rows = session.execute(select(User.name, User.role, User.disabled).order_by(User.name))
        return [(name, role, disabled) for name, role, disabled in rows]


def _parse_role(role: Role | str) -> Role:
    try:
        return Role(role)
    except ValueError:
        known = ", ".join(r.value for r in Role)
        raise TwinValidationError(f"unknown role {role!r}; known: {known}") from None


def _parse_category(category: Category | str) -> Category:
    try:
        parsed = Category(category)
    except ValueError:
        parsed = None
    if parsed is None or parsed not in DATA_CATEGORIES:
        known = ", ".join(sorted(c.value for c in DATA_CATEGORIES))
        raise TwinValidationError(f"unknown data category {category!r}; known: {known}")
    return parsed
