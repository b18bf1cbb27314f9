"""``b2l cloud serve --workers N``: N uvicorn worker processes, each new connection handed to
the worker with the fewest open connections.

uvicorn's own supervisor hands every worker the same listening socket: whichever worker wakes
first accepts every connection waiting at that moment, so a burst of keep-alive clients (a load
balancer's pool, a benchmark) ends up on one worker while the others idle. A socket per worker
bound with ``SO_REUSEPORT`` (the kernel hashing each connection's address onto one) spreads
them by chance only: 4 keep-alive connections over 2 workers split 2 + 2 in 3 runs of 8.

Here the supervisor listens and accepts every connection itself (one thread, ``Dispatcher``)
and passes it (``SCM_RIGHTS`` over a Unix socket pair per worker) to the worker with the fewest
open connections, ties to the one handed fewest so far; the worker tells it when a connection
closes. A worker that did not take a connection within ``HANDOFF_TIMEOUT_S`` (hung, its channel
full) is tried last until it reports a close again or is replaced. The worker
(``HandoffServer``) serves the connection as uvicorn would have accepted it itself (same protocol
class, server state and app state), so TLS, limits and graceful shutdown work as before.

The supervision (health checks, replacing a dead or hung worker, SIGTERM/SIGINT, SIGHUP
restarts one worker after the other) is uvicorn's ``Multiprocess``; a replaced worker takes new
connections once it is ready, and until then the others get them. Linux only (``SCM_RIGHTS`` on
``SOCK_SEQPACKET``), like the rest of the deployment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import selectors
import socket
import threading
import time
from typing import Any

from uvicorn.config import STARTUP_FAILURE, Config
from uvicorn.server import Server
from uvicorn.supervisors.multiprocess import Multiprocess, Process

__all__ = ["Dispatcher", "HandoffServer", "HandoffSupervisor", "listening_socket", "serve_workers"]

logger = logging.getLogger("uvicorn.error")

HANDOFF_TIMEOUT_S = 1.0
"""How long the supervisor waits to pass a connection to a worker whose channel is full (a
hung worker) before it tries the next one."""
_ACCEPTS_PER_WAKE = 64
_CLOSED = b"-"  # worker -> supervisor: one byte per connection closed
_HANDED = b"+"  # supervisor -> worker: the byte that carries a connection's descriptor


def listening_socket(host: str, port: int, backlog: int) -> socket.socket:
    """A TCP socket listening on ``(host, port)`` (``port`` 0: a free one), non-blocking."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """A supervisor end and a worker end for handing connections to one worker."""
    supervisor_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    supervisor_end.settimeout(HANDOFF_TIMEOUT_S)
    return supervisor_end, worker_end


class Dispatcher:
    """Accepts every connection on ``listener`` in one thread and hands each to the attached
    worker with the fewest open connections."""

    def __init__(self, listener: socket.socket) -> None:
        self._listener = listener
        self._lock = threading.Lock()
        self._channels: dict[int, socket.socket] = {}  # worker slot -> supervisor end
        self._open: dict[int, int] = {}  # connections handed and not yet reported closed
        self._handed: dict[int, int] = {}
        self._stalled: set[int] = set()  # slots that did not take a connection: tried last
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="b2l-http-dispatcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting and close every channel (the workers see the end and stop)."""
        self._stopping = True
        self._wake()
        if self._thread.is_alive():
            self._thread.join(5)
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()
        self._wake_r.close()
        self._wake_w.close()

    def attach(self, slot: int, channel: socket.socket) -> None:
        """Hand connections to worker ``slot`` through ``channel`` (its supervisor end) from
        now on, replacing the slot's former worker (its connections are no longer counted)."""
        with self._lock:
            old = self._channels.get(slot)
            self._channels[slot] = channel
            self._open[slot] = 0
            # level with the others, so that ties alternate instead of all going to the new one
            others = [self._handed[s] for s in self._channels if s != slot]
            self._handed[slot] = max(others, default=0)
            self._stalled.discard(slot)
        if old is not None:
            old.close()
        self._wake()

    def detach(self, slot: int) -> None:
        """Hand worker ``slot`` no more connections."""
        with self._lock:
            channel = self._channels.pop(slot, None)
        if channel is not None:
            channel.close()
        self._wake()

    # -- the dispatcher thread -----------------------------------------------------------------

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # stopped, or a wake-up is pending anyway (full)
            self._wake_w.send(b"w")

    def _run(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ, "accept")
            selector.register(self._wake_r, selectors.EVENT_READ, "wake")
            watched: dict[int, socket.socket] = {}
            while not self._stopping:
                try:
                    self._watch(selector, watched)
                    for key, _ in selector.select():
                        if key.data == "accept":
                            self._accept()
                        elif key.data == "wake":
                            self._drain_wake()
                        else:
                            self._read_closes(key.data, key.fileobj)  # type: ignore[arg-type]
                except Exception:  # never stop accepting over one bad turn
                    logger.exception("the connection dispatcher failed; going on")
                    time.sleep(0.1)

    def _watch(self, selector: selectors.BaseSelector, watched: dict[int, socket.socket]) -> None:
        """Watch the current channels (a worker's closes, or its end) and no others."""
        with self._lock:
            current = dict(self._channels)
        for slot, channel in list(watched.items()):
            if current.get(slot) is not channel:
                selector.unregister(channel)  # found by identity once closed
                del watched[slot]
        for slot, channel in current.items():
            if slot not in watched:
                selector.register(channel, selectors.EVENT_READ, slot)
                watched[slot] = channel

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:  # nothing more to read
            pass

    def _read_closes(self, slot: int, channel: socket.socket) -> None:
        try:
            data = channel.recv(4096)
        except (BlockingIOError, TimeoutError):
            return
        except OSError:
            data = b""
        with self._lock:
            if self._channels.get(slot) is not channel:
                return  # a replaced worker's closes
            if data:
                self._open[slot] = max(0, self._open[slot] - data.count(_CLOSED))
                self._stalled.discard(slot)  # it works again
                return
            del self._channels[slot]  # the worker's end closed: it stopped or died
        channel.close()
        logger.info("worker slot %d stopped taking connections", slot)
        self._wake()

    def _accept(self) -> None:
        for _ in range(_ACCEPTS_PER_WAKE):
            try:
                connection, _ = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:  # out of descriptors and the like: the backlog keeps them
                logger.warning("accepting a connection failed: %s", exc)
                time.sleep(0.1)  # not at once again: the socket stays readable
                return
            with connection:
                self._hand(connection)

    def _hand(self, connection: socket.socket) -> None:
        """Pass ``connection`` to the least busy worker that takes it (the supervisor's copy
        is closed by the caller)."""
        with self._lock:
            order = sorted(
                self._channels,
                key=lambda s: (s in self._stalled, self._open[s], self._handed[s], s),
            )
        for slot in order:
            with self._lock:
                channel = self._channels.get(slot)
            if channel is None:
                continue
            try:
                socket.send_fds(channel, [_HANDED], [connection.fileno()])
            except OSError as exc:  # a dead or hung worker (TimeoutError is an OSError)
                logger.warning("worker slot %d did not take a connection: %s", slot, exc)
                with self._lock:
                    self._stalled.add(slot)  # others first, until it reports a close
                continue
            with self._lock:
                if self._channels.get(slot) is channel:
                    self._open[slot] += 1
                    self._handed[slot] += 1
            return
        logger.error("no worker took a connection; closing it")


