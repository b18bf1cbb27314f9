"""Security of the cloud API on SQLite and on a real PostgreSQL: tokens, lockout, hashes,
devices, grants, audit, rate limits, error answers and start-up checks."""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import cloud_db_support
import jwt
import pytest
from cloud_fixtures import PASSWORD, CloudHarness, bearer, cloud_harness, cloud_settings
from fastapi import APIRouter, Depends, FastAPI
from fastapi import routing as fastapi_routing
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import func, select

from cloud.api.deps import Access, StateDep, limit_ingest_rate, require
from cloud.app import create_app
from cloud.db.engine import Database
from cloud.db.security_models import AuditEntry, Device, RefreshToken, User
from cloud.security.policy import Action, Category
from cloud.security.tokens import KeyRing, TokenType, issue_token
from twin.errors import ConfigError

pytestmark = pytest.mark.integration

TOKEN_ROUTE = "/api/v1/auth/token"
PATH_PARAM = re.compile(r"{([^}:]+)(?::[^}]+)?}")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """A fresh database on each backend."""
    return cloud_db_support.database_url(request.param, request, tmp_path)


@pytest.fixture
def cloud(database_url: str) -> Iterator[CloudHarness]:
    """The app with B-1 and B-2 registered, an admin and probes of every category/action."""
    with cloud_harness(database_url, app_factory=_app_with_probes) as harness:
        harness.add_user("root", "admin")
        yield harness


def _app_with_probes(settings: Any, **kwargs: Any) -> FastAPI:
    """The real app plus one probe route per category and action, guarded by ``require``."""
    app = create_app(settings, **kwargs)
    probes = APIRouter(prefix="/api/v1/batteries/{battery_id}/probe")
    for category in Category:
        for action in Action:
            _add_probe(probes, category, action)
    app.include_router(probes)
    return app


def _add_probe(router: APIRouter, category: Category, action: Action) -> None:
    guard = require(category, action)

    def probe(state: StateDep, access: Access = Depends(guard)) -> dict[str, Any]:  # noqa: B008
        if action is Action.WRITE:
            limit_ingest_rate(state, access.principal, 10)
        return {"battery_id": access.battery_id, "tier": access.passport_tier.label}

    path = f"/{category.value}"
    if action is Action.READ:
        router.add_api_route(path, probe, methods=["GET"], name=f"probe_{category}_read")
    else:
        router.add_api_route(path, probe, methods=["POST"], name=f"probe_{category}_write")


def _probe(
    cloud: CloudHarness, battery_id: str, category: Category, action: Action, headers: Any
) -> int:
    path = f"/api/v1/batteries/{battery_id}/probe/{category.value}"
    method = cloud.client.get if action is Action.READ else cloud.client.post
    status: int = method(path, headers=headers).status_code
    return status


