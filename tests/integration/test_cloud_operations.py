"""Operations of the cloud: /readyz across a PostgreSQL crash, the security schema on both
databases, and the ``b2l cloud`` administration commands."""

from __future__ import annotations

import argparse
import io
import json
import signal
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from cloud_db_support import database_url
from cloud_fixtures import PASSWORD, cloud_harness, cloud_settings
from cryptography import x509
from fastapi.testclient import TestClient
from sqlalchemy import select, text

from b2l import cloud_cmd
from cloud.app import create_app
from cloud.db.engine import Database
from cloud.db.metadata import load_metadata
from cloud.db.migrate import upgrade
from cloud.db.security_models import AccessGrant, AuditEntry, Device, User
from cloud.services.batteries import BatteryService
from hil.services import PostgresServer, find_free_port, wait_for_port
from twin.errors import B2LError, ConfigError
from twin.topology import BatteryTopology

pytestmark = pytest.mark.integration

SECURITY_TABLES = {"users", "devices", "grants", "refresh_tokens", "audit_log"}
READY_TIMEOUT_S = 30.0


def _wait_status(client: TestClient, path: str, status: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        got = client.get(path).status_code
        if got == status or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


@pytest.mark.slow
def test_readyz_follows_a_postgresql_crash(
    make_postgres_server: Callable[..., PostgresServer],
) -> None:
    server = make_postgres_server(fsync=False)
    url = server.create_database("ready")
    upgrade(url)
    app = create_app(cloud_settings(url))
    with TestClient(app) as client:
        assert client.get("/readyz").status_code == 200
        server.kill()
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json() == {
            "status": "unavailable",
            "database": "unreachable",
            "detail": "the database does not answer",
        }
        assert client.get("/healthz").status_code == 200  # alive, not ready
        server.restart()
        assert _wait_status(client, "/readyz", 200, READY_TIMEOUT_S) == 200


def test_a_pooled_connection_the_server_closed_is_replaced_at_checkout(pg_database: Any) -> None:
    """No ping per checkout: a connection whose socket has something to read while idle was
    closed by the server, and the pool opens a new one instead of failing the request."""
    db = Database.from_url(pg_database.url, pool_size=1)
    try:
        with db.read() as session:
            first_pid = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
        admin = Database.from_url(pg_database.url)
        try:
            with admin.write() as session:
                session.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first_pid})
        finally:
            admin.dispose()
        time.sleep(0.2)  # the terminated backend's goodbye reaches the pooled socket
        for _ in range(3):
            with db.read() as session:
                pid = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
                assert pid != first_pid
    finally:
        db.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_security_schema_matches_the_models(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'schema.db'}"
    else:
        url = request.getfixturevalue("pg_database").url
    upgrade(url)
    db = Database.from_url(url)
    try:
        with db.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            diffs = compare_metadata(context, load_metadata())
    finally:
        db.dispose()
    mine = [d for d in diffs if SECURITY_TABLES & set(_tables_of(d))]
    assert mine == []


def _tables_of(diff: Any) -> list[str]:
    """Table names mentioned by one autogenerate diff entry (tuple or list of tuples)."""
    entries = diff if isinstance(diff, list) else [diff]
    names = []
    for entry in entries:
        for item in entry:
            table = getattr(item, "table", None)
            for name in (item, getattr(item, "name", None), getattr(table, "name", None)):
                if isinstance(name, str):
                    names.append(name)
    return names


# -- b2l cloud ------------------------------------------------------------------------------


def _run(argv: list[str], stdin: str = "") -> int:
    parser = argparse.ArgumentParser(prog="b2l")
    cloud_cmd.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    saved = cloud_cmd.sys.stdin
    cloud_cmd.sys.stdin = io.StringIO(stdin)
    try:
        code: int = args.handler(args)
    finally:
        cloud_cmd.sys.stdin = saved
    return code