class HandoffServer(Server):
    """A uvicorn ``Server`` that listens on nothing and serves the connections the supervisor
    hands it through ``channel``."""

    def __init__(self, config: Config, channel: socket.socket) -> None:
        super().__init__(config)
        self._channel = channel
        self._unreported = 0

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=[])  # the app's start-up; no listening socket
        if self.should_exit:
            return
        self._channel.setblocking(False)
        asyncio.get_running_loop().add_reader(self._channel.fileno(), self._receive)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        asyncio.get_running_loop().remove_reader(self._channel.fileno())
        await super().shutdown(sockets=[])
        self._channel.close()

    def _receive(self) -> None:
        try:
            message, fds, _, _ = socket.recv_fds(self._channel, 64, 64)
        except BlockingIOError:
            return
        except OSError:
            message, fds = b"", []
        if not message and not fds:  # the supervisor is gone: stop as on SIGTERM
            asyncio.get_running_loop().remove_reader(self._channel.fileno())
            self.should_exit = True
            return
        for fd in fds:
            connection = socket.socket(fileno=fd)
            connection.setblocking(False)
            task = asyncio.get_running_loop().create_task(self._serve_handed(connection))
            self.server_state.tasks.add(task)
            task.add_done_callback(self.server_state.tasks.discard)

    async def _serve_handed(self, connection: socket.socket) -> None:
        """Serve one handed connection as uvicorn's own listener would; report its close to
        the supervisor once (also when TLS fails before the protocol starts)."""
        reported = False

        def closed() -> None:
            nonlocal reported
            if not reported:
                reported = True
                self._report_closed()

        def protocol() -> asyncio.Protocol:
            protocol_class: Any = self.config.http_protocol_class
            created = protocol_class(  # as Server.startup builds it
                config=self.config, server_state=self.server_state, app_state=self.lifespan.state
            )
            connection_lost = created.connection_lost

            def lost(exc: Exception | None) -> None:
                try:
                    connection_lost(exc)
                finally:
                    closed()

            created.connection_lost = lost
            return created  # type: ignore[no-any-return]

        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                protocol, connection, ssl=self.config.ssl
            )
        except Exception as exc:  # e.g. a failed TLS handshake: the connection is gone
            logger.debug("a handed connection failed: %s", exc)
            connection.close()
            closed()

    def _report_closed(self) -> None:
        self._unreported += 1
        try:
            self._channel.send(_CLOSED * self._unreported)
        except BlockingIOError:
            return  # sent with the next close
        except OSError:  # the supervisor is gone; _receive stops the server
            return
        self._unreported = 0


