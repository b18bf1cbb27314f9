"""``b2l.http_workers.Dispatcher`` in process: loopback clients, two channels read by the test
in place of worker processes. Who gets each connection: the fewest open, closes counted, a gone
worker skipped, a hung one tried last."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from b2l.http_workers import Dispatcher, channel_pair, listening_socket
from hil.services import LOOPBACK


class Bench:
    """A dispatcher on a loopback listener and the worker ends of its two channels."""

    def __init__(self, stack: ExitStack) -> None:
        self.listener = stack.enter_context(listening_socket(LOOPBACK, 0, 64))
        self.dispatcher = Dispatcher(self.listener)
        stack.callback(self.dispatcher.stop)
        self.supervisor_ends: list[socket.socket] = []
        self.workers: list[socket.socket] = []
        for slot in range(2):
            supervisor_end, worker_end = channel_pair()
            stack.enter_context(worker_end)
            self.supervisor_ends.append(supervisor_end)
            self.workers.append(worker_end)
            self.dispatcher.attach(slot, supervisor_end)
        self.dispatcher.start()
        self.clients: list[socket.socket] = []
        stack.callback(self._close_clients)

    def _close_clients(self) -> None:
        for client in self.clients:
            client.close()

    def connect(self) -> Address:
        """A new client connection; its local address (the handed socket's peer)."""
        client = socket.create_connection(self.listener.getsockname()[:2], timeout=5)
        self.clients.append(client)
        return _address(client.getsockname())

    def take(self, worker: int) -> Address:
        """The peer of the next connection handed to ``worker`` (within 5 s)."""
        peer = self.handed(worker)
        assert peer is not None, f"no connection handed to worker {worker}"
        return peer

    def handed(self, worker: int, timeout_s: float = 5.0) -> Address | None:
        """The peer of the next connection handed to ``worker`` (None: none within the time)."""
        end = self.workers[worker]
        end.settimeout(timeout_s)
        try:
            message, fds, _, _ = socket.recv_fds(end, 16, 16)
        except TimeoutError:
            return None
        assert message == b"+" and len(fds) == 1
        with socket.socket(fileno=fds[0]) as sock:
            return _address(sock.getpeername())


Address = tuple[str, int]


def _address(raw: tuple[str, int]) -> Address:
    return str(raw[0]), int(raw[1])


@pytest.fixture
def bench() -> Iterator[Bench]:
    with ExitStack() as stack:
        yield Bench(stack)


def test_connections_go_to_the_worker_with_the_fewest_open(bench: Bench) -> None:
    clients = [bench.connect() for _ in range(4)]
    got = [bench.take(0), bench.take(1), bench.take(0), bench.take(1)]
    assert sorted(got) == sorted(clients)  # two each, every one handed once
    assert bench.handed(0, 0.2) is None and bench.handed(1, 0.2) is None
    bench.workers[0].send(b"--")  # worker 0 closed both of its connections
    time.sleep(0.2)
    late = [bench.connect() for _ in range(2)]
    assert sorted([bench.take(0), bench.take(0)]) == sorted(late)
    assert bench.handed(1, 0.2) is None


def test_a_worker_that_is_gone_gets_no_more_connections(bench: Bench) -> None:
    bench.workers[1].close()
    time.sleep(0.2)
    clients = [bench.connect() for _ in range(3)]
    assert sorted(bench.take(0) for _ in clients) == sorted(clients)


def test_a_hung_worker_is_tried_last_until_it_reports_again(bench: Bench) -> None:
    """Worker 1 reads nothing: once its channel is full, a connection waits for it at most
    ``HANDOFF_TIMEOUT_S`` and then goes to worker 0, and so do the next ones, at once."""
    bench.supervisor_ends[1].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)  # the minimum
    clients = [bench.connect() for _ in range(40)]
    started = time.monotonic()
    to_first: list[Address] = []
    while len(to_first) < 20:  # worker 1 takes a few until its buffer is full, then none
        peer = bench.handed(0, 5.0)
        assert peer is not None, f"only {len(to_first)} connections reached worker 0"
        to_first.append(peer)
    elapsed = time.monotonic() - started
    assert set(to_first) <= set(clients)
    assert elapsed < 4.0  # one timeout of 1 s, not one per connection
    stuck: list[Address] = []
    while (peer := bench.handed(1, 0.2)) is not None:
        stuck.append(peer)
    assert 0 < len(stuck) < 20 and not set(stuck) & set(to_first)
