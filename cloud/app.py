"""The cloud's composition root: ``create_app(settings)`` builds the FastAPI application.

It refuses default secrets outside development mode, opens the database, builds the security
context and the metrics registry, installs the error handlers and the request middleware (latency
histogram by route template, one structured log line per request) and includes every router of
``cloud.api``. The lifespan disposes the database engine it opened.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloud.api import load_routers
from cloud.api.deps import AppState
from cloud.api.errors import install_error_handlers
from cloud.clock import utc_now
from cloud.db.changes import ChangeListener
from cloud.db.engine import Database, driver_connect_options
from cloud.db.migrate import head_revisions
from cloud.metrics import CloudMetrics
from cloud.security.context import SecurityContext
from cloud.services.audit import AuditWriter
from cloud.services.read_cache import ReadCache
from cloud.settings import CloudSettings

API_TITLE = "b2l cloud"
API_VERSION = "1"
access_log = logging.getLogger("cloud.access")
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,64}")


@asynccontextmanager
async def read_cache(state: AppState) -> AsyncIterator[None]:
    """While the app runs on PostgreSQL: this process's read cache (``state.read_cache``),
    kept true by its own commits and by the change listener, and the audit group commit
    (``state.audit_writer``) of the reads it serves."""
    db, entries = state.db, state.settings.read_cache_entries
    if not db.is_postgresql or entries == 0:
        yield
        return
    cache, options = ReadCache(entries), driver_connect_options(db.engine)
    listener = ChangeListener(options, cache.changed, cache.set_live)
    writer = AuditWriter(options)
    db.add_commit_listener(cache.changed)
    listener.start()
    state.read_cache, state.audit_writer = cache, writer
    state.metrics.watch_read_cache(cache, writer)
    try:
        yield
    finally:
        state.read_cache = state.audit_writer = None
        state.metrics.watch_read_cache(None, None)
        await asyncio.to_thread(listener.stop)
        await writer.close()
        db.remove_commit_listener(cache.changed)


def create_app(
    settings: CloudSettings | None = None,
    *,
    database: Database | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> FastAPI:
    """The application for ``settings`` (default: from the environment).

    ``database``: an open handle to use instead of one made from ``settings.database_url``
    (the caller keeps ownership and disposes it). ``clock``: the source of "now" (tests).
    """
    settings = settings if settings is not None else CloudSettings()
    settings.check_secrets()
    security = SecurityContext.from_settings(settings)
    owns_db = database is None
    db = (
        database
        if database is not None
        else Database.from_url(settings.database_url, pool_size=settings.database_pool_size)
    )
    state = AppState(
        settings=settings, db=db, security=security, metrics=CloudMetrics(), clock=clock
    )
    state.extras["schema_heads"] = head_revisions()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            async with read_cache(state):
                yield
        finally:
            if owns_db:
                db.dispose()

    app = FastAPI(
        title=API_TITLE,
        version=API_VERSION,
        description="Digital twins of second-life batteries: ingestion, twins, history, "
        "commands, passports. Every /api/v1 route but the token route needs a bearer token.",
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.b2l = state
    install_error_handlers(app)
    for router in load_routers():
        app.include_router(router)
    app.add_middleware(RequestMetricsMiddleware, metrics=state.metrics)
    return app


class RequestMetricsMiddleware:
    """Observes each HTTP request's latency by route template and logs one line for it."""

    def __init__(self, app: ASGIApp, metrics: CloudMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start_s = time.perf_counter()
        status = 500
        request_id = _request_id(scope)

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            duration_s = time.perf_counter() - start_s
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.request_latency_s.labels(method, route, str(status)).observe(duration_s)
            if access_log.isEnabledFor(logging.INFO):
                access_log.info(
                    "%s %s %d",
                    method,
                    route,
                    status,
                    extra={"fields": _log_fields(scope, route, status, duration_s, request_id)},
                )


_REQUEST_ID_PREFIX = secrets.token_hex(8)  # this process's; a fork draws its own (below)
_request_numbers = itertools.count(1)


def _new_request_id() -> str:
    """``<process's random prefix>-<counter>``: unique across processes without a call to the
    system's random source per request (uuid4 was 6 % of a twin read's CPU)."""
    return f"{_REQUEST_ID_PREFIX}-{next(_request_numbers):x}"


def _renew_request_id_prefix() -> None:
    global _REQUEST_ID_PREFIX, _request_numbers
    _REQUEST_ID_PREFIX, _request_numbers = secrets.token_hex(8), itertools.count(1)


os.register_at_fork(after_in_child=_renew_request_id_prefix)


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id" and _REQUEST_ID.fullmatch(value):
            return str(value.decode("ascii"))
    return _new_request_id()


def _log_fields(
    scope: Scope, route: str, status: int, duration_s: float, request_id: str
) -> dict[str, Any]:
    client = scope.get("client")
    return {
        "method": scope.get("method"),
        "path": scope.get("path"),
        "route": route,
        "status": status,
        "duration_ms": round(duration_s * 1000.0, 3),
        "client": client[0] if client else None,
        "request_id": request_id,
    }
