"""A PostgreSQL that does not answer: connections give up after ``connect_timeout`` (set on every
engine unless the URL sets its own), and the audit writer fails a batch lost with its connection
at once, without trying each row again on a fresh connection. The "servers" are real sockets on
loopback that accept and then stay silent, or hang up."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy.exc import OperationalError

from cloud.db.engine import CONNECT_TIMEOUT_S, driver_connect_options, make_engine
from cloud.services.audit import AuditWriter

pytestmark = pytest.mark.integration


class FakeServer:
    """A loopback listener that accepts every connection and then says nothing (``hang_up``
    False) or closes it at once; ``accepted`` counts them."""

    def __init__(self, *, hang_up: bool) -> None:
        self.hang_up = hang_up
        self.accepted = 0
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self.port = self._sock.getsockname()[1]
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            if self.hang_up:
                conn.close()
            else:
                self._held.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self._held:
            conn.close()
        self._sock.close()


@pytest.fixture
def silent() -> Iterator[FakeServer]:
    server = FakeServer(hang_up=False)
    yield server
    server.close()


@pytest.fixture
def hanging_up() -> Iterator[FakeServer]:
    server = FakeServer(hang_up=True)
    yield server
    server.close()


def test_every_engine_has_a_connect_timeout_and_a_url_may_set_its_own() -> None:
    engine = make_engine("postgresql://b2l@127.0.0.1:5/b2l")
    own = make_engine("postgresql://b2l@127.0.0.1:5/b2l?connect_timeout=3")
    try:
        assert driver_connect_options(engine)["connect_timeout"] == str(CONNECT_TIMEOUT_S)
        assert driver_connect_options(own)["connect_timeout"] == "3"
    finally:
        engine.dispose()
        own.dispose()


def test_a_server_that_never_answers_fails_the_connection_in_time(silent: FakeServer) -> None:
    engine = make_engine(f"postgresql://b2l@127.0.0.1:{silent.port}/b2l?connect_timeout=1")
    outcome: list[Any] = []

    def connect() -> None:
        start = time.monotonic()
        try:
            with engine.connect():
                outcome.append("connected")
        except OperationalError as exc:
            outcome.append((time.monotonic() - start, exc))

    worker = threading.Thread(target=connect, daemon=True)
    try:
        worker.start()
        worker.join(30)  # without a timeout it would wait for ever
        assert outcome, "the connection attempt did not give up"
        elapsed_s, _ = outcome[0]
        assert 0.5 < elapsed_s < 10
        assert silent.accepted >= 1  # it did reach the socket: libpq waited for an answer
    finally:
        engine.dispose()


def test_the_audit_writer_fails_a_batch_lost_with_its_connection_at_once(
    hanging_up: FakeServer,
) -> None:
    options = {
        "host": "127.0.0.1",
        "port": hanging_up.port,
        "dbname": "b2l",
        "user": "b2l",
        "sslmode": "disable",  # one connection per attempt (no second try without TLS)
        "connect_timeout": "5",
    }

    async def scenario() -> list[Any]:
        writer = AuditWriter(options)
        try:
            return await asyncio.gather(
                *(writer.record(actor=f"user:u{i}", action="read") for i in range(12)),
                return_exceptions=True,
            )
        finally:
            await writer.close()

    outcomes = asyncio.run(scenario())
    assert all(isinstance(o, psycopg.OperationalError) for o in outcomes), outcomes
    assert hanging_up.accepted == 1  # one batch, one attempt: not one more per row
