"""The ingestion and history routes (telemetry, EIS) through HTTP, on SQLite and PostgreSQL:
device batches (plain and gzip, as ``edge_runtime.uplink.http`` sends them), idempotent
retries, whole-batch rejects, wrong battery, rate limit, bucketed history and its limits."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from cloud_db_support import T0, count, database_url, telemetry
from cloud_fixtures import CloudHarness, cloud_harness

from cloud.db.models import CellPillar1Row, EisRow, EventRow, IngestedRecordRow
from cloud.db.security_models import AuditEntry
from edge_runtime.outbox import Lane, OutboxBatch
from edge_runtime.uplink import Outcome
from edge_runtime.uplink.http import HttpUplink

pytestmark = pytest.mark.integration

CELLS = range(4)  # the harness registers B-1 and B-2 with 4 cells


@pytest.fixture(params=["sqlite", "postgresql"])
def api(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[CloudHarness]:
    """The app with B-1, B-2, a device of each, an admin, and an operator granted B-1."""
    url = database_url(request.param, request, tmp_path)
    with cloud_harness(url) as harness:
        harness.add_user("root", "admin")
        harness.add_user("ops", "operator")
        harness.grant("ops", "B-1", "telemetry", "eis")
        yield harness


def _device(api: CloudHarness, battery_id: str = "B-1") -> dict[str, str]:
    device_id, secret = api.add_device(battery_id)
    return api.headers(device_id, secret)


def _body(records: list[dict[str, Any]], battery_id: str = "B-1") -> bytes:
    return json.dumps({"battery_id": battery_id, "records": records}).encode()


def _post(
    api: CloudHarness, headers: dict[str, str], body: bytes, *, battery_id: str = "B-1", **kw: Any
) -> httpx.Response:
    return api.client.post(
        f"/api/v1/batteries/{battery_id}/telemetry",
        content=body,
        headers={**headers, "Content-Type": "application/json", **kw.pop("extra", {})},
        **kw,
    )


def _eis_record(seq: int, n: int = 5, cell_id: int = 1) -> dict[str, Any]:
    rows = [
        {
            "status": "ok",
            "event_id": f"ev-{seq}",
            "cell_id": cell_id,
            "frequency_hz": 10.0 ** (k - 1),
            "amplitude_ohm": 0.02 + 0.001 * k,
            "phase_deg": -5.0 - k,
            "current_offset_a": 0.0,
            "v_start_v": 3.6,
            "v_end_v": 3.6,
            "temperature_c": 25.0,
        }
        for k in range(n)
    ]
    return {
        "kind": "eis",
        "seq": seq,
        "timestamp": (T0 + timedelta(seconds=seq)).isoformat(),
        "rows": rows,
    }


# -- POST telemetry --------------------------------------------------------------------------


def test_device_batch_is_stored_once_and_retries_are_duplicates(api: CloudHarness) -> None:
    headers = _device(api)
    body = _body([telemetry(s, cells=CELLS) for s in (1, 2, 3)])
    first = _post(api, headers, body)
    assert first.status_code == 200, first.text
    assert first.json()["accepted"] == 3 and first.json()["duplicates"] == 0
    assert first.json()["cell_rows"] == 3 * 4 * 2  # pillar 1 + estimates
    retry = _post(api, headers, body)
    assert retry.status_code == 200
    assert (retry.json()["accepted"], retry.json()["duplicates"]) == (0, 3)
    overlap = _post(api, headers, _body([telemetry(s, cells=CELLS) for s in (3, 4)]))
    assert (overlap.json()["accepted"], overlap.json()["duplicates"]) == (1, 1)
    assert count(api.db, CellPillar1Row, "B-1") == 4 * 4
    assert count(api.db, IngestedRecordRow, "B-1") == 4
    twin = api.client.get("/api/v1/batteries/B-1/twin", headers=api.headers("root")).json()
    assert twin["reported"]["seq"] == 4 and twin["reported"]["aggregates"]["cell_count"] == 4
    metrics = api.client.get("/metrics").text
    assert 'b2l_rows_ingested_total{channel="http",kind="telemetry"} 32.0' in metrics


def test_gzip_batch_is_accepted(api: CloudHarness) -> None:
    headers = _device(api)
    body = gzip.compress(_body([telemetry(s, cells=CELLS) for s in (1, 2)]))
    response = _post(api, headers, body, extra={"Content-Encoding": "gzip"})
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 2
    assert count(api.db, CellPillar1Row, "B-1") == 8


def test_the_edge_http_uplink_is_acknowledged_and_fetches_commands(api: CloudHarness) -> None:
    """The real edge adapter against the app: gzip batch acked, pending commands fetched."""
    device_id, secret = api.add_device("B-1")
    uplink = HttpUplink(
        "B-1", "http://testserver", device_id, secret, transport=_AsgiTransport(api)
    )
    try:
        records = [telemetry(s, cells=CELLS) for s in (1, 2)]
        raw = _body(records)
        batch = OutboxBatch("B-1", Lane.NORMAL, (1, 2), ("telemetry", "telemetry"), raw)
        delivery = uplink.post(batch)
        assert delivery.outcome is Outcome.ACKED, delivery.detail
        assert uplink.compress  # the cloud took the gzip body
        again = uplink.post(batch)
        assert again.outcome is Outcome.ACKED
        assert count(api.db, CellPillar1Row, "B-1") == 8
        operator = api.headers("root")
        created = api.client.post(
            "/api/v1/batteries/B-1/commands",
            json={"payload": {"type": "reporting_period", "period_s": 5.0}},
            headers=operator,
        )
        assert created.status_code == 201
        received: list[Any] = []
        uplink.listener = _Listener(received)
        uplink.tick()
        assert [str(c.command_id) for c in received] == [created.json()["command_id"]]
        detail = api.client.get(created.headers["Location"], headers=operator).json()
        assert detail["status"] == "delivered" and detail["delivery_count"] == 1
    finally:
        uplink.close()


class _Listener:
    def __init__(self, commands: list[Any]) -> None:
        self.commands = commands

    def on_delivery(self, delivery: Any) -> None:
        return None

    def on_command(self, command: Any) -> None:
        self.commands.append(command)

    def on_connection(self, connected: bool, reconnected: bool) -> None:
        return None


class _AsgiTransport(httpx.BaseTransport):
    """Routes the edge adapter's httpx requests into the harness's TestClient."""

    def __init__(self, api: CloudHarness) -> None:
        self.client = api.client

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.client.request(
            request.method,
            request.url.raw_path.decode(),
            content=request.read(),
            headers=dict(request.headers),
        )
        return httpx.Response(
            response.status_code, headers=response.headers, content=response.content
        )


def test_acks_travel_in_the_telemetry_batch(api: CloudHarness) -> None:
    created = api.client.post(
        "/api/v1/batteries/B-1/commands",
        json={"payload": {"type": "reporting_period", "period_s": 2.0}, "ttl_s": 600},
        headers=api.headers("root"),
    ).json()
    ack = {
        "kind": "ack",
        "seq": 1,
        "timestamp": api.clock().isoformat(),
        "ack": {
            "command_id": created["command_id"],
            "status": "succeeded",
            "timestamp": api.clock().isoformat(),
        },
    }
    response = _post(api, _device(api), _body([ack]))
    assert response.status_code == 200, response.text
    assert response.json()["acks_applied"] == 1
    after = api.client.get(
        f"/api/v1/batteries/B-1/commands/{created['command_id']}", headers=api.headers("root")
    ).json()
    assert after["status"] == "succeeded"
    assert [t["new_status"] for t in after["transitions"]] == ["queued", "succeeded"]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "json"),
        (b"", "empty"),
        (json.dumps({"battery_id": "B-1", "records": []}).encode(), "records"),
        (
            json.dumps(
                {"battery_id": "B-1", "records": [telemetry(2, cells=CELLS), telemetry(1)]}
            ).encode(),
            "increasing seq",
        ),
    ],
)
def test_malformed_batches_are_422_with_reasons(
    api: CloudHarness, body: bytes, needle: str
) -> None:
    response = _post(api, _device(api), body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, list) and detail
    assert any(needle in item["msg"].lower() for item in detail), detail
    assert count(api.db, IngestedRecordRow) == 0


def test_a_batch_is_refused_whole(api: CloudHarness) -> None:
    records = [telemetry(1, cells=CELLS), telemetry(2, cells=range(6)), telemetry(3, cells=[9])]
    response = _post(api, _device(api), _body(records))
    assert response.status_code == 422
    messages = [item["msg"] for item in response.json()["detail"]]
    assert len(messages) == 2 and all("outside the battery's topology" in m for m in messages)
    assert count(api.db, IngestedRecordRow) == 0 and count(api.db, CellPillar1Row) == 0


def test_bad_gzip_and_bad_encodings(api: CloudHarness) -> None:
    headers = _device(api)
    bad = _post(api, headers, b"\x1f\x8b not gzip", extra={"Content-Encoding": "gzip"})
    assert bad.status_code == 422 and "gzip" in bad.text
    truncated = gzip.compress(_body([telemetry(1, cells=CELLS)]))[:-8]
    cut = _post(api, headers, truncated, extra={"Content-Encoding": "gzip"})
    assert cut.status_code == 422
    brotli = _post(api, headers, b"{}", extra={"Content-Encoding": "br"})
    assert brotli.status_code == 415
    text = api.client.post(
        "/api/v1/batteries/B-1/telemetry",
        content=b"hello",
        headers={**headers, "Content-Type": "text/plain"},
    )
    assert text.status_code == 415


def test_gzip_bomb_is_413(api: CloudHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    import cloud.api.telemetry as telemetry_api

    monkeypatch.setattr(telemetry_api, "MAX_DECODED_BYTES", 10_000)
    bomb = gzip.compress(b" " * 1_000_000)
    response = _post(api, _device(api), bomb, extra={"Content-Encoding": "gzip"})
    assert response.status_code == 413


def test_a_device_writes_only_its_own_battery(api: CloudHarness) -> None:
    headers = _device(api, "B-1")
    other_path = _post(api, headers, _body([telemetry(1, cells=CELLS)], "B-2"), battery_id="B-2")
    assert other_path.status_code == 403
    other_body = _post(api, headers, _body([telemetry(1, cells=CELLS)], "B-2"))
    assert other_body.status_code == 403
    assert count(api.db, IngestedRecordRow) == 0
    # an operator may read telemetry but never write it; an admin may
    ops = _post(api, api.headers("ops"), _body([telemetry(1, cells=CELLS)]))
    assert ops.status_code == 403
    mismatch = _post(api, api.headers("root"), _body([telemetry(1, cells=CELLS)], "B-2"))
    assert mismatch.status_code == 422
    denied = _audit_rows(api, "denied")
    assert denied >= 2


def _audit_rows(api: CloudHarness, outcome: str) -> int:
    from sqlalchemy import func, select

    with api.db.read() as session:
        return int(
            session.scalar(
                select(func.count()).select_from(AuditEntry).where(AuditEntry.outcome == outcome)
            )
            or 0
        )


def test_no_token_is_401_and_unknown_battery_404(api: CloudHarness) -> None:
    assert _post(api, {}, _body([telemetry(1, cells=CELLS)])).status_code == 401
    headers = api.headers("root")
    unknown = _post(api, headers, _body([telemetry(1)], "B-9"), battery_id="B-9")
    assert unknown.status_code == 404


@pytest.fixture
def limited(tmp_path: Any) -> Iterator[CloudHarness]:
    """SQLite app with a tight ingestion limit: 10 rows/s, burst 15."""
    url = f"sqlite:///{tmp_path / 'limited.db'}"
    with cloud_harness(url, ingest_rate_rows_per_s=10.0, ingest_burst_rows=15.0) as harness:
        yield harness


def test_rate_limit_answers_429_with_retry_after(limited: CloudHarness) -> None:
    headers = _device(limited)
    monotonic = [1000.0]
    limited.state.monotonic_s = lambda: monotonic[0]
    # a record costs 9 rows: 4 cells, 4 estimates, 1 pack
    ok = _post(limited, headers, _body([telemetry(1, cells=CELLS)]))
    assert ok.status_code == 200
    over = _post(limited, headers, _body([telemetry(2, cells=CELLS)]))
    assert over.status_code == 429
    assert int(over.headers["retry-after"]) >= 1
    assert count(limited.db, IngestedRecordRow) == 1
    monotonic[0] += 2.0  # refilled
    again = _post(limited, headers, _body([telemetry(2, cells=CELLS)]))
    assert again.status_code == 200
    huge = _post(limited, headers, _body([telemetry(s, cells=CELLS) for s in (3, 4)]))
    assert huge.status_code == 429 and huge.headers["retry-after"] == "3600"


# -- GET telemetry ---------------------------------------------------------------------------


def _ingest_minutes(api: CloudHarness, minutes: int = 3) -> None:
    records = [
        telemetry(s, cells=CELLS, ts=T0 + timedelta(seconds=10 * s))
        for s in range(1, 6 * minutes + 1)
    ]
    response = _post(api, _device(api), _body(records))
    assert response.status_code == 200, response.text


def test_history_raw_and_bucketed(api: CloudHarness) -> None:
    _ingest_minutes(api)
    headers = api.headers("ops")
    window = {"start": T0.isoformat(), "end": (T0 + timedelta(minutes=10)).isoformat()}
    raw = api.client.get(
        "/api/v1/batteries/B-1/telemetry",
        params={**window, "cell_id": [0, 2], "field": ["voltage_v"]},
        headers=headers,
    )
    assert raw.status_code == 200, raw.text
    rows = raw.json()["rows"]
    assert len(rows) == 18 * 2 and {r["cell_id"] for r in rows} == {0, 2}
    assert set(rows[0]) == {"timestamp", "seq", "cell_id", "voltage_v"}
    bucketed = api.client.get(
        "/api/v1/batteries/B-1/telemetry",
        params={**window, "cell_id": 1, "bucket": "1m"},
        headers=headers,
    ).json()
    assert bucketed["bucket_s"] == 60
    counts = [r["count"] for r in bucketed["rows"]]
    assert sum(counts) == 18 and all(r["cell_id"] == 1 for r in bucketed["rows"])
    first = bucketed["rows"][0]
    assert first["voltage_v_min"] <= first["voltage_v_avg"] <= first["voltage_v_max"]
    packs = api.client.get(
        "/api/v1/batteries/B-1/telemetry",
        params={**window, "source": "packs", "bucket": "300"},
        headers=headers,
    ).json()
    assert packs["rows"][0]["pack_index"] == 0 and sum(r["count"] for r in packs["rows"]) == 18


def test_history_limits_and_bad_queries_are_4xx(api: CloudHarness) -> None:
    _ingest_minutes(api, 1)
    headers = api.headers("ops")
    start, end = T0.isoformat(), (T0 + timedelta(minutes=10)).isoformat()
    path = "/api/v1/batteries/B-1/telemetry"
    too_many = api.client.get(
        path, params={"start": start, "end": end, "limit": 5}, headers=headers
    )
    assert too_many.status_code == 422 and "more than 5 rows" in too_many.text
    for params in (
        {"start": end, "end": start},
        {"start": "2025-03-01T12:00:00", "end": end},
        {"start": start, "end": end, "bucket": "fortnight"},
        {"start": start, "end": end, "field": "nope"},
        {"start": start, "end": end, "source": "nope"},
        {"start": start, "end": end, "limit": 10**9},
        {"start": start, "end": end, "cell_id": -1},
    ):
        response = api.client.get(path, params=params, headers=headers)
        assert response.status_code == 422, (params, response.text)
        assert isinstance(response.json()["detail"], list)


def test_history_needs_a_grant_and_is_audited(api: CloudHarness) -> None:
    api.add_user("stranger", "viewer")
    path = "/api/v1/batteries/B-2/telemetry"
    assert api.client.get(path, headers=api.headers("ops")).status_code == 403
    assert api.client.get(path, headers=api.headers("stranger")).status_code == 403
    before = _audit_rows(api, "allowed")
    assert api.client.get("/api/v1/batteries/B-1/telemetry", headers=api.headers("ops")).is_success
    assert _audit_rows(api, "allowed") == before + 1


# -- EIS ---------------------------------------------------------------------------------------


def test_eis_upload_and_read(api: CloudHarness) -> None:
    headers = _device(api)
    body = _body([_eis_record(1), _eis_record(2, cell_id=3)])
    posted = api.client.post(
        "/api/v1/batteries/B-1/eis",
        content=gzip.compress(body),
        headers={**headers, "Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert posted.status_code == 200, posted.text
    assert posted.json()["accepted_by_kind"] == {"eis": 2}
    again = api.client.post("/api/v1/batteries/B-1/eis", content=body, headers=headers)
    assert again.json()["duplicates"] == 2
    assert count(api.db, EisRow, "B-1") == 10
    spectra = api.client.get(
        "/api/v1/batteries/B-1/eis",
        params={"start": T0.isoformat(), "end": (T0 + timedelta(hours=1)).isoformat()},
        headers=api.headers("ops"),
    )
    assert spectra.status_code == 200
    got = spectra.json()
    assert [(s["event_id"], s["cell_id"]) for s in got] == [("ev-1", 1), ("ev-2", 3)]
    freqs = [r["frequency_hz"] for r in got[0]["rows"]]
    assert freqs == sorted(freqs) and len(freqs) == 5
    one = api.client.get(
        "/api/v1/batteries/B-1/eis", params={"cell_id": 3}, headers=api.headers("ops")
    ).json()
    assert [s["event_id"] for s in one] == ["ev-2"]
    limited = api.client.get(
        "/api/v1/batteries/B-1/eis", params={"limit": 3}, headers=api.headers("ops")
    )
    assert limited.status_code == 422


def test_eis_route_takes_only_eis_records(api: CloudHarness) -> None:
    headers = _device(api)
    mixed = _body([_eis_record(1), telemetry(2, cells=CELLS)])
    response = api.client.post("/api/v1/batteries/B-1/eis", content=mixed, headers=headers)
    assert response.status_code == 422 and "takes eis records" in response.text
    assert count(api.db, IngestedRecordRow) == 0
    event = {
        "kind": "event",
        "seq": 5,
        "timestamp": T0.isoformat(),
        "event_type": "safety.alarm",
        "severity": "alarm",
    }
    stored = _post(api, headers, _body([event]))
    assert stored.status_code == 200 and count(api.db, EventRow, "B-1") == 1
    other = api.client.get("/api/v1/batteries/B-2/eis", headers=api.headers("ops"))
    assert other.status_code == 403


def test_nul_characters_are_refused_before_the_database_sees_them(api: CloudHarness) -> None:
    """PostgreSQL stores no NUL in text or jsonb: such a batch is a 422, never a 500, on both
    backends alike; an escaped backslash followed by ``u0000`` is ordinary text."""
    event = {
        "kind": "event",
        "seq": 1,
        "timestamp": T0.isoformat(),
        "event_type": "edge.note",
        "data": {"text": "nul \u0000 inside"},
    }
    headers = _device(api)
    response = _post(api, headers, _body([telemetry(2, cells=CELLS), event]))
    assert response.status_code == 422, response.text
    assert "NUL" in response.json()["detail"][0]["msg"]
    assert count(api.db, IngestedRecordRow) == 0
    literal = {**event, "data": {"text": "a backslash then u0000: \\u0000"}}
    response = _post(api, headers, _body([literal]))
    assert response.status_code == 200, response.text
    assert count(api.db, EventRow) == 1
