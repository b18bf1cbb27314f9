"""``b2l cloud serve --workers N`` (``b2l.http_workers``): the supervisor accepts and hands each
connection to the worker with the fewest open ones, closes are counted, TLS works on handed
connections, a dead worker is replaced, and the workers stop with the supervisor."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from b2l.http_workers import listening_socket
from cloud.security.dev_ca import write_dev_ca
from hil.services import LOOPBACK, find_free_port, pid_alive, port_accepts

WORKERS = 2
CONNECTIONS = 48
START_TIMEOUT_S = 30.0

PID_APP = '''
"""An ASGI app answering with the pid of the worker that serves the request."""
import os


def make():
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = str(os.getpid()).encode()
        headers = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app
'''

RUNNER = """
import sys
import uvicorn
from b2l.http_workers import serve_workers

port = int(sys.argv[1])
tls = dict(ssl_certfile=sys.argv[2], ssl_keyfile=sys.argv[3]) if len(sys.argv) > 2 else {{}}
config = uvicorn.Config("pid_app:make", factory=True, workers={workers}, log_config=None, **tls)
serve_workers(config, "127.0.0.1", port)
"""


def test_a_taken_port_is_an_error() -> None:
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        with pytest.raises(OSError):
            listening_socket(LOOPBACK, taken.getsockname()[1], 16)


def _pid_of_new_connection(base_url: str) -> int:
    with httpx.Client(base_url=base_url, timeout=5.0) as client:  # a new connection each
        return int(client.get("/").text)


def _pids_of_a_burst(base_url: str, connections: int) -> Counter[int]:
    """Open ``connections`` connections at once (a client pool starting up), then send one
    request on each: how many each worker accepted."""
    host, port = httpx.URL(base_url).host, httpx.URL(base_url).port
    assert port is not None
    sockets = [socket.create_connection((host, port), timeout=5.0) for _ in range(connections)]
    served: Counter[int] = Counter()
    try:
        for sock in sockets:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            response = b""
            while chunk := sock.recv(4096):
                response += chunk
            served[int(response.partition(b"\r\n\r\n")[2])] += 1
    finally:
        for sock in sockets:
            sock.close()
    return served


def _pids_until(
    base_url: str, wanted: int, timeout_s: float, known: frozenset[int] = frozenset()
) -> set[int]:
    """``known`` and the pids answering new connections, polled until ``wanted`` in all."""
    deadline = time.monotonic() + timeout_s
    seen = set(known)
    while len(seen) < wanted:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only workers {seen} answered within {timeout_s}s")
        try:
            seen.add(_pid_of_new_connection(base_url))
        except httpx.TransportError:
            time.sleep(0.05)
    return seen


def _connect(base_url: str) -> socket.socket:
    url = httpx.URL(base_url)
    assert url.port is not None
    return socket.create_connection((url.host, url.port), timeout=5.0)


def _pid_on(sock: socket.socket) -> int:
    """One keep-alive request on ``sock``: the pid of the worker serving it."""
    sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(4096)
    head, _, body = response.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += sock.recv(4096)
    return int(body)


def _wait_gone(pids: set[int], failure: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while any(pid_alive(pid) for pid in pids):
        assert time.monotonic() < deadline, failure
        time.sleep(0.1)


@contextlib.contextmanager
def running_workers(
    tmp_path: Path, *tls_files: Path
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """The supervisor of ``WORKERS`` workers of the pid app (TLS with a certificate and key)."""
    (tmp_path / "pid_app.py").write_text(textwrap.dedent(PID_APP))
    port = find_free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    process = subprocess.Popen(
        [sys.executable, "-c", RUNNER.format(workers=WORKERS), str(port), *map(str, tls_files)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its workers in its process group, for the clean-up
    )
    try:
        yield process, f"http{'s' if tls_files else ''}://{LOOPBACK}:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@dataclass(frozen=True)
class Workers:
    supervisor: subprocess.Popen[bytes]
    base_url: str
    pids: set[int]
    """The workers' pids, each seen answering."""


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    with running_workers(tmp_path) as (supervisor, base_url):
        yield Workers(supervisor, base_url, _pids_until(base_url, WORKERS, START_TIMEOUT_S))


