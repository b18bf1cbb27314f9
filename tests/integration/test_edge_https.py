"""The edge's HTTPS uplink verifies the cloud's certificate with the configured CA.

The cloud app is served over TLS with a certificate of ``b2l cloud dev-ca``; an edge given that
CA (``uplink.ca_file``) delivers; an edge that trusts only the system's CAs is refused by its own
TLS check and keeps every record for later.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from edge_support import CloudServer

from cloud.security.dev_ca import write_dev_ca
from edge_runtime.backoff import Backoff
from edge_runtime.forwarder import Forwarder
from edge_runtime.outbox import Outbox
from edge_runtime.uplink.http import HttpUplink
from twin.measurements import CellEstimate, PackMeasurement
from twin.uplink import TelemetryRecord

pytestmark = pytest.mark.integration


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    write_dev_ca(tmp_path / "ca", datetime.now(UTC))
    return tmp_path / "ca"


@pytest.fixture
def cloud(tmp_path: Path, ca_dir: Path) -> Iterator[CloudServer]:
    server = CloudServer(tmp_path, tls=(ca_dir / "server.pem", ca_dir / "server.key"))
    server.start()
    yield server
    server.close()


def _forward(tmp_path: Path, cloud: CloudServer, ca_file: Path | None) -> tuple[Outbox, Forwarder]:
    outbox = Outbox(tmp_path / f"outbox-{ca_file is not None}.sqlite", cloud.battery_id)
    uplink = HttpUplink(
        cloud.battery_id, cloud.base_url, cloud.device_id, cloud.secret, ca_file=ca_file
    )
    forwarder = Forwarder(outbox, uplink, backoff=Backoff(0.1, 0.5, random.Random(1)))
    records = [
        TelemetryRecord(
            seq=1,
            timestamp=datetime.now(UTC),
            packs=[PackMeasurement(voltage_v=14.8, current_a=-2.0)],
            estimates=[CellEstimate(cell_id=k % 4, soc=0.5, soc_std=0.01, sos=1.0)],
        )
        for k in range(10)
    ]
    outbox.enqueue_many(records)
    forwarder.start()
    return outbox, forwarder


def test_the_configured_ca_verifies_the_cloud(
    tmp_path: Path, cloud: CloudServer, ca_dir: Path
) -> None:
    outbox, forwarder = _forward(tmp_path, cloud, ca_dir / "ca.pem")
    try:
        deadline = time.monotonic() + 20.0
        while outbox.pending_records and time.monotonic() < deadline:
            time.sleep(0.05)
        assert outbox.pending_records == 0
        assert cloud.stored_seqs() == list(range(1, 11))
    finally:
        forwarder.stop()
        forwarder.uplink.close()
        outbox.close()


def test_an_unknown_ca_is_refused_and_the_records_are_kept(
    tmp_path: Path, cloud: CloudServer
) -> None:
    outbox, forwarder = _forward(tmp_path, cloud, None)
    try:
        time.sleep(2.0)  # several attempts, each refused by the edge's own certificate check
        assert outbox.pending_records == 10
        assert cloud.stored_seqs() == []
        assert "certificate" in str(forwarder.uplink.status()).lower()
    finally:
        forwarder.stop()
        forwarder.uplink.close()
        outbox.close()
