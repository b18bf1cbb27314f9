"""The twin and command routes through HTTP, on SQLite and PostgreSQL: ETag and If-Match
(412 stale, 409 for a patch that keeps losing races), merge-patch validation, the mirror view,
and the command lifecycle (create, list, pending fetch by the device, detail, cancel)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from cloud_db_support import database_url, simple_cell, telemetry
from cloud_fixtures import CloudHarness, cloud_harness

from cloud.services import twins as twins_service
from cloud.services.batteries import BatteryService
from twin.topology import BatteryTopology

pytestmark = pytest.mark.integration

TWIN = "/api/v1/batteries/B-1/twin"
COMMANDS = "/api/v1/batteries/B-1/commands"
PERIOD = {"payload": {"type": "reporting_period", "period_s": 5.0, "duration_s": 600}}


@pytest.fixture(params=["sqlite", "postgresql"])
def api(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[CloudHarness]:
    """B-1, B-2; admin ``root``; operator ``ops`` with telemetry + commands on B-1; viewer
    ``eve`` with telemetry on B-1 only."""
    url = database_url(request.param, request, tmp_path)
    with cloud_harness(url) as harness:
        harness.add_user("root", "admin")
        harness.add_user("ops", "operator")
        harness.add_user("eve", "viewer")
        harness.grant("ops", "B-1", "telemetry", "commands")
        harness.grant("eve", "B-1", "telemetry", "commands")
        yield harness


# -- twin ------------------------------------------------------------------------------------


def test_get_twin_has_the_document_and_an_etag(api: CloudHarness) -> None:
    response = api.client.get(TWIN, headers=api.headers("ops"))
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"battery_id", "version", "reported", "desired", "delta", "metadata"}
    assert body["version"] == 0 and response.headers["etag"] == '"0"'


def test_patch_desired_with_if_match_then_stale_is_412(api: CloudHarness) -> None:
    ops = api.headers("ops")
    first = api.client.patch(
        f"{TWIN}/desired", json={"reporting_period_s": 5.0}, headers={**ops, "If-Match": '"0"'}
    )
    assert first.status_code == 200, first.text
    assert first.headers["etag"] == '"1"'
    assert first.json()["delta"] == {"reporting_period_s": 5.0}
    assert "reporting_period_s" in first.json()["metadata"]["desired"]
    stale = api.client.patch(
        f"{TWIN}/desired", json={"reporting_period_s": 9.0}, headers={**ops, "If-Match": '"0"'}
    )
    assert stale.status_code == 412
    assert stale.headers["etag"] == '"1"' and "version 1" in stale.json()["detail"]
    current = api.client.get(TWIN, headers=ops)
    assert current.json()["desired"] == {"reporting_period_s": 5.0}
    removed = api.client.patch(
        f"{TWIN}/desired",
        json={"reporting_period_s": None},
        headers={**ops, "If-Match": current.headers["etag"]},
    )
    assert removed.status_code == 200 and removed.json()["desired"] == {}
    assert removed.json()["version"] == 2


def test_patch_without_if_match_merges_into_the_current_version(api: CloudHarness) -> None:
    ops = api.headers("ops")
    for value in ("*", None):
        headers = ops if value is None else {**ops, "If-Match": value}
        response = api.client.patch(
            f"{TWIN}/desired", json={"reporting_period_s": 2.0}, headers=headers
        )
        assert response.status_code == 200
    assert api.client.get(TWIN, headers=ops).json()["version"] == 2


def test_patch_losing_every_race_is_409(api: CloudHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(twins_service.TwinService, "_store_desired", staticmethod(lambda *a: False))
    response = api.client.patch(
        f"{TWIN}/desired", json={"reporting_period_s": 2.0}, headers=api.headers("ops")
    )
    assert response.status_code == 409


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        ({"reporting_period_s": -1}, {}),
        ({"no_such_key": 1}, {}),
        ({"ecm_parameters": {"r0_ohm": 0.01}}, {}),  # the merged result is not valid
        ({"eis_schedule": {"interval_s": 5}}, {}),
        ({"reporting_period_s": 1.0}, {"If-Match": "yesterday"}),
    ],
)
def test_invalid_patches_are_422_and_change_nothing(
    api: CloudHarness, body: dict[str, Any], headers: dict[str, str]
) -> None:
    response = api.client.patch(
        f"{TWIN}/desired", json=body, headers={**api.headers("ops"), **headers}
    )
    assert response.status_code == 422, response.text
    assert isinstance(response.json()["detail"], list)
    assert api.client.get(TWIN, headers=api.headers("ops")).json()["version"] == 0


def test_twin_access(api: CloudHarness) -> None:
    eve = api.headers("eve")
    assert api.client.get(TWIN, headers=eve).status_code == 200
    patch = api.client.patch(f"{TWIN}/desired", json={"reporting_period_s": 2.0}, headers=eve)
    assert patch.status_code == 403  # a viewer never writes
    assert api.client.get("/api/v1/batteries/B-2/twin", headers=eve).status_code == 403
    assert api.client.get("/api/v1/batteries/nope/twin", headers=eve).status_code == 404
    device_id, secret = api.add_device("B-1")
    device = api.headers(device_id, secret)
    assert api.client.get(TWIN, headers=device).status_code == 403


def test_mirror_view(api: CloudHarness) -> None:
    BatteryService(api.db).register(
        "M-1", BatteryTopology(cells_per_module=4), cell_parameters=simple_cell(), now=api.clock()
    )
    root = api.headers("root")
    empty = api.client.get("/api/v1/batteries/M-1/twin/mirror", headers=root).json()
    assert empty["soc"] == [] and empty["timestamp"] is None
    device_id, secret = api.add_device("M-1")
    records = [telemetry(s, cells=range(4)) for s in range(1, 4)]
    posted = api.client.post(
        "/api/v1/batteries/M-1/telemetry",
        content=json.dumps({"battery_id": "M-1", "records": records}),
        headers={**api.headers(device_id, secret), "Content-Type": "application/json"},
    )
    assert posted.status_code == 200, posted.text
    mirror = api.client.get("/api/v1/batteries/M-1/twin/mirror", headers=root).json()
    assert len(mirror["soc"]) == 4 and all(0.0 <= s <= 1.0 for s in mirror["soc"])
    assert (
        api.client.get("/api/v1/batteries/B-1/twin/mirror", headers=api.headers("ops")).status_code
        == 200
    )
    assert (
        api.client.get("/api/v1/batteries/M-1/twin/mirror", headers=api.headers("ops")).status_code
        == 403
    )


# -- commands --------------------------------------------------------------------------------


def test_command_lifecycle(api: CloudHarness) -> None:
    ops = api.headers("ops")
    created = api.client.post(COMMANDS, json={**PERIOD, "ttl_s": 600}, headers=ops)
    assert created.status_code == 201, created.text
    command = created.json()
    assert command["status"] == "queued" and command["created_by"] == "ops"
    assert command["payload"]["type"] == "reporting_period"
    assert created.headers["location"].endswith(command["command_id"])
    listed = api.client.get(COMMANDS, headers=ops).json()
    assert [c["command_id"] for c in listed] == [command["command_id"]]
    # an operator's look at the pending list does not deliver
    pending = api.client.get(COMMANDS, params={"pending": "true"}, headers=ops).json()
    assert [c["status"] for c in pending] == ["queued"]
    device_id, secret = api.add_device("B-1")
    device = api.headers(device_id, secret)
    fetched = api.client.get(COMMANDS, params={"pending": "true"}, headers=device)
    assert fetched.status_code == 200
    assert [c["status"] for c in fetched.json()] == ["delivered"]
    again = api.client.get(COMMANDS, params={"pending": "true"}, headers=device).json()
    assert again[0]["delivery_count"] == 2
    detail = api.client.get(f"{COMMANDS}/{command['command_id']}", headers=ops).json()
    assert [t["new_status"] for t in detail["transitions"]] == ["queued", "delivered", "delivered"]
    cancelled = api.client.post(f"{COMMANDS}/{command['command_id']}/cancel", headers=ops)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    twice = api.client.post(f"{COMMANDS}/{command['command_id']}/cancel", headers=ops)
    assert twice.status_code == 409
    assert api.client.get(COMMANDS, params={"pending": "true"}, headers=device).json() == []
    only = api.client.get(COMMANDS, params={"status": "cancelled"}, headers=ops).json()
    assert len(only) == 1


def test_commands_expire_after_their_ttl(api: CloudHarness) -> None:
    ops = api.headers("ops")
    created = api.client.post(COMMANDS, json={**PERIOD, "ttl_s": 60}, headers=ops).json()
    api.clock.advance(61)
    ops = api.headers("ops")
    detail = api.client.get(f"{COMMANDS}/{created['command_id']}", headers=ops).json()
    assert detail["status"] == "expired"
    cancel = api.client.post(f"{COMMANDS}/{created['command_id']}/cancel", headers=ops)
    assert cancel.status_code == 409


@pytest.mark.parametrize(
    "body",
    [
        {"payload": {"type": "reporting_period", "period_s": 0.0}},
        {"payload": {"type": "launch_missiles"}},
        {"payload": {"type": "reporting_period", "period_s": 5.0}, "ttl_s": 0},
        {"payload": {"type": "reporting_period", "period_s": 5.0}, "ttl_s": 10**9},
        {
            "payload": {
                "type": "eis_start",
                "cell_ids": [0],
                "f_start_hz": 1,
                "f_stop_hz": 1,
                "amplitude_a": 1,
            }
        },
        {"kind": "reporting_period"},
    ],
)
def test_bad_commands_are_422(api: CloudHarness, body: dict[str, Any]) -> None:
    response = api.client.post(COMMANDS, json=body, headers=api.headers("ops"))
    assert response.status_code == 422, response.text
    assert api.client.get(COMMANDS, headers=api.headers("ops")).json() == []


def test_command_access(api: CloudHarness) -> None:
    eve = api.headers("eve")
    assert api.client.post(COMMANDS, json=PERIOD, headers=eve).status_code == 403
    assert api.client.get(COMMANDS, headers=eve).status_code == 200
    ops = api.headers("ops")
    assert (
        api.client.post("/api/v1/batteries/B-2/commands", json=PERIOD, headers=ops).status_code
        == 403
    )
    created = api.client.post(
        "/api/v1/batteries/B-2/commands", json=PERIOD, headers=api.headers("root")
    ).json()
    # a command of B-2 is not found under B-1
    assert api.client.get(f"{COMMANDS}/{created['command_id']}", headers=ops).status_code == 404
    assert api.client.get(f"{COMMANDS}/not-a-uuid", headers=ops).status_code == 422
    device_id, secret = api.add_device("B-1")
    device = api.headers(device_id, secret)
    assert api.client.post(COMMANDS, json=PERIOD, headers=device).status_code == 403
    other = api.client.get("/api/v1/batteries/B-2/commands?pending=true", headers=device)
    assert other.status_code == 403
    # the device's fetch of B-2's queue never delivered it
    detail = api.client.get(
        f"/api/v1/batteries/B-2/commands/{created['command_id']}", headers=api.headers("root")
    ).json()
    assert detail["status"] == "queued"