@pytest.mark.slow
def test_connections_go_to_the_least_busy_worker_and_a_dead_worker_is_replaced(
    workers: Workers,
) -> None:
    supervisor, base_url, pids = workers.supervisor, workers.base_url, workers.pids
    time.sleep(1.0)  # the polls' connections closed and reported: no worker holds one
    served = _pids_of_a_burst(base_url, CONNECTIONS)
    assert set(served) == pids
    assert sorted(served.values()) == [CONNECTIONS // 2] * 2  # exactly even, not by chance

    # four keep-alive connections split two and two; when both of one worker's close, the
    # next two go to that worker (its closes were counted)
    held = [_connect(base_url) for _ in range(4)]
    on = [_pid_on(sock) for sock in held]
    assert sorted(Counter(on).values()) == [2, 2]
    freed = on[0]
    for sock, pid in zip(held, on, strict=True):
        if pid == freed:
            sock.close()
    time.sleep(2.0)  # the worker sees the closes and reports them
    more = [_connect(base_url) for _ in range(2)]
    assert [_pid_on(sock) for sock in more] == [freed, freed]
    for sock in held + more:
        sock.close()

    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    replacement = _pids_until(base_url, WORKERS + 1, START_TIMEOUT_S, frozenset(pids)) - pids
    assert len(replacement) == 1 and victim not in replacement
    survivors = Counter(_pid_of_new_connection(base_url) for _ in range(CONNECTIONS))
    assert set(survivors) == (pids - {victim}) | replacement

    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=30) == 0


@pytest.mark.slow
def test_workers_stop_when_the_supervisor_is_killed(workers: Workers) -> None:
    workers.supervisor.kill()
    workers.supervisor.wait(timeout=10)
    _wait_gone(workers.pids, "workers outlived their supervisor")


@pytest.mark.slow
def test_tls_connections_are_handed_to_both_workers(tmp_path: Path) -> None:
    """The workers serve TLS on the connections they are handed; clients that fail the
    handshake do not stop them."""
    ca = write_dev_ca(tmp_path / "ca", datetime.now(UTC))
    with running_workers(tmp_path, ca.server_cert, ca.server_key) as (_, base_url):
        port = httpx.URL(base_url).port
        assert port is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while not port_accepts(LOOPBACK, port):
            assert time.monotonic() < deadline, "the supervisor did not listen"
            time.sleep(0.05)
        pids: Counter[int] = Counter()
        trust = ssl.create_default_context(cafile=str(ca.ca_cert))
        with httpx.Client(verify=trust, timeout=5.0) as client:
            deadline = time.monotonic() + START_TIMEOUT_S
            while len(pids) < WORKERS:  # both workers up
                assert time.monotonic() < deadline, f"only workers {set(pids)} answered"
                with contextlib.suppress(httpx.TransportError):
                    pids[int(client.get(base_url, headers={"Connection": "close"}).text)] += 1
            for _ in range(4):  # plain text where TLS is expected: the handshake fails
                with _connect(base_url) as plain:
                    plain.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
                    with contextlib.suppress(OSError):
                        plain.recv(4096)
            pids.clear()
            for _ in range(8):
                pids[int(client.get(base_url, headers={"Connection": "close"}).text)] += 1
        assert len(pids) == WORKERS and sorted(pids.values()) == [4, 4]


@pytest.mark.slow
def test_sighup_replaces_every_worker(workers: Workers) -> None:
    supervisor, base_url, old = workers.supervisor, workers.base_url, workers.pids
    supervisor.send_signal(signal.SIGHUP)
    new = _pids_until(base_url, 2 * WORKERS, 2 * START_TIMEOUT_S, frozenset(old)) - old
    assert len(new) == WORKERS
    _wait_gone(old, "the old workers did not stop")
    assert Counter(_pid_of_new_connection(base_url) for _ in range(8)) == dict.fromkeys(new, 4)
