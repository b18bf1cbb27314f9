"""Dependencies of the routes: the database, the clock, the caller and its access.

How a resource route declares its auth::

    from cloud.api.deps import Access, DatabaseDep, require
    from cloud.security.policy import Action, Category

    @router.get("/batteries/{battery_id}/telemetry", responses=BATTERY_RESPONSES)
    def read_telemetry(
        access: Annotated[Access, Depends(require(Category.TELEMETRY, Action.READ))],
        db: DatabaseDep,
    ) -> ...:
        return history.query(db, access.battery_id, ...)

``require`` takes the ``battery_id`` path parameter, answers 401 without a valid access token,
404 for a battery that does not exist, 403 when the policy says no (``cloud.security.policy``),
and writes the audit row of a restricted read (committed before the route runs). Routes without
a battery (``/api/v1/batteries``) take ``CurrentPrincipal``. A hot read route may call
``authorize`` (what ``require`` runs) itself, in the session of its own read, to save a session
and a threadpool hop per request (``GET .../twin`` does).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy.orm import Session

from cloud.clock import utc_now
from cloud.db.engine import Database
from cloud.metrics import CloudMetrics
from cloud.security.context import SecurityContext
from cloud.security.errors import AuthenticationError, PermissionDeniedError, RateLimitedError
from cloud.security.policy import (
    RESTRICTED_CATEGORIES,
    Action,
    Category,
    Grant,
    Principal,
    Role,
    decide,
    needs_audit,
    passport_tier,
)
from cloud.security.tokens import TokenType, verify_token
from cloud.services.accounts import AccessFacts, access_facts
from cloud.services.audit import AuditFields, AuditWriter, audit_now
from cloud.services.ingestion import IngestionService
from cloud.services.read_cache import ReadCache
from cloud.settings import CloudSettings
from twin.base import BATTERY_ID_PATTERN
from twin.passport import AccessTier

TOKEN_URL = "/api/v1/auth/token"


@dataclass
class AppState:
    """What one application holds; stored as ``app.state.b2l``."""

    settings: CloudSettings
    db: Database
    security: SecurityContext
    metrics: CloudMetrics
    clock: Callable[[], datetime] = utc_now
    monotonic_s: Callable[[], float] = time.monotonic
    extras: dict[str, object] = field(default_factory=dict)
    """Room for services that live as long as the app (an MQTT consumer...)."""
    read_cache: ReadCache | None = None
    """Access facts and twins of this process (PostgreSQL, while the app runs)."""
    audit_writer: AuditWriter | None = None
    """Group commit of the audit rows of cached reads (with ``read_cache``)."""


async def get_state(request: Request) -> AppState:
    """The application's ``AppState``."""
    state: AppState = request.app.state.b2l
    return state


StateDep = Annotated[AppState, Depends(get_state)]


async def get_database(state: StateDep) -> Database:
    """The database handle (``read()`` / ``write()`` sessions)."""
    return state.db


DatabaseDep = Annotated[Database, Depends(get_database)]


async def get_settings(state: StateDep) -> CloudSettings:
    """The process settings."""
    return state.settings


SettingsDep = Annotated[CloudSettings, Depends(get_settings)]


async def get_metrics(state: StateDep) -> CloudMetrics:
    """The Prometheus metrics (ingestion counts rows and rejects here)."""
    return state.metrics


MetricsDep = Annotated[CloudMetrics, Depends(get_metrics)]


async def get_now(state: StateDep) -> datetime:
    """Now, from the application's clock (tests inject theirs)."""
    return state.clock()


NowDep = Annotated[datetime, Depends(get_now)]

_INGESTION_KEY = "ingestion"
_ingestion_lock = threading.Lock()


async def get_ingestion(state: StateDep) -> IngestionService:
    """The process's one ``IngestionService`` (``ingestion_of``)."""
    return ingestion_of(state)


