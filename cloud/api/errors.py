"""Error responses: every ``B2LError`` and every validation error becomes a 4xx JSON answer.

Bodies are ``{"detail": "message"}`` (as FastAPI's own ``HTTPException``), except 422 whose
``detail`` is a list of ``{"loc", "msg", "type"}`` objects, as FastAPI's request validation
errors, so every 422 has the one shape the OpenAPI document declares. Status by error class
(the most specific class in ``ERROR_STATUS`` wins):

=====  =================================================================================
401    ``AuthenticationError`` (with ``WWW-Authenticate: Bearer``)
403    ``PermissionDeniedError``, ``WrongBatteryError``
404    ``NotFoundError``
409    ``AlreadyExistsError``, ``InvalidTransitionError``, ``ConcurrentUpdateError``
412    ``VersionConflictError`` (a stale ``If-Match``)
413    ``PayloadTooLargeError`` (a body above the route's limit)
415    ``UnsupportedMediaError`` (a content type or content encoding the route does not take)
422    ``TwinValidationError``, ``CodecError``, ``BatchRejectedError``, ``QueryLimitError``,
       and pydantic ``ValidationError`` (a model built from input inside a route or service)
429    ``RateLimitedError`` (with ``Retry-After``)
400    any other ``B2LError``
500    anything else: a bug, logged with its traceback, answered without details
=====  =================================================================================
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from cloud.errors import (
    AlreadyExistsError,
    BatchRejectedError,
    ConcurrentUpdateError,
    InvalidTransitionError,
    NotFoundError,
    PayloadTooLargeError,
    QueryLimitError,
    UnsupportedMediaError,
    WrongBatteryError,
)
from cloud.security.errors import (
    AuthenticationError,
    PermissionDeniedError,
    RateLimitedError,
)
from twin.errors import B2LError, CodecError, TwinValidationError, VersionConflictError

log = logging.getLogger("cloud.api")

ERROR_STATUS: dict[type[BaseException], int] = {
    AuthenticationError: 401,
    PermissionDeniedError: 403,
    WrongBatteryError: 403,
    NotFoundError: 404,
    AlreadyExistsError: 409,
    InvalidTransitionError: 409,
    ConcurrentUpdateError: 409,
    VersionConflictError: 412,
    PayloadTooLargeError: 413,
    UnsupportedMediaError: 415,
    TwinValidationError: 422,
    CodecError: 422,
    BatchRejectedError: 422,
    QueryLimitError: 422,
    RateLimitedError: 429,
    B2LError: 400,
}
"""Status by error class; add a class here to give it its own status."""
BODY_PARSE_ERROR = "There was an error parsing the body"
"""FastAPI's 400 detail for a body it cannot decode (answered as a 422 instead)."""


class ErrorBody(BaseModel):
    """The body of every non-422 error answer."""

    detail: str


def _described(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: _described("No token, or an invalid, expired or revoked one"),
}
"""OpenAPI ``responses`` of every authenticated route."""

BATTERY_RESPONSES: dict[int | str, dict[str, Any]] = {
    **AUTH_RESPONSES,
    403: _described("Authenticated, but no grant for this battery and data category"),
    404: _described("No such battery"),
}
"""OpenAPI ``responses`` of every route under ``/api/v1/batteries/{battery_id}``."""

RATE_LIMIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    429: _described("Over the device's ingestion rate; retry after Retry-After seconds"),
}
"""OpenAPI ``responses`` of the ingestion routes (add to ``BATTERY_RESPONSES``)."""


def status_for(exc: BaseException) -> int:
    """The HTTP status of an error, by the most specific class found in ``ERROR_STATUS``."""
    for cls in type(exc).__mro__:
        if cls in ERROR_STATUS:
            return ERROR_STATUS[cls]
    return 500


def error_response(exc: B2LError) -> JSONResponse:
    """The JSON answer for a ``B2LError``."""
    status = status_for(exc)
    headers: dict[str, str] = {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
    if isinstance(exc, RateLimitedError):
        retry_s = exc.retry_after_s
        headers["Retry-After"] = "3600" if math.isinf(retry_s) else str(max(1, math.ceil(retry_s)))
    if isinstance(exc, VersionConflictError):
        headers["ETag"] = f'"{exc.actual}"'  # the version to re-read and retry from
    if status == 422:
        reasons = exc.reasons if isinstance(exc, BatchRejectedError) else [str(exc)]
        detail: Any = [
            {"loc": ["body"], "msg": reason, "type": type(exc).__name__} for reason in reasons
        ]
    else:
        detail = str(exc)
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


async def _b2l_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, B2LError)
    return error_response(exc)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError | ValidationError)
    errors = []
    for error in exc.errors():
        errors.append(
            {
                "loc": list(error.get("loc", ())),
                "msg": str(error.get("msg", "invalid value")),
                "type": str(error.get("type", "value_error")),
            }
        )
    return JSONResponse({"detail": errors}, status_code=422)


async def _http_error(request: Request, exc: Exception) -> Response:
    """FastAPI's own HTTP errors, except its 400 for a body that does not decode (not UTF-8
    JSON): that is a 422 of the one validation shape, like every other bad body."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and exc.detail == BODY_PARSE_ERROR:
        error = {"loc": ["body"], "msg": "the body is not valid UTF-8 JSON", "type": "json_invalid"}
        return JSONResponse({"detail": [error]}, status_code=422)
    return await http_exception_handler(request, exc)


async def _data_error(request: Request, exc: Exception) -> JSONResponse:
    """A value the database refuses although validation let it through: the transaction was
    rolled back (nothing written); a 422, counted and logged, not a 500."""
    assert isinstance(exc, sa_exc.DataError)
    reason = str(exc.orig or exc).strip().splitlines()[0][:300]
    state = getattr(request.app.state, "b2l", None)
    if state is not None:
        state.metrics.rejects.labels(channel="http", reason="data_error").inc()
    log.warning(
        "the database refused a value on %s %s: %s", request.method, request.url.path, reason
    )
    error = {
        "loc": ["body"],
        "msg": f"the database refused a value: {reason}",
        "type": "data_error",
    }
    return JSONResponse({"detail": [error]}, status_code=422)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.error(
        "unhandled error on %s %s",
        request.method,
        request.url.path,
        exc_info=exc,
        extra={"fields": {"path": request.url.path, "error": type(exc).__name__}},
    )
    return JSONResponse({"detail": "internal error"}, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers above on ``app``."""
    app.add_exception_handler(B2LError, _b2l_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ValidationError, _validation_error)  # a model built from input
    app.add_exception_handler(sa_exc.DataError, _data_error)
    app.add_exception_handler(Exception, _unexpected_error)
