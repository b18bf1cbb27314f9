"""``b2l cloud``: run and administer the cloud.

``serve`` (migrates first; with ``B2L_MQTT_URL`` also the MQTT consumer and command publisher),
``mqtt`` (only the MQTT side: several such processes split the uplink through a shared
subscription), ``migrate``, ``create-user``, ``create-device`` (prints the device's credentials
once), ``revoke-device``, ``grant`` and ``dev-ca`` (development certificates for TLS on HTTPS and
MQTT). The database is ``--database-url`` or ``B2L_DATABASE_URL``; the other
settings come from ``B2L_*`` variables (``cloud.settings``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twin.errors import B2LError

if TYPE_CHECKING:
    from cloud.db.engine import Database
    from cloud.security.context import SecurityContext
    from cloud.settings import CloudSettings

ROLES = ("admin", "operator", "manufacturer", "service", "viewer")


def register(subparsers: Any) -> None:
    """Add ``b2l cloud`` and its commands."""
    cloud = subparsers.add_parser(
        "cloud",
        help="the cloud: serve the API, migrate, manage users, devices and grants",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = cloud.add_subparsers(dest="cloud_command", metavar="COMMAND", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--database-url",
        metavar="URL",
        default=None,
        help="SQLAlchemy URL: sqlite:///PATH or postgresql+psycopg://... "
        "(default: B2L_DATABASE_URL or sqlite:///./b2l-data/b2l.db)",
    )
    _add_serve(commands, common)
    _add_mqtt(commands, common)
    _add_migrate(commands, common)
    _add_create_user(commands, common)
    _add_create_device(commands, common)
    _add_revoke_device(commands, common)
    _add_grant(commands, common)
    _add_dev_ca(commands)


# -- serve and migrate ----------------------------------------------------------------------


def _add_serve(commands: Any, common: argparse.ArgumentParser) -> None:
    serve = commands.add_parser(
        "serve",
        parents=[common],
        help="serve the HTTP API (uvicorn); migrates the database first",
        description="Serve the REST API, OpenAPI at /openapi.json, docs at /docs. Migrates the "
        "database first unless --no-migrate. HTTPS with --tls-cert/--tls-key (or "
        "B2L_TLS_CERTFILE/B2L_TLS_KEYFILE). Logs are JSON lines on stderr.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8000, help="TCP port (default: 8000)")
    serve.add_argument("--no-migrate", action="store_true", help="do not migrate at start-up")
    serve.add_argument("--tls-cert", metavar="PEM", default=None, help="server certificate")
    serve.add_argument("--tls-key", metavar="PEM", default=None, help="server private key")
    serve.add_argument(
        "--mqtt-url",
        metavar="URL",
        default=None,
        help="also consume the MQTT uplink and publish commands: mqtt[s]://user:pass@host:port "
        "(default: B2L_MQTT_URL; unset: no MQTT)",
    )
    serve.add_argument(
        "--workers",
        type=_workers,
        default=1,
        metavar="N",
        help="HTTP worker processes (default 1): one Python process uses one core; the parent "
        "accepts and hands each connection to the worker with the fewest open ones; the MQTT "
        "side, if any, runs once, in the parent. Rate limits are per process.",
    )
    serve.set_defaults(handler=_serve)


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError("--workers: 1 to 64")
    return value


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from cloud.app import create_app
    from cloud.logging import configure_logging

    settings = _settings(args)
    settings.check_secrets()
    configure_logging(settings.log_level, settings.log_json, settings.access_log)
    if not args.no_migrate:
        _migrate_url(settings.database_url)
    certfile = args.tls_cert or settings.tls_certfile
    keyfile = args.tls_key or settings.tls_keyfile
    if bool(certfile) != bool(keyfile):
        raise B2LError("HTTPS needs both a certificate and a key (--tls-cert and --tls-key)")
    app = create_app(settings)
    mqtt_service = None
    if settings.mqtt_url:
        from cloud.api.deps import ingestion_of
        from cloud.mqtt import CloudMqttService

        state = app.state.b2l
        mqtt_service = CloudMqttService(
            settings, state.db, metrics=state.metrics, ingestion=ingestion_of(state)
        )
        state.extras["mqtt"] = mqtt_service
        mqtt_service.start()
    target: Any = app
    if args.workers > 1:
        # each worker process builds its own app from the environment (worker_app)
        os.environ["B2L_DATABASE_URL"] = settings.database_url
        os.environ.pop("B2L_MQTT_URL", None)  # the MQTT side runs here, once
        target = "b2l.cloud_cmd:worker_app"
    options: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "log_config": None,
        "access_log": False,
        "ssl_certfile": certfile,
        "ssl_keyfile": keyfile,
        "proxy_headers": False,
    }
    tune_for_server()
    try:
        if args.workers > 1:
            from b2l.http_workers import serve_workers

            config = uvicorn.Config(target, factory=True, workers=args.workers, **options)
            serve_workers(config, args.host, args.port)
        else:
            uvicorn.run(target, **options)
    finally:
        if mqtt_service is not None:
            mqtt_service.stop()
    return 0


def worker_app() -> Any:
    """The application of one ``b2l cloud serve --workers N`` worker process (a uvicorn
    factory): ``cloud.app.create_app`` from the environment, then the server's GC settings."""
    from cloud.app import create_app

    app = create_app()
    tune_for_server()
    return app