def ingestion_of(state: AppState) -> IngestionService:
    """The process's one ``IngestionService`` (it caches topologies and cell models), made at
    first use and kept in ``state.extras["ingestion"]``."""
    service = state.extras.get(_INGESTION_KEY)
    if isinstance(service, IngestionService):
        return service
    with _ingestion_lock:
        service = state.extras.get(_INGESTION_KEY)
        if not isinstance(service, IngestionService):
            service = IngestionService(state.db, state.settings)
            state.extras[_INGESTION_KEY] = service
        return service


IngestionDep = Annotated[IngestionService, Depends(get_ingestion)]

bearer_token = OAuth2PasswordBearer(tokenUrl=TOKEN_URL, auto_error=False)
"""The ``Authorization: Bearer`` token, or None (declares the OAuth2 scheme in OpenAPI)."""


async def current_principal(
    state: StateDep, token: Annotated[str | None, Depends(bearer_token)]
) -> Principal:
    """The caller, from a valid access token; 401 (``AuthenticationError``) otherwise."""
    if not token:
        state.metrics.auth_failures.labels(reason="missing_token").inc()
        raise AuthenticationError("not authenticated: send Authorization: Bearer <access token>")
    try:
        claims = verify_token(state.security.keys, token, TokenType.ACCESS, state.clock())
        role = Role(claims.role)
    except (AuthenticationError, ValueError) as exc:
        state.metrics.auth_failures.labels(reason="invalid_token").inc()
        if isinstance(exc, AuthenticationError):
            raise
        raise AuthenticationError("invalid token: unknown role") from None
    if role is Role.DEVICE and not claims.battery_id:
        raise AuthenticationError("invalid token: a device token names its battery")
    return Principal(
        subject=claims.subject,
        role=role,
        battery_id=claims.battery_id if role is Role.DEVICE else None,
    )


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def require_role(*roles: Role) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency letting only ``roles`` (and admins) through; 403 for the others."""
    allowed = {Role.ADMIN, *roles}

    async def dependency(principal: CurrentPrincipal) -> Principal:
        if principal.role not in allowed:
            raise PermissionDeniedError(f"role {principal.role.value} may not do this")
        return principal

    return dependency


@dataclass(frozen=True)
class Access:
    """What ``require`` establishes: who, which battery, what, and on what grounds."""

    principal: Principal
    battery_id: str
    category: Category
    action: Action
    now: datetime
    grants: tuple[Grant, ...] = ()
    manufacturer: str | None = None
    """The user name of the battery's manufacturer account, if any."""
    owner: str | None = None
    """The user name of the battery's owner, if any."""

    @property
    def passport_tier(self) -> AccessTier:
        """The highest passport tier the caller reads for this battery."""
        return passport_tier(
            self.principal, self.battery_id, self.now, self.grants, self.manufacturer, self.owner
        )


BatteryIdPath = Annotated[
    str,
    Path(pattern=BATTERY_ID_PATTERN, description="The battery's globally unique id"),
]


_TOKEN_ONLY = AccessFacts(manufacturer=None, owner=None, grants=())


def cached_access_facts(
    state: AppState, principal: Principal, battery_id: str
) -> AccessFacts | None:
    """The caller's access facts on a battery without reading the database: from the token
    alone for a device on its own battery (its rights follow from its token), else from the
    process's read cache; None when they must be read (``access_facts_of``)."""
    if principal.is_device and principal.battery_id == battery_id:
        return _TOKEN_ONLY
    cache = state.read_cache
    return None if cache is None else cache.access_facts(battery_id, _grants_of(principal))


def _grants_of(principal: Principal) -> str | None:
    """Whose grants matter: a user's own; admins and devices need none."""
    return principal.subject if principal.role not in (Role.ADMIN, Role.DEVICE) else None


def access_facts_of(
    state: AppState, session: Session, principal: Principal, battery_id: str
) -> AccessFacts:
    """``cached_access_facts``, else read through ``session`` (and cached): NotFoundError for
    an unknown battery."""
    facts = cached_access_facts(state, principal, battery_id)
    if facts is not None:
        return facts
    cache, user_name = state.read_cache, _grants_of(principal)
    if cache is None:
        return access_facts(session, battery_id, user_name)
    stamp = cache.stamp(battery_id)
    facts = access_facts(session, battery_id, user_name)
    cache.put_access_facts(stamp, battery_id, user_name, facts)
    return facts


