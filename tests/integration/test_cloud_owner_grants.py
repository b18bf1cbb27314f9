"""The owner of a battery (SPEC section 5): reads all of it and grants others access to it.

On SQLite and a real PostgreSQL: an admin registers a battery with its owner; the owner reads
every category without a grant, grants a viewer some categories for a time window, sees and
withdraws that grant; nobody else manages the battery's grants, and an owner cannot touch
grants on another battery. Every change is audited.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from cloud_db_support import T0, database_url
from cloud_fixtures import CloudHarness, cloud_harness
from sqlalchemy import select

from cloud.db.security_models import AuditEntry
from cloud.security.policy import Action, Category, Principal, Role, decide

pytestmark = pytest.mark.integration

TOPOLOGY = {"n_packs": 1, "modules_per_pack": 1, "cells_per_module": 4, "cells_in_parallel": 1}


@pytest.fixture(params=["sqlite", "postgresql"])
def cloud(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[CloudHarness]:
    url = database_url(request.param, request, tmp_path)
    with cloud_harness(url) as harness:
        harness.add_user("root", "admin")
        harness.add_user("olga", "operator")
        harness.add_user("vic", "viewer")
        harness.add_user("eve", "viewer")
        response = harness.client.post(
            "/api/v1/batteries",
            json={"battery_id": "OWNED-1", "topology": TOPOLOGY, "owner": "olga"},
            headers=harness.headers("root"),
        )
        assert response.status_code == 201, response.text
        assert response.json()["owner"] == "olga"
        yield harness


def test_the_owner_reads_everything_and_grants_access(cloud: CloudHarness) -> None:
    olga, vic = cloud.headers("olga"), cloud.headers("vic")
    twin = "/api/v1/batteries/OWNED-1/twin"
    assert cloud.client.get(twin, headers=olga).status_code == 200  # no grant needed
    assert cloud.client.get(twin, headers=vic).status_code == 403
    assert cloud.client.get("/api/v1/batteries/B-1/twin", headers=olga).status_code == 403

    now = cloud.clock()
    created = cloud.client.post(
        "/api/v1/batteries/OWNED-1/grants",
        json={
            "user": "vic",
            "categories": ["telemetry"],
            "valid_until": (now.replace(year=now.year + 1)).isoformat(),
        },
        headers=olga,
    )
    assert created.status_code == 201, created.text
    grant = created.json()
    assert (grant["battery_id"], grant["granted_by"], grant["categories"]) == (
        "OWNED-1",
        "olga",
        ["telemetry"],
    )
    assert cloud.client.get(twin, headers=vic).status_code == 200
    listed = cloud.client.get("/api/v1/batteries/OWNED-1/grants", headers=olga).json()
    assert [g["grant_id"] for g in listed] == [grant["grant_id"]]

    gone = cloud.client.delete(
        f"/api/v1/batteries/OWNED-1/grants/{grant['grant_id']}", headers=olga
    )
    assert gone.status_code == 204
    assert cloud.client.get(twin, headers=vic).status_code == 403
    with cloud.db.read() as session:
        actions = session.scalars(
            select(AuditEntry.action).where(AuditEntry.battery_id == "OWNED-1")
        ).all()
    assert {"grant.create", "grant.delete"} <= set(actions)


def test_only_the_owner_or_an_admin_manages_the_grants(cloud: CloudHarness) -> None:
    eve = cloud.headers("eve")
    body = {"user": "eve", "categories": ["telemetry", "eis"]}
    assert (
        cloud.client.post("/api/v1/batteries/OWNED-1/grants", json=body, headers=eve).status_code
        == 403
    )
    assert cloud.client.get("/api/v1/batteries/OWNED-1/grants", headers=eve).status_code == 403
    admin = cloud.client.post(
        "/api/v1/batteries/OWNED-1/grants", json=body, headers=cloud.headers("root")
    )
    assert admin.status_code == 201
    # a grant on another battery is not the owner's to withdraw, nor to create
    cloud.grant("eve", "B-1", "telemetry")
    grants = cloud.client.get("/api/v1/admin/grants", headers=cloud.headers("root")).json()
    other = next(g for g in grants if g["battery_id"] == "B-1")
    olga = cloud.headers("olga")
    assert (
        cloud.client.delete(
            f"/api/v1/batteries/OWNED-1/grants/{other['grant_id']}", headers=olga
        ).status_code
        == 404
    )
    assert (
        cloud.client.post("/api/v1/batteries/B-1/grants", json=body, headers=olga).status_code
        == 403
    )
    assert cloud.client.get("/api/v1/batteries/NOPE/grants", headers=olga).status_code == 404


def test_the_policy_gives_the_owner_reads_and_role_writes() -> None:
    viewer = Principal("vo", Role.VIEWER)
    operator = Principal("oo", Role.OPERATOR)
    for category in (Category.TELEMETRY, Category.EIS, Category.PASSPORT_RESTRICTED):
        assert decide(viewer, "X", category, Action.READ, T0, owner="vo")
        assert not decide(viewer, "X", category, Action.READ, T0, owner="someone-else")
    assert not decide(viewer, "X", Category.COMMANDS, Action.WRITE, T0, owner="vo")
    assert decide(operator, "X", Category.COMMANDS, Action.WRITE, T0, owner="oo")
    assert not decide(operator, "X", Category.EVENTS, Action.WRITE, T0, owner="oo")