class _HandoffProcess(Process):
    """A worker process whose ``sockets`` are its channel's worker end."""

    def target(self, sockets: list[socket.socket] | None = None) -> None:  # pragma: no cover
        if not sockets:
            raise ValueError("a handoff worker needs its channel")
        self._server = HandoffServer(self.config, sockets[0])
        threading.Thread(target=self.always_pong, daemon=True).start()
        self._server.run(sockets=[])


class HandoffSupervisor(Multiprocess):
    """uvicorn's ``Multiprocess`` with the connections handed out by a ``Dispatcher``."""

    def __init__(self, config: Config, listener: socket.socket) -> None:
        super().__init__(config, [])
        self.dispatcher = Dispatcher(listener)

    def _start_worker(self, slot: int, *, wait_ready: bool) -> Process:
        """A new worker for ``slot``; it takes connections at once, or once ready."""
        supervisor_end, worker_end = channel_pair()
        try:
            process = _HandoffProcess(self.config, [worker_end])
            process.start()
        except BaseException:
            supervisor_end.close()
            raise
        finally:
            worker_end.close()  # the child has its own copy
        if wait_ready:
            process.wait_until_ready(self.config.timeout_worker_healthcheck, self.should_exit)
        self.dispatcher.attach(slot, supervisor_end)
        return process

    def init_processes(self) -> None:
        self.dispatcher.start()
        self.processes = [
            self._start_worker(slot, wait_ready=False) for slot in range(self.processes_num)
        ]

    def terminate_all(self) -> None:
        self.dispatcher.stop()
        super().terminate_all()

    def restart_all(self) -> None:
        """One worker after the other (SIGHUP): the new one takes connections once ready, then
        the old one stops."""
        for slot, old_process in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            self.processes[slot] = self._start_worker(slot, wait_ready=True)
            old_process.terminate()
            old_process.join()

    def keep_subprocess_alive(self) -> None:
        """Replace a dead or hung worker (the others take its connections meanwhile); stop
        everything if a worker could not even start."""
        if self.should_exit.is_set():
            return
        for slot, process in enumerate(self.processes):
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            self.dispatcher.detach(slot)
            process.kill()
            process.join()
            if process.exitcode == STARTUP_FAILURE:
                logger.error("worker [%s] failed to start; stopping", process.pid)
                self.should_exit.set()
                return
            if self.should_exit.is_set():
                return
            logger.info("worker [%s] died; starting another", process.pid)
            self.processes[slot] = self._start_worker(slot, wait_ready=True)

    def handle_ttin(self) -> None:
        logger.info("Received SIGTTIN, adding a worker.")
        self.processes.append(self._start_worker(len(self.processes), wait_ready=True))
        self.processes_num = len(self.processes)

    def handle_ttou(self) -> None:
        if len(self.processes) <= 1:
            logger.info("Received SIGTTOU, but there is only one worker left.")
            return
        logger.info("Received SIGTTOU, removing a worker.")
        process = self.processes.pop()
        self.dispatcher.detach(len(self.processes))
        process.terminate()
        process.join()
        self.processes_num = len(self.processes)


def serve_workers(config: Config, host: str, port: int) -> None:
    """Run ``config.workers`` workers of ``config`` (an app factory given as an import string)
    on ``(host, port)`` until SIGTERM or SIGINT."""
    listener = listening_socket(host, port, config.backlog)
    logger.info(
        "serving on http%s://%s:%d with %d workers (least connections)",
        "s" if config.is_ssl else "",
        host,
        listener.getsockname()[1],
        config.workers,
    )
    try:
        HandoffSupervisor(config, listener).run()
    finally:
        listener.close()