def tune_for_server() -> None:
    """``cloud.gc_tuning.tune_for_server`` (imported late, like the rest of ``cloud``)."""
    from cloud.gc_tuning import tune_for_server as tune

    tune()


def _add_mqtt(commands: Any, common: argparse.ArgumentParser) -> None:
    mqtt = commands.add_parser(
        "mqtt",
        parents=[common],
        help="run only the MQTT side: uplink consumer and command publisher",
        description="Consume b2l/v1/+/telemetry|eis|events|acks through the shared "
        "subscription of --group (QoS 1, persistent session, PUBACK after the database commit) "
        "and publish queued commands on b2l/v1/{battery_id}/commands. Several processes with "
        "the same group and distinct --client-id split the uplink. Runs until SIGTERM/SIGINT. "
        "Settings: B2L_MQTT_* (docs/cloud-mqtt.md).",
    )
    mqtt.add_argument(
        "--mqtt-url",
        metavar="URL",
        default=None,
        help="mqtt[s]://user:pass@host:port (default: B2L_MQTT_URL)",
    )
    mqtt.add_argument(
        "--client-id",
        default=None,
        help="stable client id of this process, its persistent session "
        "(default: B2L_MQTT_CLIENT_ID or b2l-cloud-HOSTNAME)",
    )
    mqtt.add_argument(
        "--group", default=None, help="shared-subscription group (default: B2L_MQTT_GROUP)"
    )
    mqtt.add_argument(
        "--no-commands", action="store_true", help="do not publish commands from this process"
    )
    mqtt.add_argument("--no-migrate", action="store_true", help="do not migrate at start-up")
    mqtt.set_defaults(handler=_mqtt)


def _mqtt(args: argparse.Namespace) -> int:
    import signal
    import threading

    from cloud.db.engine import Database
    from cloud.logging import configure_logging
    from cloud.mqtt import CloudMqttService

    settings = _settings(args)
    settings.check_secrets()
    if not settings.mqtt_url:
        raise B2LError("no broker: give --mqtt-url or set B2L_MQTT_URL")
    configure_logging(settings.log_level, settings.log_json, settings.access_log)
    if not args.no_migrate:
        _migrate_url(settings.database_url)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    db = Database.from_url(settings.database_url, pool_size=settings.database_pool_size)
    try:
        service = CloudMqttService(settings, db, commands=not args.no_commands)
        tune_for_server()
        service.start()
        try:
            while not stop.wait(1.0):
                pass
        finally:
            service.stop()
    finally:
        db.dispose()
    return 0


def _add_migrate(commands: Any, common: argparse.ArgumentParser) -> None:
    migrate = commands.add_parser(
        "migrate",
        parents=[common],
        help="bring the database schema to the newest revision (Alembic)",
        description="Run every pending migration (PostgreSQL or SQLite). Idempotent.",
    )
    migrate.set_defaults(handler=_migrate)