def _b64(data: dict[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# -- every route needs a token ---------------------------------------------------------------


def _concrete(path: str) -> str:
    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "battery_id":
            return "B-1"
        if name.endswith("_id"):
            return str(uuid.uuid4())
        return "x"

    return PATH_PARAM.sub(fill, path)


def _api_routes(app: FastAPI) -> list[tuple[str, set[str]]]:
    """(path, methods) of every FastAPI route of ``app``, included routers flattened."""
    iterate = getattr(fastapi_routing, "iter_route_contexts", None)  # FastAPI with lazy includes
    found = []
    for route in iterate(app.routes) if iterate is not None else app.routes:
        original = getattr(route, "original_route", route)
        if isinstance(original, APIRoute):
            found.append((str(route.path), set(route.methods or ())))
    return found


def test_every_api_route_but_the_token_route_needs_a_token(cloud: CloudHarness) -> None:
    checked = []
    for path, methods in _api_routes(cloud.app):
        if not path.startswith("/api/v1") or path == TOKEN_ROUTE:
            continue
        for method in sorted(methods - {"HEAD", "OPTIONS"}):
            url = _concrete(path)
            for headers in ({}, bearer("garbage"), {"Authorization": "Basic YTpi"}):
                response = cloud.client.request(method, url, headers=headers)
                assert response.status_code == 401, (method, url, headers, response.text)
                assert response.headers["www-authenticate"].startswith("Bearer")
                assert isinstance(response.json()["detail"], str)
            checked.append(f"{method} {path}")
    assert "GET /api/v1/batteries" in checked
    assert "GET /api/v1/batteries/{battery_id}" in checked
    assert "POST /api/v1/auth/refresh" in checked
    # the token route itself answers without a token
    response = cloud.client.post(TOKEN_ROUTE, data={"username": "root", "password": PASSWORD})
    assert response.status_code == 200


# -- tokens ----------------------------------------------------------------------------------


def test_login_returns_access_and_refresh_tokens(cloud: CloudHarness) -> None:
    body = cloud.login("root")
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == cloud.settings.access_token_ttl_s
    me = cloud.client.get("/api/v1/auth/me", headers=bearer(body["access_token"]))
    assert me.json() == {"subject": "root", "role": "admin", "battery_id": None}
    header = jwt.get_unverified_header(body["access_token"])
    assert header == {"alg": "HS256", "typ": "JWT", "kid": cloud.settings.jwt_key_id}


def _forged_tokens(cloud: CloudHarness) -> dict[str, str]:
    keys = cloud.state.security.keys
    now = cloud.clock()
    claims = {
        "sub": "root",
        "role": "admin",
        "typ": "access",
        "jti": "j",
        "iat": int(now.timestamp()),
        "exp": int(now.timestamp()) + 600,
    }
    other_ring = KeyRing.from_secrets("k9", "z" * 40, {})
    return {
        "expired": issue_token(
            keys,
            subject="root",
            role="admin",
            token_type=TokenType.ACCESS,
            ttl_s=60,
            now=now.replace(year=now.year - 1),
        ).token,
        "wrong signature": jwt.encode(
            claims, "w" * 40, algorithm="HS256", headers={"kid": keys.current_kid}
        ),
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': keys.current_kid})}."
        f"{_b64(claims)}.",
        "unknown kid": issue_token(
            other_ring, subject="root", role="admin", token_type=TokenType.ACCESS, ttl_s=60, now=now
        ).token,
        "refresh as access": cloud.login("root")["refresh_token"],
        "unknown role": jwt.encode(
            {**claims, "role": "superuser"},
            keys.keys[keys.current_kid],
            algorithm="HS256",
            headers={"kid": keys.current_kid},
        ),
    }


@pytest.mark.parametrize(
    "kind",
    ["expired", "wrong signature", "alg none", "unknown kid", "refresh as access", "unknown role"],
)
def test_bad_tokens_refused(cloud: CloudHarness, kind: str) -> None:
    token = _forged_tokens(cloud)[kind]
    for path in ("/api/v1/auth/me", "/api/v1/batteries", "/api/v1/batteries/B-1"):
        response = cloud.client.get(path, headers=bearer(token))
        assert response.status_code == 401, (kind, path, response.text)
        assert "invalid_token" in response.headers["www-authenticate"]


def test_access_token_expires_with_the_clock(cloud: CloudHarness) -> None:
    headers = cloud.headers("root")
    assert cloud.client.get("/api/v1/auth/me", headers=headers).status_code == 200
    cloud.clock.advance(cloud.settings.access_token_ttl_s + 10)
    response = cloud.client.get("/api/v1/auth/me", headers=headers)
    assert response.status_code == 401
    assert "expired" in response.json()["detail"]


def test_key_rotation(database_url: str) -> None:
    key_1, key_2 = "1" * 40, "2" * 40
    with cloud_harness(database_url, jwt_key_id="k1", jwt_secret=key_1) as old:
        old.add_user("root", "admin")
        token = old.login("root")["access_token"]
        db = old.db
        rotated_settings = cloud_settings(
            database_url,
            jwt_key_id="k2",
            jwt_secret=key_2,
            jwt_previous_keys={"k1": SecretStr(key_1)},
        )
        retired_settings = cloud_settings(database_url, jwt_key_id="k2", jwt_secret=key_2)
        with TestClient(create_app(rotated_settings, database=db, clock=old.clock)) as rotated:
            assert rotated.get("/api/v1/auth/me", headers=bearer(token)).status_code == 200
            new = rotated.post(TOKEN_ROUTE, data={"username": "root", "password": PASSWORD})
            new_token = new.json()["access_token"]
            assert jwt.get_unverified_header(new_token)["kid"] == "k2"
        with TestClient(create_app(retired_settings, database=db, clock=old.clock)) as retired:
            response = retired.get("/api/v1/auth/me", headers=bearer(token))
            assert response.status_code == 401
            assert "unknown or retired key" in response.json()["detail"]
            assert retired.get("/api/v1/auth/me", headers=bearer(new_token)).status_code == 200


def test_refresh_rotates_and_detects_reuse(cloud: CloudHarness) -> None:
    first = cloud.login("root")
    refreshed = cloud.client.post("/api/v1/auth/refresh", headers=bearer(first["refresh_token"]))
    assert refreshed.status_code == 200
    second = refreshed.json()
    assert cloud.client.get("/api/v1/auth/me", headers=bearer(second["access_token"])).is_success
    # an access token is not a refresh token
    wrong = cloud.client.post("/api/v1/auth/refresh", headers=bearer(second["access_token"]))
    assert wrong.status_code == 401
    # reusing the first refresh token revokes the whole family, the second one included
    reused = cloud.client.post("/api/v1/auth/refresh", headers=bearer(first["refresh_token"]))
    assert reused.status_code == 401
    after = cloud.client.post("/api/v1/auth/refresh", headers=bearer(second["refresh_token"]))
    assert after.status_code == 401
    with cloud.db.read() as session:
        live = session.scalar(
            select(func.count()).select_from(RefreshToken).where(RefreshToken.revoked_at.is_(None))
        )
    assert live == 0


# -- passwords and lockout -------------------------------------------------------------------


def test_lockout_after_repeated_failures(cloud: CloudHarness) -> None:
    cloud.add_user("alice", "viewer")
    for _ in range(cloud.settings.login_max_failures):
        bad = cloud.client.post(TOKEN_ROUTE, data={"username": "alice", "password": "wrong pw!"})
        assert bad.status_code == 401
    locked = cloud.client.post(TOKEN_ROUTE, data={"username": "alice", "password": PASSWORD})
    assert locked.status_code == 401
    assert locked.headers["www-authenticate"].startswith("Bearer")
    with cloud.db.read() as session:
        user = session.scalars(select(User).where(User.name == "alice")).one()
        assert user.locked_until is not None and user.locked_until > cloud.clock()
        failed = session.scalar(
            select(func.count())
            .select_from(AuditEntry)
            .where(AuditEntry.actor == "login:alice", AuditEntry.outcome == "failed")
        )
    assert failed == cloud.settings.login_max_failures + 1
    # the lock is in the database: another process (app) sees it too
    other_app = create_app(cloud.settings, database=cloud.db, clock=cloud.clock)
    with TestClient(other_app) as other:
        again = other.post(TOKEN_ROUTE, data={"username": "alice", "password": PASSWORD})
        assert again.status_code == 401
    cloud.clock.advance(cloud.settings.login_lockout_s + 1)
    assert cloud.login("alice")["token_type"] == "bearer"
    with cloud.db.read() as session:
        user = session.scalars(select(User).where(User.name == "alice")).one()
        assert (user.failed_login_count, user.locked_until) == (0, None)


def test_unknown_user_and_wrong_password_look_the_same(cloud: CloudHarness) -> None:
    unknown = cloud.client.post(TOKEN_ROUTE, data={"username": "nobody", "password": "x" * 9})
    wrong = cloud.client.post(TOKEN_ROUTE, data={"username": "root", "password": "x" * 9})
    assert unknown.status_code == wrong.status_code == 401
    assert unknown.json() == wrong.json()


def test_only_argon2_hashes_are_stored(cloud: CloudHarness) -> None:
    cloud.add_user("bob", "operator", password="bobs secret password")
    device_id, secret = cloud.add_device("B-1")
    assert cloud.login(device_id, secret)["token_type"] == "bearer"
    with cloud.db.read() as session:
        users = session.scalars(select(User)).all()
        devices = session.scalars(select(Device)).all()
        dumped = json.dumps(
            [
                {c.name: str(getattr(row, c.key)) for c in row.__table__.columns}
                for row in [*users, *devices]
            ]
        )
        assert len(users) == 2 and len(devices) == 1
        assert all(u.password_hash.startswith("$argon2id$") for u in users)
        assert all(d.secret_hash.startswith("$argon2id$") for d in devices)
    for plaintext in ("bobs secret password", PASSWORD, secret):
        assert plaintext not in dumped


# -- devices ---------------------------------------------------------------------------------


def test_device_reaches_only_its_own_battery(cloud: CloudHarness) -> None:
    device_id, secret = cloud.add_device("B-1")
    headers = cloud.headers(device_id, secret)
    me = cloud.client.get("/api/v1/auth/me", headers=headers).json()
    assert me == {"subject": device_id, "role": "device", "battery_id": "B-1"}
    assert cloud.client.get("/api/v1/batteries/B-1", headers=headers).status_code == 200
    assert cloud.client.get("/api/v1/batteries/B-2", headers=headers).status_code == 403
    assert cloud.client.get("/api/v1/batteries/B-404", headers=headers).status_code == 404
    listed = cloud.client.get("/api/v1/batteries", headers=headers).json()
    assert [b["battery_id"] for b in listed] == ["B-1"]
    for category in (Category.TELEMETRY, Category.EIS, Category.EVENTS, Category.ACKS):
        assert _probe(cloud, "B-1", category, Action.WRITE, headers) == 200
        assert _probe(cloud, "B-2", category, Action.WRITE, headers) == 403
        assert _probe(cloud, "B-404", category, Action.WRITE, headers) == 404
    assert _probe(cloud, "B-1", Category.COMMANDS, Action.READ, headers) == 200
    assert _probe(cloud, "B-2", Category.COMMANDS, Action.READ, headers) == 403
    assert _probe(cloud, "B-1", Category.COMMANDS, Action.WRITE, headers) == 403
    assert _probe(cloud, "B-1", Category.TELEMETRY, Action.READ, headers) == 403


def test_revoked_device_cannot_log_in(cloud: CloudHarness) -> None:
    from cloud.services.accounts import revoke_device

    device_id, secret = cloud.add_device("B-2")
    refresh = cloud.login(device_id, secret)["refresh_token"]
    revoke_device(cloud.db, device_id, cloud.clock())
    response = cloud.client.post(TOKEN_ROUTE, data={"username": device_id, "password": secret})
    assert response.status_code == 401
    assert cloud.client.post("/api/v1/auth/refresh", headers=bearer(refresh)).status_code == 401


def test_ingestion_rate_limit(database_url: str) -> None:
    with cloud_harness(
        database_url, app_factory=_app_with_probes, ingest_rate_rows_per_s=1, ingest_burst_rows=25
    ) as cloud:
        device_id, secret = cloud.add_device("B-1")
        headers = cloud.headers(device_id, secret)
        path = "/api/v1/batteries/B-1/probe/telemetry"
        assert cloud.client.post(path, headers=headers).status_code == 200  # 10 rows
        assert cloud.client.post(path, headers=headers).status_code == 200  # 20 rows
        limited = cloud.client.post(path, headers=headers)
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) >= 1
        metrics = cloud.client.get("/metrics").text
        assert 'b2l_ingest_rejects_total{channel="http",reason="rate_limited"} 1.0' in metrics


# -- grants and audit ------------------------------------------------------------------------


def test_reads_need_a_grant_in_its_time_window(cloud: CloudHarness) -> None:
    cloud.add_user("vera", "viewer")
    cloud.grant("vera", "B-1", "telemetry", start_s=3600, end_s=7200)
    headers = cloud.headers("vera")
    telemetry = Category.TELEMETRY
    assert _probe(cloud, "B-1", telemetry, Action.READ, headers) == 403  # before the window
    cloud.clock.advance(3600)
    headers = cloud.headers("vera")  # the first token has expired meanwhile
    assert _probe(cloud, "B-1", telemetry, Action.READ, headers) == 200  # inside
    assert _probe(cloud, "B-2", telemetry, Action.READ, headers) == 403  # other battery
    assert _probe(cloud, "B-1", Category.EIS, Action.READ, headers) == 403  # other category
    assert _probe(cloud, "B-1", telemetry, Action.WRITE, headers) == 403  # viewers never write
    cloud.clock.advance(3600)
    headers = cloud.headers("vera")
    assert _probe(cloud, "B-1", telemetry, Action.READ, headers) == 403  # after the window
    # public passport data needs no grant
    assert _probe(cloud, "B-2", Category.PASSPORT_PUBLIC, Action.READ, headers) == 200


def test_grant_on_all_batteries_and_role_writes(cloud: CloudHarness) -> None:
    cloud.add_user("otto", "operator")
    cloud.grant("otto", None, "commands", "telemetry", end_s=None)
    headers = cloud.headers("otto")
    for battery_id in ("B-1", "B-2"):
        assert _probe(cloud, battery_id, Category.COMMANDS, Action.WRITE, headers) == 200
        assert _probe(cloud, battery_id, Category.TELEMETRY, Action.READ, headers) == 200
        assert _probe(cloud, battery_id, Category.TELEMETRY, Action.WRITE, headers) == 403
    assert _probe(cloud, "B-404", Category.COMMANDS, Action.WRITE, headers) == 404


def test_passport_writes_by_the_battery_manufacturer(cloud: CloudHarness) -> None:
    cloud.add_user("acme", "manufacturer")  # named on B-1 and B-2 by the harness
    cloud.add_user("other", "manufacturer")
    acme, other = cloud.headers("acme"), cloud.headers("other")
    restricted = Category.PASSPORT_RESTRICTED
    assert _probe(cloud, "B-1", restricted, Action.WRITE, acme) == 200
    assert _probe(cloud, "B-1", restricted, Action.WRITE, other) == 403
    tier = cloud.client.get(f"/api/v1/batteries/B-1/probe/{restricted.value}", headers=acme)
    assert tier.json()["tier"] == "authority"
    public = cloud.client.get("/api/v1/batteries/B-1/probe/passport-public", headers=other)
    assert public.json()["tier"] == "public"


def test_restricted_reads_and_denials_are_audited(cloud: CloudHarness) -> None:
    cloud.add_user("vera", "viewer")
    cloud.grant("vera", "B-1", "telemetry")
    headers = cloud.headers("vera")
    assert _probe(cloud, "B-1", Category.TELEMETRY, Action.READ, headers) == 200
    assert _probe(cloud, "B-2", Category.TELEMETRY, Action.READ, headers) == 403
    assert cloud.client.get("/api/v1/batteries/B-1", headers=headers).status_code == 200
    root = cloud.headers("root")
    assert _probe(cloud, "B-2", Category.ANALYTICS, Action.READ, root) == 200
    with cloud.db.read() as session:
        rows = session.scalars(
            select(AuditEntry).where(AuditEntry.action == "read").order_by(AuditEntry.audit_id)
        ).all()
        seen = [(r.actor, r.battery_id, r.category, r.outcome) for r in rows]
        detail = rows[0].detail
    assert seen == [
        ("user:vera", "B-1", "telemetry", "allowed"),
        ("user:vera", "B-2", "telemetry", "denied"),
        ("user:root", "B-2", "analytics", "allowed"),
    ]  # the public read of /batteries/B-1 is not audited
    assert detail["path"] == "/api/v1/batteries/B-1/probe/telemetry"
    assert detail["method"] == "GET"


# -- error answers and operations ------------------------------------------------------------


def test_bad_input_gets_4xx_json(cloud: CloudHarness) -> None:
    root = cloud.headers("root")
    cases = [
        ("GET", "/api/v1/batteries/not%20an%20id", 422),
        ("GET", "/api/v1/batteries?limit=0", 422),
        ("GET", "/api/v1/batteries?limit=abc", 422),
        ("GET", "/api/v1/batteries?after=%00", 422),
        ("GET", "/api/v1/nope", 404),
    ]
    for method, url, status in cases:
        response = cloud.client.request(method, url, headers=root)
        assert response.status_code == status, (url, response.text)
        assert "detail" in response.json()
    form = cloud.client.post(TOKEN_ROUTE, data={"username": "root"})
    assert form.status_code == 422
    assert form.json()["detail"][0]["loc"] == ["body", "password"]
    junk = cloud.client.post(TOKEN_ROUTE, content=b"\xff\xfe", headers={"content-type": "x/y"})
    assert 400 <= junk.status_code < 500


def test_health_readiness_metrics(cloud: CloudHarness) -> None:
    assert cloud.client.get("/healthz").json() == {"status": "ok"}
    ready = cloud.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    cloud.client.get("/api/v1/batteries/B-1")  # 401, observed by route template
    metrics = cloud.client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert (
        'b2l_http_request_duration_seconds_count{method="GET",'
        'route="/api/v1/batteries/{battery_id}",status="401"} 1.0'
    ) in metrics.text
    assert "b2l_rows_ingested" in metrics.text
    assert cloud.client.get("/openapi.json").json()["info"]["title"] == "b2l cloud"
    assert cloud.client.get("/docs").status_code == 200


def test_readyz_reports_an_unmigrated_database(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    db = Database.from_url(url)
    try:
        with TestClient(create_app(cloud_settings(url), database=db)) as client:
            response = client.get("/readyz")
            assert response.status_code == 503
            assert response.json()["database"] == "outdated"
    finally:
        db.dispose()


def test_production_refuses_the_default_secret(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'prod.db'}"
    with pytest.raises(ConfigError, match="B2L_JWT_SECRET"):
        create_app(cloud_settings(url, mode="production"))
    app = create_app(cloud_settings(url, mode="production", jwt_secret="p" * 48))
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
