"""The HTTPS uplink (plain HTTP on loopback here) against the real cloud app on SQLite.

``edge_support.CloudServer`` serves ``cloud.app.create_app`` with uvicorn on a loopback port: the
edge logs in with its device credentials, POSTs gzip batches, polls pending commands, and its
acks close them; a cloud outage keeps every record in the outbox; a refused record is
dead-lettered without blocking the others.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from edge_support import CloudServer

from edge_runtime.backoff import Backoff
from edge_runtime.forwarder import Forwarder
from edge_runtime.outbox import Outbox
from edge_runtime.uplink import Delivery, Outcome
from edge_runtime.uplink.http import HttpUplink, classify_response
from twin.commands import Command, CommandAck, CommandStatus
from twin.measurements import CellEstimate, PackMeasurement
from twin.uplink import AckRecord, TelemetryRecord

pytestmark = pytest.mark.integration


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def telemetry(cell: int = 0) -> TelemetryRecord:
    return TelemetryRecord(
        seq=1,
        timestamp=datetime.now(UTC),
        packs=[PackMeasurement(voltage_v=14.8, current_a=-2.0)],
        estimates=[CellEstimate(cell_id=cell, soc=0.5, soc_std=0.01, sos=1.0)],
    )


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[CloudServer]:
    server = CloudServer(tmp_path)
    server.start()
    yield server
    server.close()


class Edge:
    def __init__(self, tmp_path: Path, cloud: CloudServer, secret: str | None = None) -> None:
        self.outbox = Outbox(tmp_path / "outbox.sqlite", cloud.battery_id, batch_max_records=25)
        self.uplink = HttpUplink(
            cloud.battery_id,
            cloud.base_url,
            cloud.device_id,
            secret or cloud.secret,
            timeout_s=5.0,
            command_poll_s=0.5,
        )
        self.commands: list[Command] = []
        self.forwarder = Forwarder(
            self.outbox,
            self.uplink,
            backoff=Backoff(0.1, 0.5, random.Random(1)),
            on_command=self.commands.append,
        )
        self.forwarder.start()

    def close(self) -> None:
        self.forwarder.stop()
        self.uplink.close()
        self.outbox.close()


@pytest.fixture
def edge(tmp_path: Path, cloud: CloudServer) -> Iterator[Edge]:
    e = Edge(tmp_path, cloud)
    yield e
    e.close()


def test_batches_are_stored_once_and_leave_the_outbox(edge: Edge, cloud: CloudServer) -> None:
    edge.outbox.enqueue_many([telemetry(k % 4) for k in range(60)])
    wait_for(lambda: edge.outbox.pending_records == 0, 15, "the outbox to empty")
    assert cloud.stored_seqs() == list(range(1, 61))
    assert edge.uplink.compress is True, "the cloud takes gzip"
    assert edge.uplink.status()["auth_failures"] == 0
    # the twin shows what arrived
    twin = httpx.get(
        f"{cloud.base_url}/api/v1/batteries/{cloud.battery_id}/twin",
        headers=cloud.admin_headers(),
    ).json()
    assert twin["reported"]["seq"] == 60


def test_a_cloud_outage_keeps_every_record_and_replays_in_order(
    edge: Edge, cloud: CloudServer
) -> None:
    edge.outbox.enqueue_many([telemetry() for _ in range(10)])
    wait_for(lambda: edge.outbox.pending_records == 0, 15, "the first records")
    cloud.stop()
    edge.outbox.enqueue_many([telemetry() for _ in range(40)])
    time.sleep(1.5)
    assert edge.outbox.pending_records == 40, "a failing uplink keeps them"
    assert edge.forwarder.retries >= 2
    assert edge.uplink.status()["reachable"] is False
    cloud.start()
    wait_for(lambda: edge.outbox.pending_records == 0, 20, "the backlog")
    assert cloud.stored_seqs() == list(range(1, 51)), "none lost, none stored twice"


def test_a_refused_record_is_dead_lettered_and_the_rest_goes_through(
    edge: Edge, cloud: CloudServer
) -> None:
    records = [telemetry() for _ in range(9)]
    records[4] = telemetry(cell=99)  # outside the battery's 4 cells: the cloud refuses it (422)
    edge.outbox.enqueue_many(records)
    wait_for(lambda: edge.outbox.pending_records == 0, 20, "the outbox to empty")
    stored = cloud.stored_seqs()
    assert [s for s in stored if s <= 9] == [1, 2, 3, 4, 6, 7, 8, 9]
    (dead,) = edge.outbox.dead_letters()
    assert dead["seq"] == 5 and "422" in dead["reason"] and "cell_id 99" in dead["reason"]
    assert 10 in stored, "the data-loss event reached the cloud"
    assert edge.uplink.compress is True, "a genuine 422 does not switch gzip off"


def test_commands_are_polled_and_their_acks_close_them(edge: Edge, cloud: CloudServer) -> None:
    admin = cloud.admin_headers()
    url = f"{cloud.base_url}/api/v1/batteries/{cloud.battery_id}/commands"
    created = httpx.post(
        url,
        json={"payload": {"type": "reporting_period", "period_s": 0.5, "duration_s": 60}},
        headers=admin,
    )
    assert created.status_code == 201, created.text
    command_id = created.json()["command_id"]
    wait_for(lambda: len(edge.commands) >= 1, 10, "the command poll")
    command = edge.commands[0]
    assert str(command.command_id) == command_id
    assert command.payload.type == "reporting_period"
    assert httpx.get(f"{url}/{command_id}", headers=admin).json()["status"] == "delivered"
    ack = CommandAck(
        command_id=command.command_id,
        status=CommandStatus.SUCCEEDED,
        timestamp=datetime.now(UTC),
        result={"period_s": 0.5},
    )
    edge.outbox.enqueue(AckRecord(seq=1, timestamp=ack.timestamp, ack=ack), priority=True)

    def done() -> bool:
        return httpx.get(f"{url}/{command_id}", headers=admin).json()["status"] == "succeeded"

    wait_for(done, 10, "the command to succeed")
    twin = httpx.get(
        f"{cloud.base_url}/api/v1/batteries/{cloud.battery_id}/twin", headers=admin
    ).json()
    assert twin["reported"]["reporting_period_s"] == 0.5


def test_tokens_are_refreshed_and_wrong_secrets_keep_the_records(
    tmp_path: Path, cloud: CloudServer
) -> None:
    uplink = HttpUplink(cloud.battery_id, cloud.base_url, cloud.device_id, cloud.secret)
    outbox = Outbox(tmp_path / "o.sqlite", cloud.battery_id)
    try:
        outbox.enqueue(telemetry())
        batch = outbox.next_batch()
        assert batch is not None
        assert uplink.post(batch).outcome is Outcome.ACKED
        first = uplink._token
        uplink._token_expires_s = 0.0  # as if it had expired: the refresh route renews it
        assert uplink.post(batch).outcome is Outcome.ACKED  # a repeat: stored once
        assert uplink._token and uplink._token != first
        assert uplink.auth_failures == 0
        assert cloud.stored_seqs() == [1]
    finally:
        uplink.close()
    bad = HttpUplink(cloud.battery_id, cloud.base_url, cloud.device_id, "wrong secret")
    try:
        delivery: Delivery = bad.post(batch)
        assert (
            delivery.outcome is Outcome.RETRY
            and "refused the device credentials" in delivery.detail
        )
        assert bad.auth_failures == 1
    finally:
        bad.close()
        outbox.close()


def test_an_unknown_battery_is_not_a_rejection(tmp_path: Path, cloud: CloudServer) -> None:
    """404 (a configuration error, not bad data) is retried, never dead-lettered."""
    uplink = HttpUplink("B-2", cloud.base_url, cloud.device_id, cloud.secret)
    box = Outbox(tmp_path / "o2.sqlite", "B-2")
    try:
        box.enqueue(telemetry())
        batch = box.next_batch()
        assert batch is not None
        delivery = uplink.post(batch)
        assert delivery.outcome is Outcome.RETRY and "HTTP 404" in delivery.detail
    finally:
        uplink.close()
        box.close()


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.ACKED),
        (401, Outcome.RETRY),
        (413, Outcome.TOO_LARGE),
        (422, Outcome.REJECTED),
        (429, Outcome.RETRY),
        (503, Outcome.RETRY),
        (307, Outcome.RETRY),
        (404, Outcome.RETRY),
        (403, Outcome.RETRY),
        (400, Outcome.REJECTED),
        (415, Outcome.RETRY),
    ],
)
def test_status_codes_are_classified(status: int, outcome: Outcome) -> None:
    assert classify_response(httpx.Response(status))[0] is outcome
