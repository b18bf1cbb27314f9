"""``b2l cloud serve --workers N``: N uvicorn worker processes, one listening socket each.

uvicorn's own supervisor hands every worker the same listening socket. Whichever worker wakes
first accepts every connection waiting at that moment, so a burst of keep-alive clients (a load
balancer's pool, a benchmark) ends up on one worker while the others idle. Here each worker
listens on its own socket bound with ``SO_REUSEPORT`` to the same address, and the kernel
spreads new connections over the workers by a hash of the client's address and port.

The supervision itself (health checks, replacing a dead or hung worker on its own socket,
SIGTERM/SIGINT) is uvicorn's ``Multiprocess``; only the choice of socket per worker differs.
Linux only (``SO_REUSEPORT`` balancing), like the rest of the deployment.
"""

from __future__ import annotations

import logging
import socket

from uvicorn.config import STARTUP_FAILURE, Config
from uvicorn.supervisors.multiprocess import Multiprocess, Process

logger = logging.getLogger("uvicorn.error")


def reuse_port_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` TCP sockets bound to ``(host, port)`` with ``SO_REUSEPORT`` (not yet
    listening: each worker listens on its own); ``port`` 0 picks one free port for all."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]
            sock.set_inheritable(True)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class ReusePortSupervisor(Multiprocess):
    """uvicorn's ``Multiprocess`` with worker ``i`` always on ``sockets[i]``."""

    def __init__(self, config: Config, sockets: list[socket.socket]) -> None:
        super().__init__(config, sockets)
        self.processes_num = len(sockets)

    def _start_worker(self, index: int) -> Process:
        process = Process(self.config, [self.sockets[index]])
        process.start()
        return process

    def init_processes(self) -> None:
        self.processes = [self._start_worker(index) for index in range(self.processes_num)]

    def restart_all(self) -> None:
        """One worker after the other (SIGHUP): the new one is up before the old one stops."""
        for index, old_process in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            new_process = self._start_worker(index)
            if not new_process.wait_until_ready(
                self.config.timeout_worker_healthcheck, self.should_exit
            ):
                new_process.kill()
                new_process.join()
                return
            old_process.terminate()
            old_process.join()
            self.processes[index] = new_process

    def keep_subprocess_alive(self) -> None:
        """Replace a dead or hung worker on its own socket (connections the kernel queued on
        it meanwhile wait there); stop everything if a worker could not even start."""
        if self.should_exit.is_set():
            return
        for index, process in enumerate(self.processes):
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            process.kill()
            process.join()
            if process.exitcode == STARTUP_FAILURE:
                logger.error("worker [%s] failed to start; stopping", process.pid)
                self.should_exit.set()
                return
            if self.should_exit.is_set():
                return
            logger.info("worker [%s] died; starting another", process.pid)
            self.processes[index] = self._start_worker(index)


def serve_workers(config: Config, host: str, port: int) -> None:
    """Run ``config.workers`` workers of ``config`` (an app factory given as an import string)
    on ``(host, port)`` until SIGTERM or SIGINT."""
    sockets = reuse_port_sockets(host, port, config.workers)
    logger.info(
        "serving on http%s://%s:%d with %d workers (SO_REUSEPORT)",
        "s" if config.is_ssl else "",
        host,
        sockets[0].getsockname()[1],
        len(sockets),
    )
    try:
        ReusePortSupervisor(config, sockets).run()
    finally:
        for sock in sockets:
            sock.close()