@pytest.fixture(params=["sqlite", "postgresql"])
def cli_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database on each backend."""
    return database_url(request.param, request, tmp_path)


def test_cli_migrate_users_devices_grants(cli_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    db_args = ["--database-url", cli_url]
    assert _run(["cloud", "migrate", *db_args]) == 0
    assert _run(["cloud", "migrate", *db_args]) == 0  # idempotent
    db = Database.from_url(cli_url)
    try:
        BatteryService(db).register("B-7", BatteryTopology(cells_per_module=2))
        code = _run(
            ["cloud", "create-user", "olga", "--role", "operator", "--password-stdin", *db_args],
            stdin=PASSWORD + "\n",
        )
        assert code == 0
        with pytest.raises(B2LError, match="already exists"):
            _run(
                ["cloud", "create-user", "olga", "--role", "viewer", "--password-stdin", *db_args],
                stdin=PASSWORD + "\n",
            )
        with pytest.raises(B2LError, match="at least"):
            _run(
                ["cloud", "create-user", "pia", "--role", "viewer", "--password-stdin", *db_args],
                stdin="short\n",
            )
        capsys.readouterr()
        assert _run(["cloud", "create-device", "B-7", "--json", *db_args]) == 0
        device = json.loads(capsys.readouterr().out)
        assert device["battery_id"] == "B-7" and device["device_id"].startswith("dev-")
        with pytest.raises(B2LError, match="B-404"):
            _run(["cloud", "create-device", "B-404", *db_args])
        until = (datetime.now(UTC) + timedelta(days=30)).isoformat()
        code = _run(
            [
                "cloud",
                "grant",
                "olga",
                "--battery",
                "B-7",
                "--categories",
                "telemetry,commands",
                "--until",
                until,
                *db_args,
            ]
        )
        assert code == 0
        assert (
            _run(["cloud", "grant", "olga", "--battery", "all", "--categories", "eis", *db_args])
            == 0
        )
        with pytest.raises(B2LError, match="unknown data category"):
            _run(["cloud", "grant", "olga", "--battery", "all", "--categories", "x", *db_args])
        with db.read() as session:
            user = session.scalars(select(User).where(User.name == "olga")).one()
            assert user.role == "operator" and user.password_hash.startswith("$argon2id$")
            stored = session.get(Device, device["device_id"])
            assert stored is not None and device["secret"] not in stored.secret_hash
            grants = session.scalars(select(AccessGrant).order_by(AccessGrant.grant_id)).all()
            assert [(g.battery_id, g.categories) for g in grants] == [
                ("B-7", ["commands", "telemetry"]),
                (None, ["eis"]),
            ]
            assert grants[0].valid_until is not None
            assert session.scalars(select(AuditEntry.action)).all() == ["grant", "grant"]
        assert _run(["cloud", "revoke-device", device["device_id"], *db_args]) == 0
        with db.read() as session:
            revoked = session.get(Device, device["device_id"])
            assert revoked is not None and revoked.revoked
    finally:
        db.dispose()


def test_cli_device_credentials_log_in(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'login.db'}"
    with cloud_harness(url) as cloud:
        capsys.readouterr()
        assert _run(["cloud", "create-device", "B-1", "--database-url", url]) == 0
        out = capsys.readouterr().out
        fields = dict(line.split(": ", 1) for line in out.strip().splitlines())
        body = cloud.login(fields["device_id"], fields["secret"])
        me = cloud.client.get(
            "/api/v1/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"}
        )
        assert me.json()["battery_id"] == "B-1"


def test_cli_serve_refuses_the_default_secret_in_production(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("B2L_MODE", "production")
    monkeypatch.delenv("B2L_JWT_SECRET", raising=False)
    url = f"sqlite:///{tmp_path / 'prod.db'}"
    with pytest.raises(ConfigError, match="B2L_JWT_SECRET"):
        _run(["cloud", "serve", "--database-url", url, "--port", "1"])
    assert not (tmp_path / "prod.db").exists()  # refused before touching the database


def test_cli_database_errors_are_clear(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'unmigrated.db'}"
    with pytest.raises(B2LError, match="b2l cloud migrate"):
        _run(
            [
                "cloud",
                "create-user",
                "x1",
                "--role",
                "viewer",
                "--password-stdin",
                "--database-url",
                url,
            ],
            stdin=PASSWORD + "\n",
        )


# -- development CA -------------------------------------------------------------------------


def test_dev_ca_certificates_make_a_tls_connection(tmp_path: Path) -> None:
    out = tmp_path / "ca"
    assert _run(["cloud", "dev-ca", str(out), "--client", "dev-1", "--days", "2"]) == 0
    for key in ("ca.key", "server.key", "client-dev-1.key"):
        assert stat.S_IMODE((out / key).stat().st_mode) == 0o600
    with pytest.raises(ConfigError, match="already holds"):
        _run(["cloud", "dev-ca", str(out)])
    server_cert = x509.load_pem_x509_certificate((out / "server.pem").read_bytes())
    sans = server_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)

    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(out / "server.pem", out / "server.key")
    server_ctx.load_verify_locations(out / "ca.pem")
    server_ctx.verify_mode = ssl.CERT_REQUIRED  # mutual TLS, as Mosquitto can require
    client_ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=out / "ca.pem")
    client_ctx.load_cert_chain(out / "client-dev-1.pem", out / "client-dev-1.key")

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen: dict[str, Any] = {}

    def serve() -> None:
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            peer = tls.getpeercert()
            seen["client_cn"] = dict(x[0] for x in peer["subject"])["commonName"]
            tls.sendall(b"hello")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            client_ctx.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            assert tls.recv(5) == b"hello"
    finally:
        thread.join(10)
        listener.close()
    assert seen["client_cn"] == "dev-1"


SERVE_SCRIPT = """
import argparse, sys
from b2l import cloud_cmd
parser = argparse.ArgumentParser(prog="b2l")
cloud_cmd.register(parser.add_subparsers(dest="command", required=True))
args = parser.parse_args(sys.argv[1:])
sys.exit(args.handler(args))
"""


@pytest.mark.slow
def test_cli_serve_migrates_and_serves_https(tmp_path: Path) -> None:
    assert _run(["cloud", "dev-ca", str(tmp_path / "ca")]) == 0
    port = find_free_port()
    argv = [
        sys.executable,
        "-c",
        SERVE_SCRIPT,
        "cloud",
        "serve",
        "--database-url",
        f"sqlite:///{tmp_path / 'served.db'}",
        "--port",
        str(port),
        "--tls-cert",
        str(tmp_path / "ca" / "server.pem"),
        "--tls-key",
        str(tmp_path / "ca" / "server.key"),
    ]
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port("127.0.0.1", port, timeout_s=60)
        verify = ssl.create_default_context(cafile=tmp_path / "ca" / "ca.pem")
        with httpx.Client(base_url=f"https://localhost:{port}", verify=verify) as client:
            assert client.get("/readyz").json()["status"] == "ready"  # migrated at start-up
            assert client.get("/api/v1/batteries").status_code == 401
    finally:
        process.terminate()
        code = process.wait(timeout=30)
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    assert code in (0, -signal.SIGTERM), lines  # uvicorn re-raises the signal it handled
    assert "Application shutdown complete." in [entry["msg"] for entry in lines]
    access = [entry for entry in lines if entry["logger"] == "cloud.access"]
    assert [(e["route"], e["status"]) for e in access] == [
        ("/readyz", 200),
        ("/api/v1/batteries", 401),
    ]


def test_each_response_names_its_request(tmp_path: Path) -> None:
    with cloud_harness(f"sqlite:///{tmp_path / 'ids.db'}", register=False) as harness:
        ids = [harness.client.get("/healthz").headers["x-request-id"] for _ in range(3)]
        given = harness.client.get("/healthz", headers={"X-Request-ID": "edge-42.a:b"})
        refused = harness.client.get("/healthz", headers={"X-Request-ID": "bad id;x"})
    assert len(set(ids)) == 3 and all(len(i) >= 18 for i in ids)
    assert given.headers["x-request-id"] == "edge-42.a:b"  # the caller's, kept
    assert refused.headers["x-request-id"] not in ("bad id;x", *ids)  # not echoed: a new one
