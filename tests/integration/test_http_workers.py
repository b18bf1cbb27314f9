"""``b2l cloud serve --workers N`` (``b2l.http_workers``): one SO_REUSEPORT socket per worker,
so new connections spread over the workers, and a dead worker is replaced on its own socket."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from b2l.http_workers import reuse_port_sockets
from hil.services import LOOPBACK, find_free_port

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
config = uvicorn.Config("pid_app:make", factory=True, workers={workers}, log_config=None)
serve_workers(config, "127.0.0.1", port)
"""


def test_reuse_port_sockets_share_one_port() -> None:
    sockets = reuse_port_sockets(LOOPBACK, 0, 3)
    try:
        ports = {sock.getsockname()[1] for sock in sockets}
        assert len(ports) == 1 and ports != {0}
    finally:
        for sock in sockets:
            sock.close()


def test_a_port_taken_without_reuse_port_is_an_error() -> None:
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        with pytest.raises(OSError):
            reuse_port_sockets(LOOPBACK, taken.getsockname()[1], 2)


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


@pytest.fixture
def workers_server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    (tmp_path / "pid_app.py").write_text(textwrap.dedent(PID_APP))
    port = find_free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    process = subprocess.Popen(
        [sys.executable, "-c", RUNNER.format(workers=WORKERS), str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its workers in its process group, for the clean-up
    )
    try:
        yield process, f"http://{LOOPBACK}:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # workers outlive a supervisor killed -9
        process.wait(timeout=10)


@pytest.mark.slow
def test_connections_spread_over_the_workers_and_a_dead_worker_is_replaced(
    workers_server: tuple[subprocess.Popen[bytes], str],
) -> None:
    supervisor, base_url = workers_server
    workers = _pids_until(base_url, WORKERS, START_TIMEOUT_S)
    served = _pids_of_a_burst(base_url, CONNECTIONS)
    assert set(served) == workers
    # the kernel hashes each connection's address and port: a fair share each, give or take
    # (fewer than 8 of 48 for one of two workers has a probability of about 1e-6)
    assert min(served.values()) >= CONNECTIONS // 6

    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    replacement = _pids_until(base_url, WORKERS + 1, START_TIMEOUT_S, frozenset(workers)) - workers
    assert len(replacement) == 1 and victim not in replacement
    survivors = Counter(_pid_of_new_connection(base_url) for _ in range(CONNECTIONS))
    assert set(survivors) == (workers - {victim}) | replacement

    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=30) == 0
