"""Operations: liveness, readiness and Prometheus metrics (no token: scrape them from inside
the deployment's network, do not publish them).

- ``GET /healthz``: the process answers.
- ``GET /readyz``: the database answers ``SELECT 1`` and its schema is at the newest migration;
  503 otherwise.
- ``GET /metrics``: Prometheus text exposition (``cloud.metrics``).
"""

from __future__ import annotations

import logging
from typing import Literal

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from cloud.api.deps import StateDep
from cloud.db.migrate import current_revisions
from cloud.metrics import METRICS_CONTENT_TYPE

router = APIRouter(tags=["operations"])
log = logging.getLogger("cloud.ops")


class Health(BaseModel):
    """Liveness answer."""

    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    """Readiness answer: ``ready`` only if the database is reachable and migrated."""

    status: Literal["ready", "unavailable"]
    database: Literal["ok", "unreachable", "outdated"]
    detail: str | None = None


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is alive."""
    return Health()


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Database unreachable or not migrated"}},
)
def readyz(state: StateDep) -> Readiness | JSONResponse:
    """Ready to serve: the database answers and is at the newest schema revision."""
    try:
        with state.db.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        revisions = current_revisions(state.db.engine)
    except SQLAlchemyError as exc:
        log.warning("database unreachable", extra={"fields": {"error": type(exc).__name__}})
        return _unavailable("unreachable", "the database does not answer")
    heads = state.extras.get("schema_heads")
    if isinstance(heads, set) and revisions != heads:
        return _unavailable("outdated", "the database schema is not migrated: b2l cloud migrate")
    return Readiness(status="ready", database="ok")


def _unavailable(database: Literal["unreachable", "outdated"], detail: str) -> JSONResponse:
    body = Readiness(status="unavailable", database=database, detail=detail)
    return JSONResponse(body.model_dump(), status_code=503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus metrics"}},
)
def metrics(state: StateDep) -> Response:
    """Prometheus text exposition of this process's metrics."""
    return Response(state.metrics.render(), media_type=METRICS_CONTENT_TYPE)
