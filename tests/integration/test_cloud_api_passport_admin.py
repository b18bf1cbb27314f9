"""Passport, analytics and admin routes through HTTP, on SQLite and PostgreSQL: reads by
access tier (audited above public), writes by the manufacturer only, lifecycle changes audited,
the Battery Pass export, the analytics summary, and users/devices/grants/batteries admin."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cloud_db_support import T0, database_url, p1_cell
from cloud_fixtures import PASSWORD, CloudHarness, cloud_harness
from sqlalchemy import select

from cloud.db.security_models import AuditEntry
from cloud.services.batteries import BatteryService
from twin.sizing import EVOLUTION_LENGTH

pytestmark = pytest.mark.integration

PASSPORT = "/api/v1/batteries/B-1/passport"
ATTRIBUTES = {
    "productIdentifier": "ACME-42",
    "manufacturerName": "ACME GmbH",
    "batteryChemistry": "NMC",
    "ratedCapacity": 100.0,
}


@pytest.fixture(params=["sqlite", "postgresql"])
def api(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[CloudHarness]:
    """B-1 and B-2 made by ``acme``; admin ``root``; ``acme`` (manufacturer), ``other``
    (manufacturer of nothing), ``repair`` (viewer with passport-restricted on B-1),
    ``ana`` (service with analytics on B-1)."""
    url = database_url(request.param, request, tmp_path)
    with cloud_harness(url) as harness:
        for name, role in (
            ("root", "admin"),
            ("acme", "manufacturer"),
            ("other", "manufacturer"),
            ("repair", "viewer"),
            ("ana", "service"),
        ):
            harness.add_user(name, role)
        harness.grant("repair", "B-1", "passport-restricted")
        harness.grant("ana", "B-1", "analytics")
        yield harness


def _audit(api: CloudHarness, action: str) -> list[AuditEntry]:
    with api.db.read() as session:
        return list(session.scalars(select(AuditEntry).where(AuditEntry.action == action)))


def _restricted_attribute() -> str:
    from twin.passport import PASSPORT_ATTRIBUTES, AccessTier

    return next(
        name
        for name, attr in sorted(PASSPORT_ATTRIBUTES.items())
        if attr.tier is AccessTier.LEGITIMATE_INTEREST
    )


# -- passport --------------------------------------------------------------------------------


def test_manufacturer_writes_and_tiers_read(api: CloudHarness) -> None:
    restricted = _restricted_attribute()
    body = {
        "attributes": {**ATTRIBUTES, restricted: "detail", "x-colour": "blue"},
        "extensions": {"x-colour": {"tier": 1, "description": "case colour"}},
    }
    acme = api.headers("acme")
    put = api.client.put(PASSPORT, json=body, headers=acme)
    assert put.status_code == 200, put.text
    assert put.json()["tier"] == "authority"
    assert put.json()["attributes"]["x-colour"] == "blue"
    assert _audit(api, "passport.write")[0].actor == "user:acme"

    public = api.client.get(PASSPORT, headers=api.headers("other")).json()
    assert public["tier"] == "public" and public["lifecycle_status"] is None
    assert restricted not in public["attributes"] and "x-colour" not in public["attributes"]
    assert public["attributes"]["productIdentifier"] == "ACME-42"

    reads_before = len(_audit(api, "read"))
    repair = api.client.get(PASSPORT, headers=api.headers("repair")).json()
    assert repair["tier"] == "legitimate_interest" and repair["lifecycle_status"] == "original"
    assert repair["attributes"][restricted] == "detail"
    assert len(_audit(api, "read")) == reads_before + 1  # the restricted read is audited

    export = api.client.get(f"{PASSPORT}/export", headers=api.headers("repair"))
    assert export.status_code == 200
    document = export.json()["batteryPassport"]
    assert document["productIdentifier"] == "ACME-42"
    assert document["accessTier"] == "legitimate_interest"
    assert document["extensions"]["x-colour"]["value"] == "blue"


def test_only_the_manufacturer_writes(api: CloudHarness) -> None:
    body = {"attributes": ATTRIBUTES}
    for user in ("other", "repair", "ana"):
        response = api.client.put(PASSPORT, json=body, headers=api.headers(user))
        assert response.status_code == 403, user
    device_id, secret = api.add_device("B-1")
    assert (
        api.client.put(PASSPORT, json=body, headers=api.headers(device_id, secret)).status_code
        == 403
    )
    assert api.client.put(PASSPORT, json=body, headers=api.headers("root")).status_code == 200
    assert (
        api.client.put(
            "/api/v1/batteries/B-9/passport", json=body, headers=api.headers("acme")
        ).status_code
        == 404
    )


@pytest.mark.parametrize(
    "body",
    [
        {"attributes": {"madeUpName": 1}},
        {"attributes": {"x-undeclared": 1}},
        {"attributes": {}, "lifecycle_status": "exploded"},
        {"attributes": {}, "surprise": True},
        {"attributes": {}, "lifecycle_status": "repurposed", "reason": "x" * 201},
        {"attributes": {**ATTRIBUTES, "productIdentifier": "ACME\u000042"}},  # a NUL
        '{"attributes": {"productIdentifier": "ACME-42", "ratedCapacity": 1e400}}',  # infinity
    ],
)
def test_bad_passports_are_422(api: CloudHarness, body: dict[str, Any] | str) -> None:
    headers = api.headers("acme")
    if isinstance(body, str):  # raw JSON text
        headers = {**headers, "Content-Type": "application/json"}
        response = api.client.put(PASSPORT, content=body, headers=headers)
    else:
        response = api.client.put(PASSPORT, json=body, headers=headers)
    assert response.status_code == 422, response.text
    assert _audit(api, "passport.write") == []


def test_lifecycle_changes_are_audited_with_history(api: CloudHarness) -> None:
    acme = api.headers("acme")
    body = {"attributes": ATTRIBUTES, "lifecycle_status": "repurposed", "reason": "2nd life"}
    assert api.client.put(PASSPORT, json=body, headers=acme).status_code == 200
    changes = _audit(api, "lifecycle.change")
    assert len(changes) == 1 and changes[0].detail["new_status"] == "repurposed"
    history = api.client.get(f"{PASSPORT}/status-history", headers=api.headers("repair"))
    assert history.status_code == 200
    assert [h["new_status"] for h in history.json()] == ["original", "repurposed"]
    assert history.json()[1]["changed_by"] == "acme"
    # a forbidden transition changes nothing, the attributes included
    back = {"attributes": {"productIdentifier": "CHANGED"}, "lifecycle_status": "original"}
    refused = api.client.put(PASSPORT, json=back, headers=acme)
    assert refused.status_code == 409
    current = api.client.get(PASSPORT, headers=acme).json()
    assert current["attributes"]["productIdentifier"] == "ACME-42"
    assert current["lifecycle_status"] == "repurposed"
    # the history is legitimate-interest data
    assert (
        api.client.get(f"{PASSPORT}/status-history", headers=api.headers("other")).status_code
        == 403
    )


# -- analytics -------------------------------------------------------------------------------


def _sizing() -> dict[str, Any]:
    n = EVOLUTION_LENGTH
    return {
        "timestamp": T0.isoformat(),
        "soc_max": 0.95,
        "soc_min": 0.05,
        "fec_per_day": 1.0,
        "days_per_year": 365.0,
        "soh_at_eol": 0.7,
        "e_nom_wh": 5000.0,
        "i_cha_max_a": 50.0,
        "i_cha_std_a": 20.0,
        "i_dch_max_a": 50.0,
        "i_dch_mean_a": 20.0,
        "lifespan_years": 10.0,
        "lifespan_fec": 4000.0,
        "n_packs": 1,
        "n_modules": 1,
        "n_cells": 4,
        "oem_id": "acme",
        "project_id": "p1",
        "system_id": "s1",
        "t_max_c": 45.0,
        "t_avg_c": 25.0,
        "t_min_c": 0.0,
        "xh0_time": [0.0, 1.0, 2.0, 3.0, 4.0],
        "xh0_fec": [0.0, 1.0, 2.0, 3.0, 4.0],
        "soh_evolution": [1.0 - 0.3 * k / (n - 1) for k in range(n)],
        "fec_evolution": [4000.0 * k / (n - 1) for k in range(n)],
        "time_evolution": [3650.0 * k / (n - 1) for k in range(n)],
    }


def test_register_and_analytics(api: CloudHarness) -> None:
    root = api.headers("root")
    registered = api.client.post(
        "/api/v1/batteries",
        json={
            "battery_id": "A-1",
            "topology": {"cells_per_module": 4},
            "sizing": _sizing(),
            "manufacturer": "acme",
        },
        headers=root,
    )
    assert registered.status_code == 201, registered.text
    assert registered.headers["location"] == "/api/v1/batteries/A-1"
    again = api.client.post(
        "/api/v1/batteries",
        json={"battery_id": "A-1", "topology": {"cells_per_module": 4}},
        headers=root,
    )
    assert again.status_code == 409
    device_id, secret = api.add_device("A-1")
    records = []
    for day in range(5):  # SoH 0.95 fading 0.001 per day, 2 cycles a day
        ts = T0 + timedelta(days=day)
        records.append(
            {
                "kind": "telemetry",
                "seq": day + 1,
                "timestamp": ts.isoformat(),
                "pillar1": [p1_cell(c, day) for c in range(4)],
                "pillar2": [
                    {
                        "cell_id": c,
                        "soc": 0.5,
                        "soh": 0.95 - 0.001 * day,
                        "sos": 0.9,
                        "equivalent_cycles": 100.0 + 2 * day,
                    }
                    for c in range(4)
                ],
                "estimates": [{"cell_id": c, "soc": 0.5, "soc_std": 0.01} for c in range(4)],
            }
        )
    records.append(
        {
            "kind": "event",
            "seq": 6,
            "timestamp": T0.isoformat(),
            "event_type": "safety.alarm",
            "severity": "alarm",
        }
    )
    posted = api.client.post(
        "/api/v1/batteries/A-1/telemetry",
        content=json.dumps({"battery_id": "A-1", "records": records}),
        headers={**api.headers(device_id, secret), "Content-Type": "application/json"},
    )
    assert posted.status_code == 200, posted.text
    summary = api.client.get("/api/v1/batteries/A-1/analytics", headers=root)
    assert summary.status_code == 200, summary.text
    data = summary.json()
    assert data["n_cells"] == 4 and data["records_by_kind"] == {"telemetry": 5, "event": 1}
    assert data["alarms"] == 1 and data["events_by_type"] == {"safety.alarm": 1}
    soh = data["soh"]
    assert len(soh["points"]) == 5
    assert soh["latest_soh_mean"] == pytest.approx(0.946)
    assert soh["fade_per_1000_fec"] == pytest.approx(-0.5)  # -0.001 per 2 cycles
    assert soh["fade_per_year"] == pytest.approx(-0.001 * 365.25)
    assert data["equivalent_cycles"] == {"cells": 4, "mean": 108.0, "max": 108.0}
    expected = 1.0 - 0.3 * 108.0 / 4000.0
    assert data["warranty"]["expected_soh"] == pytest.approx(expected)
    assert data["warranty"]["margin"] == pytest.approx(0.946 - expected)
    assert data["soc_divergence"]["compared_cells"] == 0  # no cell model: no mirror
    window = api.client.get(
        "/api/v1/batteries/A-1/analytics",
        params={"start": (T0 + timedelta(days=3)).isoformat()},
        headers=root,
    ).json()
    assert len(window["soh"]["points"]) == 2 and window["records_by_kind"]["telemetry"] == 2


def test_analytics_access_and_bad_queries(api: CloudHarness) -> None:
    path = "/api/v1/batteries/B-1/analytics"
    empty = api.client.get(path, headers=api.headers("ana"))
    assert empty.status_code == 200
    assert empty.json()["soh"]["latest_soh_mean"] is None and empty.json()["warranty"] is None
    assert api.client.get(path, headers=api.headers("repair")).status_code == 403
    assert (
        api.client.get("/api/v1/batteries/B-2/analytics", headers=api.headers("ana")).status_code
        == 403
    )
    root = api.headers("root")
    start = datetime(2025, 1, 2, tzinfo=UTC).isoformat()
    end = datetime(2025, 1, 1, tzinfo=UTC).isoformat()
    for params in ({"start": start, "end": end}, {"bucket_s": 1}, {"start": "2025-01-01T00:00"}):
        assert api.client.get(path, params=params, headers=root).status_code == 422, params


# -- admin -----------------------------------------------------------------------------------


def test_admin_users_devices_and_grants(api: CloudHarness) -> None:
    root = api.headers("root")
    user = api.client.post(
        "/api/v1/admin/users",
        json={"name": "newop", "role": "operator", "password": PASSWORD},
        headers=root,
    )
    assert user.status_code == 201 and user.json() == {
        "name": "newop",
        "role": "operator",
        "disabled": False,
    }
    names = [u["name"] for u in api.client.get("/api/v1/admin/users", headers=root).json()]
    assert "newop" in names
    newop = api.headers("newop")
    assert api.client.get("/api/v1/batteries/B-1/twin", headers=newop).status_code == 403

    grant = api.client.post(
        "/api/v1/admin/grants",
        json={"user": "newop", "battery_id": "B-1", "categories": ["telemetry"]},
        headers=root,
    )
    assert grant.status_code == 201, grant.text
    assert grant.json()["categories"] == ["telemetry"] and grant.json()["granted_by"] == "root"
    assert api.client.get("/api/v1/batteries/B-1/twin", headers=newop).status_code == 200
    listed = api.client.get("/api/v1/admin/grants", params={"user": "newop"}, headers=root).json()
    assert [g["grant_id"] for g in listed] == [grant.json()["grant_id"]]
    deleted = api.client.delete(f"/api/v1/admin/grants/{grant.json()['grant_id']}", headers=root)
    assert deleted.status_code == 204
    assert api.client.get("/api/v1/batteries/B-1/twin", headers=newop).status_code == 403
    assert (
        api.client.delete(
            f"/api/v1/admin/grants/{grant.json()['grant_id']}", headers=root
        ).status_code
        == 404
    )

    device = api.client.post("/api/v1/admin/devices", json={"battery_id": "B-2"}, headers=root)
    assert device.status_code == 201
    creds = device.json()
    assert creds["device_id"].startswith("dev-") and len(creds["secret"]) >= 32
    token = api.headers(creds["device_id"], creds["secret"])
    assert api.client.get("/api/v1/auth/me", headers=token).json()["battery_id"] == "B-2"
    devices = api.client.get("/api/v1/admin/devices", params={"battery_id": "B-2"}, headers=root)
    assert [d["device_id"] for d in devices.json()] == [creds["device_id"]]
    assert "secret" not in devices.json()[0]
    revoked = api.client.delete(f"/api/v1/admin/devices/{creds['device_id']}", headers=root)
    assert revoked.status_code == 204
    refused = api.client.post(
        "/api/v1/auth/token", data={"username": creds["device_id"], "password": creds["secret"]}
    )
    assert refused.status_code == 401
    actions = {e.action for e in _audit(api, "grant.create") + _audit(api, "device.create")}
    assert actions == {"grant.create", "device.create"}


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/api/v1/admin/users", {"name": "dev-x", "role": "viewer", "password": PASSWORD}, 422),
        ("/api/v1/admin/users", {"name": "x", "role": "device", "password": PASSWORD}, 422),
        ("/api/v1/admin/users", {"name": "x", "role": "viewer", "password": "short"}, 422),
        ("/api/v1/admin/users", {"name": "root", "role": "viewer", "password": PASSWORD}, 409),
        ("/api/v1/admin/devices", {"battery_id": "B-9"}, 404),
        ("/api/v1/admin/grants", {"user": "nobody", "categories": ["telemetry"]}, 404),
        ("/api/v1/admin/grants", {"user": "acme", "categories": ["events"]}, 422),
        ("/api/v1/admin/grants", {"user": "acme", "categories": []}, 422),
        (
            "/api/v1/admin/grants",
            {
                "user": "acme",
                "categories": ["eis"],
                "valid_from": "2025-01-02T00:00:00Z",
                "valid_until": "2025-01-01T00:00:00Z",
            },
            422,
        ),
        ("/api/v1/batteries", {"battery_id": "bad id", "topology": {"cells_per_module": 4}}, 422),
        ("/api/v1/batteries", {"battery_id": "N-1", "topology": {}}, 422),
    ],
)
def test_admin_bad_requests(
    api: CloudHarness, path: str, body: dict[str, Any], status: int
) -> None:
    response = api.client.post(path, json=body, headers=api.headers("root"))
    assert response.status_code == status, response.text


def test_admin_routes_are_for_admins_only(api: CloudHarness) -> None:
    acme = api.headers("acme")
    for method, path, body in (
        ("GET", "/api/v1/admin/users", None),
        ("POST", "/api/v1/admin/devices", {"battery_id": "B-1"}),
        ("GET", "/api/v1/admin/grants", None),
        ("DELETE", "/api/v1/admin/grants/1", None),
        ("POST", "/api/v1/batteries", {"battery_id": "Z", "topology": {"cells_per_module": 1}}),
    ):
        response = api.client.request(method, path, json=body, headers=acme)
        assert response.status_code == 403, (method, path)
    assert not BatteryService(api.db).exists("Z")


def test_a_value_the_database_refuses_is_a_422_not_a_500(pg_database: Any) -> None:
    """A refusal validation cannot foresee (here a trigger this test adds raises SQLSTATE
    22023): the write is rolled back, the answer is a clear 422, and it is counted."""
    from sqlalchemy import text

    from cloud.db.migrate import upgrade

    upgrade(pg_database.url)
    with cloud_harness(pg_database.url) as harness:
        harness.add_user("acme", "manufacturer")
        with harness.db.write() as session:
            session.execute(text("UPDATE batteries SET manufacturer = 'acme'"))
            session.execute(
                text(
                    "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                    "RAISE EXCEPTION 'no such capacity' USING ERRCODE = '22023'; END $$"
                )
            )
            session.execute(
                text(
                    "CREATE TRIGGER refuse_capacity BEFORE INSERT OR UPDATE ON passports "
                    "FOR EACH ROW WHEN ((NEW.attributes->>'ratedCapacity')::float > 1e6) "
                    "EXECUTE FUNCTION refuse()"
                )
            )
        body = {"attributes": {**ATTRIBUTES, "ratedCapacity": 1e7}}
        response = harness.client.put(PASSPORT, json=body, headers=harness.headers("acme"))
        assert response.status_code == 422, response.text
        assert "no such capacity" in response.json()["detail"][0]["msg"]
        rejects = harness.state.metrics.rejects.labels(channel="http", reason="data_error")
        assert rejects._value.get() == 1
        ok = harness.client.put(
            PASSPORT, json={"attributes": ATTRIBUTES}, headers=harness.headers("acme")
        )
        assert ok.status_code == 200  # the process goes on