def _migrate(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _migrate_url(settings.database_url)
    print(f"database migrated: {_redacted(settings.database_url)}", file=sys.stderr)
    return 0


def _migrate_url(url: str) -> None:
    from sqlalchemy.exc import SQLAlchemyError

    from cloud.db.migrate import upgrade

    try:
        upgrade(url)
    except SQLAlchemyError as exc:
        raise B2LError(f"cannot migrate {_redacted(url)}: {_short(exc)}") from None


# -- users, devices, grants ------------------------------------------------------------------


def _add_create_user(commands: Any, common: argparse.ArgumentParser) -> None:
    user = commands.add_parser(
        "create-user",
        parents=[common],
        help="create a user (the password is read from stdin or asked for)",
        description="Create a user with a role; only an argon2id hash of the password is "
        "stored. Without --password-stdin the password is asked for on the terminal.",
    )
    user.add_argument("name", help="login name (letters, digits, . _ : -)")
    user.add_argument("--role", required=True, choices=ROLES, help="the user's role")
    user.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    user.set_defaults(handler=_create_user)


def _create_user(args: argparse.Namespace) -> int:
    from cloud.services.accounts import create_user

    password = _read_password(args.password_stdin)
    settings = _settings(args)
    with _database(settings) as (db, security):
        create_user(db, security, args.name, args.role, password, datetime.now(UTC))
    print(f"user {args.name!r} created with role {args.role}", file=sys.stderr)
    return 0


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        import getpass

        if not sys.stdin.isatty():
            raise B2LError("no terminal to ask for the password: use --password-stdin")
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise B2LError("the passwords differ")
    if not password:
        raise B2LError("empty password")
    return password


def _add_create_device(commands: Any, common: argparse.ArgumentParser) -> None:
    device = commands.add_parser(
        "create-device",
        parents=[common],
        help="create the credentials of a battery's edge runtime (printed once)",
        description="Create a device id and secret for the edge runtime of BATTERY_ID. The "
        "secret is printed once and only its hash is stored: keep it now.",
    )
    device.add_argument("battery_id", metavar="BATTERY_ID", help="a registered battery")
    device.add_argument("--json", action="store_true", help="print the credentials as JSON")
    device.add_argument(
        "--mosquitto-passwd",
        type=Path,
        default=None,
        metavar="FILE",
        help="also set the device's line (user = battery id) in this Mosquitto password file; "
        "send the broker SIGHUP to load it (docs/hil-bench.md)",
    )
    device.set_defaults(handler=_create_device)


def _create_device(args: argparse.Namespace) -> int:
    from cloud.services.accounts import create_device

    settings = _settings(args)
    with _database(settings) as (db, security):
        new = create_device(db, security, args.battery_id, datetime.now(UTC))
    if args.mosquitto_passwd is not None:
        from cloud.security.mosquitto import merge_password_file

        merge_password_file(args.mosquitto_passwd, new.battery_id, new.secret)
        print(f"MQTT user {new.battery_id!r} set in {args.mosquitto_passwd}", file=sys.stderr)
    if args.json:
        print(
            json.dumps(
                {"device_id": new.device_id, "battery_id": new.battery_id, "secret": new.secret}
            )
        )
    else:
        print(f"device_id: {new.device_id}")
        print(f"battery_id: {new.battery_id}")
        print(f"secret: {new.secret}")
        print("the secret is shown only now: store it on the edge device", file=sys.stderr)
    return 0


def _add_revoke_device(commands: Any, common: argparse.ArgumentParser) -> None:
    revoke = commands.add_parser(
        "revoke-device",
        parents=[common],
        help="revoke a device's credentials",
        description="Revoke a device: it can no longer log in or refresh; its current access "
        "token stays valid until it expires (B2L_ACCESS_TOKEN_TTL_S).",
    )
    revoke.add_argument("device_id", metavar="DEVICE_ID")
    revoke.set_defaults(handler=_revoke_device)


def _revoke_device(args: argparse.Namespace) -> int:
    from cloud.services.accounts import revoke_device

    settings = _settings(args)
    with _database(settings) as (db, _security):
        revoke_device(db, args.device_id, datetime.now(UTC))
    print(f"device {args.device_id!r} revoked", file=sys.stderr)
    return 0


def _add_grant(commands: Any, common: argparse.ArgumentParser) -> None:
    grant = commands.add_parser(
        "grant",
        parents=[common],
        help="give a user access to batteries and data categories for a time window",
        description="Grant USER read access (and write access where the role allows it) to "
        "the data categories of one battery or of all, from --from (default: now) until "
        "--until (default: no end). Categories: passport-public, passport-restricted, "
        "telemetry, eis, analytics, commands.",
    )
    grant.add_argument("user", metavar="USER", help="user name")
    grant.add_argument("--battery", required=True, metavar="ID|all", help="battery id or all")
    grant.add_argument(
        "--categories", required=True, metavar="A,B", help="comma-separated data categories"
    )
    grant.add_argument("--from", dest="valid_from", type=_timestamp, default=None, metavar="ISO")
    grant.add_argument("--until", dest="valid_until", type=_timestamp, default=None, metavar="ISO")
    grant.add_argument(
        "--by", dest="granted_by", default="cli", help="who grants (for the record; default: cli)"
    )
    grant.set_defaults(handler=_grant)


def _grant(args: argparse.Namespace) -> int:
    from cloud.services.accounts import grant_access
    from cloud.services.audit import record_audit

    now = datetime.now(UTC)
    categories = [c.strip() for c in args.categories.split(",") if c.strip()]
    battery_id = None if args.battery == "all" else args.battery
    settings = _settings(args)
    with _database(settings) as (db, _security):
        grant_id = grant_access(
            db,
            user_name=args.user,
            battery_id=battery_id,
            categories=categories,
            valid_from=args.valid_from or now,
            valid_until=args.valid_until,
            granted_by=args.granted_by,
            now=now,
        )
        with db.write() as session:
            record_audit(
                session,
                actor=f"cli:{args.granted_by}",
                action="grant",
                battery_id=battery_id,
                detail={"user": args.user, "categories": categories, "grant_id": grant_id},
                at=now,
            )
    print(f"grant {grant_id}: {args.user} -> {args.battery} {','.join(categories)}")
    return 0


# -- development certificates ----------------------------------------------------------------


def _add_dev_ca(commands: Any) -> None:
    ca = commands.add_parser(
        "dev-ca",
        help="write a development CA with server and client certificates (TLS for HTTPS, MQTT)",
        description="Write DIR/ca.pem, ca.key, server.pem, server.key and one "
        "client-NAME.pem/.key per --client. For development and HIL benches only: the CA key "
        "is not encrypted. Serve HTTPS with `b2l cloud serve --tls-cert DIR/server.pem "
        "--tls-key DIR/server.key`; point Mosquitto's cafile/certfile/keyfile at the same files.",
    )
    ca.add_argument("directory", metavar="DIR", type=Path)
    ca.add_argument(
        "--hosts",
        default="localhost,127.0.0.1,::1",
        metavar="H,..",
        help="names and addresses of the server certificate (default: localhost,127.0.0.1,::1)",
    )
    ca.add_argument(
        "--client",
        action="append",
        default=[],
        metavar="NAME",
        help="also write a client certificate for NAME (repeatable)",
    )
    ca.add_argument("--days", type=int, default=365, help="validity in days (default: 365)")
    ca.add_argument("--force", action="store_true", help="overwrite existing files")
    ca.set_defaults(handler=_dev_ca)


def _dev_ca(args: argparse.Namespace) -> int:
    from cloud.security.dev_ca import write_dev_ca

    hosts = [h.strip() for h in args.hosts.split(",") if h.strip()]
    try:
        files = write_dev_ca(
            args.directory,
            datetime.now(UTC),
            hosts=hosts,
            clients=args.client,
            days=args.days,
            overwrite=args.force,
        )
    except OSError as exc:
        raise B2LError(f"cannot write certificates to {args.directory}: {exc}") from None
    for path in (files.ca_cert, files.server_cert, files.server_key):
        print(path)
    for cert, key in files.clients.values():
        print(cert)
        print(key)
    return 0


# -- helpers ---------------------------------------------------------------------------------


def _settings(args: argparse.Namespace) -> CloudSettings:
    from pydantic import ValidationError

    from cloud.settings import CloudSettings

    overrides: dict[str, Any] = {}
    for option, name in (
        ("database_url", "database_url"),
        ("mqtt_url", "mqtt_url"),
        ("client_id", "mqtt_client_id"),
        ("group", "mqtt_group"),
    ):
        if getattr(args, option, None):
            overrides[name] = getattr(args, option)
    try:
        return CloudSettings(**overrides)
    except ValidationError as exc:
        raise B2LError(f"bad B2L_* settings: {exc}") from None


@contextmanager
def _database(settings: CloudSettings) -> Iterator[tuple[Database, SecurityContext]]:
    """A database handle and the security context, disposed at the end; database errors become
    ``B2LError`` with a hint to migrate."""
    from sqlalchemy.exc import SQLAlchemyError

    from cloud.db.engine import Database
    from cloud.security.context import SecurityContext

    security = SecurityContext.from_settings(settings)
    db = Database.from_url(settings.database_url)
    try:
        yield db, security
    except SQLAlchemyError as exc:
        raise B2LError(
            f"database error on {_redacted(settings.database_url)}: {_short(exc)} "
            "(is it reachable, and migrated with `b2l cloud migrate`?)"
        ) from None
    finally:
        db.dispose()


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparsable URL>"


def _short(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"port out of range: {port}")
    return port


def _timestamp(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 timestamp: {text!r}") from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"give a time zone (e.g. Z or +00:00): {text!r}")
    return value.astimezone(UTC)