@dataclass(frozen=True)
class Judgement:
    """What the policy says about one request, and the audit row it calls for (if any)."""

    access: Access
    allowed: bool
    reason: str
    audit: AuditFields | None

    def access_or_refuse(self) -> Access:
        """The access, or PermissionDeniedError (after the audit row is written)."""
        if not self.allowed:
            raise PermissionDeniedError(self.reason)
        return self.access


def judge(
    state: AppState,
    principal: Principal,
    battery_id: str,
    category: Category,
    action: Action,
    facts: AccessFacts,
    request: Request,
) -> Judgement:
    """The policy's decision on ``facts``, and whether it must be audited: every restricted
    read, and every refusal of restricted data or of a write."""
    now = state.clock()
    decision = decide(
        principal, battery_id, category, action, now, facts.grants, facts.manufacturer, facts.owner
    )
    audited = needs_audit(principal, battery_id, category, action) or (
        not decision and (action is Action.WRITE or category in RESTRICTED_CATEGORIES)
    )
    audit: AuditFields | None = None
    if audited:
        audit = {
            "actor": principal,
            "action": action.value,
            "outcome": "allowed" if decision else "denied",
            "battery_id": battery_id,
            "category": category.value,
            "detail": {
                "method": request.method,
                "path": request.url.path,
                "query": request.url.query,
                "reason": decision.reason,
            },
            "at": now,
        }
    access = Access(
        principal=principal,
        battery_id=battery_id,
        category=category,
        action=action,
        now=now,
        grants=facts.grants,
        manufacturer=facts.manufacturer,
        owner=facts.owner,
    )
    return Judgement(access, bool(decision), decision.reason, audit)


def authorize(
    state: AppState,
    session: Session,
    principal: Principal,
    battery_id: str,
    category: Category,
    action: Action,
    request: Request,
) -> Access:
    """The caller's access to ``category`` of a battery, decided on what ``session`` (a read
    session) reads, or on cached facts (``access_facts_of``): NotFoundError for an unknown
    battery, PermissionDeniedError when the policy refuses. A restricted read, and a refusal of
    restricted data, is audited and committed before this returns."""
    facts = access_facts_of(state, session, principal, battery_id)
    judgement = judge(state, principal, battery_id, category, action, facts, request)
    if judgement.audit is not None:
        audit_now(state.db, session, **judgement.audit)
    return judgement.access_or_refuse()


def require(category: Category, action: Action = Action.READ) -> Callable[..., Access]:
    """A dependency checking that the caller may do ``action`` on ``category`` of the battery
    named by the ``battery_id`` path parameter (``authorize``).

    401 without a valid access token, 404 if the battery does not exist, 403 if the policy
    refuses (denials of restricted data are audited too). A restricted read is audited and
    committed before the route runs.
    """

    def dependency(
        battery_id: BatteryIdPath,
        principal: CurrentPrincipal,
        state: StateDep,
        request: Request,
    ) -> Access:
        with state.db.read() as session:
            return authorize(state, session, principal, battery_id, category, action, request)

    dependency.__name__ = f"require_{category.name.lower()}_{action.value}"
    return dependency


def limit_ingest_rate(state: AppState, principal: Principal, rows: int) -> None:
    """Charge ``rows`` to the caller's ingestion bucket; 429 (``RateLimitedError``) when over.

    Per device (per user for others), per process: see ``cloud.security.rate_limit``.
    """
    limiter = state.security.ingest_limiter
    if limiter is None or rows <= 0:
        return
    wait_s = limiter.try_acquire(principal.subject, rows, state.monotonic_s())
    if wait_s > 0:
        state.metrics.rejects.labels(channel="http", reason="rate_limited").inc()
        raise RateLimitedError(
            f"ingestion rate of {principal.subject!r} exceeded "
            f"({limiter.rate_per_s:g} rows/s, burst {limiter.burst:g})",
            retry_after_s=wait_s,
        )
