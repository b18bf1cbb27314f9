"""schemathesis against the app's own ``/openapi.json`` (ASGI, SQLite in a temp dir).

Every operation gets a few generated requests (valid and invalid) with an admin token, against a
database holding batteries, a device, a queued command, a grant and some telemetry. Checked:
no 5xx (``not_a_server_error``), every answer's body matches the schema declared for its status
(``response_schema_conformance``), every status is declared (``status_code_conformance``) and
every content type too (``content_type_conformance``). The checks about authentication
(``ignored_auth``, ``missing_required_header``...) are left out on purpose: the token is sent on
every call, and ``tests/integration/test_cloud_security.py`` proves that every route refuses a
missing or bad one (401). Bounded: a few examples per operation, no shrinking.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import schemathesis
from cloud_db_support import T0, telemetry
from cloud_fixtures import CloudHarness, cloud_harness, cloud_settings
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from cloud.app import create_app

pytestmark = pytest.mark.integration

CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
]
MAX_EXAMPLES = 6


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudHarness]:
    """An app on SQLite with B-1/B-2, an admin, a device, a command, a grant, telemetry
    (one for the module: the fuzzed writes pile up in it, as they would in production)."""
    path = tmp_path_factory.mktemp("fuzz") / "fuzz.db"
    with cloud_harness(f"sqlite:///{path}") as harness:
        harness.add_user("root", "admin")
        harness.add_user("ops", "operator")
        harness.grant("ops", "B-1", "telemetry", "commands")
        device_id, secret = harness.add_device("B-1")
        records = [
            telemetry(s, cells=range(4), ts=T0 + timedelta(seconds=10 * s), pillar2=True)
            for s in range(1, 7)
        ]
        posted = harness.client.post(
            "/api/v1/batteries/B-1/telemetry",
            content=json.dumps({"battery_id": "B-1", "records": records}),
            headers={**harness.headers(device_id, secret), "Content-Type": "application/json"},
        )
        assert posted.status_code == 200, posted.text
        created = harness.client.post(
            "/api/v1/batteries/B-1/commands",
            json={"payload": {"type": "reporting_period", "period_s": 5.0}},
            headers=harness.headers("root"),
        )
        assert created.status_code == 201, created.text
        yield harness


def _openapi_document() -> dict[str, Any]:
    """The OpenAPI document of the app (it does not depend on the database's content).

    Built at import, from an app on an in-memory SQLite that is never used:
    ``schemathesis.pytest.from_fixture`` (a schema from a fixture) does not work with pytest 9
    (it writes ``node._nodeid``), so each test sends its cases to the seeded app instead.
    """
    app = create_app(cloud_settings("sqlite://"))
    try:
        document: dict[str, Any] = app.openapi()
    finally:
        app.state.b2l.db.dispose()
    return document


schema = schemathesis.openapi.from_dict(_openapi_document())


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_its_schema(case: Any, seeded: CloudHarness) -> None:
    # aim at the seeded battery: a random id only ever meets the 404 of an unknown battery
    if case.path_parameters and "battery_id" in case.path_parameters:
        case.path_parameters["battery_id"] = "B-1"
    if isinstance(case.body, dict) and isinstance(case.body.get("records"), list):
        case.body["battery_id"] = "B-1"
    headers = {"Authorization": f"Bearer {seeded.login('root')['access_token']}"}
    case.call_and_validate(headers=headers, checks=CHECKS, app=seeded.app)
