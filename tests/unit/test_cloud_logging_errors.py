"""Structured JSON log lines and the HTTP status of each error class."""

from __future__ import annotations

import json
import logging

import pytest

from cloud.api.errors import error_response, status_for
from cloud.errors import BatchRejectedError, NotFoundError, WrongBatteryError
from cloud.logging import JsonFormatter
from cloud.security.errors import AuthenticationError, PermissionDeniedError, RateLimitedError
from twin.errors import (
    B2LError,
    ConfigError,
    SerialCodecError,
    TwinValidationError,
    VersionConflictError,
)

pytestmark = pytest.mark.unit


def test_json_lines() -> None:
    record = logging.LogRecord("cloud.access", logging.INFO, __file__, 1, "GET %s", ("/x",), None)
    record.fields = {"status": 200, "route": "/x", "msg": "not overridden"}
    line = JsonFormatter().format(record)
    entry = json.loads(line)
    assert entry["msg"] == "GET /x" and entry["level"] == "info"
    assert entry["logger"] == "cloud.access"
    assert (entry["status"], entry["route"]) == (200, "/x")
    assert entry["ts"].endswith("+00:00")
    assert "\n" not in line


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (AuthenticationError("x"), 401),
        (PermissionDeniedError("x"), 403),
        (WrongBatteryError("x"), 403),
        (NotFoundError("x"), 404),
        (VersionConflictError(1, 2), 412),
        (TwinValidationError("x"), 422),
        (SerialCodecError("x"), 422),
        (BatchRejectedError("B-1", ["a", "b"]), 422),
        (RateLimitedError("x", 2.5), 429),
        (ConfigError("x"), 400),
        (B2LError("x"), 400),
        (RuntimeError("x"), 500),
    ],
)
def test_status_by_error_class(error: Exception, status: int) -> None:
    assert status_for(error) == status


def test_error_bodies() -> None:
    unauthorized = error_response(AuthenticationError("no token"))
    assert unauthorized.headers["www-authenticate"].startswith("Bearer")
    assert json.loads(unauthorized.body) == {"detail": "no token"}
    limited = error_response(RateLimitedError("slow down", 2.2))
    assert limited.headers["retry-after"] == "3"
    rejected = json.loads(error_response(BatchRejectedError("B-1", ["bad seq", "bad cell"])).body)
    assert [d["msg"] for d in rejected["detail"]] == ["bad seq", "bad cell"]
    assert all(d["loc"] == ["body"] for d in rejected["detail"])
