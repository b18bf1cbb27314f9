"""Throwaway real services for tests, benches and HIL: PostgreSQL and Mosquitto.

Both servers run from the Debian binaries in a private temp dir, listen on a random free
port on 127.0.0.1 only, and can be stopped, SIGKILLed and restarted on the same port and data
for fault tests. Only the standard library and subprocesses are used, so this module is safe
to import anywhere (no pytest, no database driver).

Typical use::

    with PostgresServer(fsync=False) as pg, MosquittoServer() as mqtt:
        engine = sqlalchemy.create_engine(pg.url)
        client.connect(mqtt.host, mqtt.port)

Under root, PostgreSQL (which refuses to run as root) is initialised and run as the
``postgres`` system user through ``runuser``; Mosquitto is told ``user root``.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = [
    "LOOPBACK",
    "MosquittoServer",
    "PostgresServer",
    "ServiceError",
    "ServiceNotInstalledError",
    "find_free_port",
    "find_mosquitto",
    "find_postgres_bindir",
    "port_accepts",
    "wait_for_port",
]

LOOPBACK = "127.0.0.1"
_PG_INSTALL_HINT = "install postgresql: apt-get install postgresql"
_MOSQUITTO_INSTALL_HINT = "install mosquitto: apt-get install mosquitto mosquitto-clients"
_DB_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_BIND_ERRORS = ("Address already in use", "could not bind", "could not create any TCP/IP")


class ServiceError(RuntimeError):
    """A throwaway service failed to start, stop or answer."""


class ServiceNotInstalledError(ServiceError):
    """The binaries a service needs are not installed."""


# --------------------------------------------------------------------------------------------
# helpers


def find_free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port that was free on ``host`` a moment ago (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_accepts(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """Return True when a TCP connect to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout_s: float = 10.0) -> None:
    """Poll until ``host:port`` accepts TCP connections, or raise ``TimeoutError``."""
    deadline = time.monotonic() + timeout_s
    while not port_accepts(host, port):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{host}:{port} did not accept connections within {timeout_s}s")
        time.sleep(0.05)


def _tail(path: Path, lines: int = 40) -> str:
    """Last ``lines`` lines of a text file, or a note that it is missing."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:]) or f"(empty log at {path})"


def _clean_env() -> dict[str, str]:
    """The current environment without libpq variables that could redirect our clients."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.setdefault("LC_ALL", "C.UTF-8")
    return env


def _is_root() -> bool:
    return os.geteuid() == 0


def pid_alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid`` (Linux ``/proc``)."""
    members: list[int] = []
    for stat_path in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat_path).read_text().rpartition(")")[2].split()
        except OSError:
            continue
        # fields: state, ppid, pgrp, ...
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(Path(stat_path).parent.name))
    return members


def _wait_group_gone(pgid: int, timeout_s: float) -> bool:
    """Wait until no live process is left in ``pgid``; True on success."""
    deadline = time.monotonic() + timeout_s
    while _group_members(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


# Services still running at interpreter exit are killed and their temp dirs removed.
_LIVE: set[_Service] = set()
_LIVE_LOCK = threading.Lock()


@atexit.register
def _cleanup_at_exit() -> None:
    with _LIVE_LOCK:
        services = list(_LIVE)
    for service in services:
        with contextlib.suppress(Exception):
            service._emergency_cleanup()


class _Service:
    """Common life cycle: temp dir, one process group, log tail, atexit safety net."""

    name = "service"

    def __init__(self, base_dir: str | os.PathLike[str] | None) -> None:
        self._base_dir = None if base_dir is None else Path(base_dir)
        self._root: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._pgid: int | None = None

    # -- overridables ---------------------------------------------------------------------
    def _log_files(self) -> list[Path]:
        return []

    def _emergency_cleanup(self) -> None:
        if self._pgid is not None:
            _killpg(self._pgid, signal.SIGKILL)
        if self._proc is not None:
            with contextlib.suppress(Exception):
                self._proc.wait(timeout=5)
        self._remove_root()

    # -- shared machinery -------------------------------------------------------------------
    @property
    def root(self) -> Path:
        """The service's private temp dir (config, data, sockets, logs)."""
        if self._root is None:
            raise ServiceError(f"{self.name} has no temp dir: call start() first")
        return self._root

    @property
    def pid(self) -> int | None:
        """PID of the server process this object started, while it runs."""
        return self._proc.pid if self.is_running and self._proc is not None else None

    @property
    def is_running(self) -> bool:
        """True while the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """Last lines of the service's log files, for error messages."""
        parts = [f"--- {p.name} ---\n{_tail(p, lines)}" for p in self._log_files()]
        return "\n".join(parts) or "(no logs)"

    def _make_root(self, prefix: str) -> Path:
        base = None if self._base_dir is None else str(self._base_dir)
        self._root = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
        with _LIVE_LOCK:
            _LIVE.add(self)
        return self._root

    def _remove_root(self) -> None:
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def _spawn(self, argv: list[str], out_path: Path) -> None:
        """Start ``argv`` in its own session, stdout/stderr appended to ``out_path``."""
        with open(out_path, "ab") as out:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=_clean_env(),
                start_new_session=True,
                cwd=str(self.root),
            )
        self._pgid = self._proc.pid

    def _reap(self, timeout_s: float) -> None:
        """Wait for the process group to empty (SIGKILL leftovers) and reap our child."""
        if self._pgid is not None and not _wait_group_gone(self._pgid, timeout_s):
            _killpg(self._pgid, signal.SIGKILL)
            _wait_group_gone(self._pgid, 5.0)
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        self._proc = None
        self._pgid = None

    def _fail(self, what: str) -> ServiceError:
        return ServiceError(f"{self.name} {what}\n{self.log_tail()}")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Self:  # pragma: no cover - overridden
        raise NotImplementedError

    def stop(self, *, keep_data: bool = False) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


# --------------------------------------------------------------------------------------------
# PostgreSQL


def find_postgres_bindir() -> Path:
    """Directory of the PostgreSQL server binaries (``initdb``, ``postgres``, ``pg_ctl``).

    ``$B2L_PG_BINDIR`` wins, then ``pg_config --bindir``, then the newest
    ``/usr/lib/postgresql/*/bin``. Raises ``ServiceNotInstalledError`` if none has ``initdb``.
    """
    candidates: list[Path] = []
    if os.environ.get("B2L_PG_BINDIR"):
        candidates.append(Path(os.environ["B2L_PG_BINDIR"]))
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            if out:
                candidates.append(Path(out))

    def version_key(p: str) -> tuple[int, ...]:
        version = Path(p).parent.name
        return tuple(int(x) for x in version.split(".") if x.isdigit()) or (0,)

    candidates += [
        Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version_key)[::-1]
    ]
    for cand in candidates:
        if (cand / "initdb").is_file() and (cand / "postgres").is_file():
            return cand
    looked = ", ".join(str(c) for c in candidates) or "no candidates"
    raise ServiceNotInstalledError(
        f"PostgreSQL server binaries (initdb, postgres) not found (looked in: {looked}); "
        f"{_PG_INSTALL_HINT}"
    )


class PostgresServer(_Service):
    """A throwaway PostgreSQL cluster on ``127.0.0.1:<random port>`` with trust auth.

    ``url`` is a SQLAlchemy URL (``postgresql+psycopg://``), ``dsn`` a libpq conninfo string.
    ``kill()`` SIGKILLs the postmaster; ``restart()`` brings the same data dir back on the same
    port and waits for crash recovery to finish.
    """

    name = "PostgreSQL"

    def __init__(
        self,
        *,
        database: str = "b2l",
        user: str = "postgres",
        port: int | None = None,
        fsync: bool = True,
        settings: Mapping[str, str | int | float | bool] | None = None,
        bindir: str | os.PathLike[str] | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        startup_timeout_s: float = 60.0,
    ) -> None:
        super().__init__(base_dir)
        _check_db_name(database)
        self.database = database
        self.user = user
        self.host = LOOPBACK
        self._fixed_port = port
        self.port: int = port or 0
        self.fsync = fsync
        self.settings = dict(settings or {})
        self._bindir = None if bindir is None else Path(bindir)
        self.startup_timeout_s = startup_timeout_s
        self._run_as: str | None = "postgres" if _is_root() else None
        self._postmaster_pid: int | None = None

    # -- paths ------------------------------------------------------------------------------
    @property
    def bindir(self) -> Path:
        """PostgreSQL binaries directory (found on first use)."""
        if self._bindir is None:
            self._bindir = find_postgres_bindir()
        elif not (self._bindir / "initdb").is_file():
            raise ServiceNotInstalledError(f"no initdb in {self._bindir}; {_PG_INSTALL_HINT}")
        return self._bindir

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    def _log_files(self) -> list[Path]:
        return [] if self._root is None else [self.log_path]

    # -- connection strings -------------------------------------------------------------------
    def url_for(self, database: str) -> str:
        """SQLAlchemy URL for ``database`` on this server."""
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    def dsn_for(self, database: str) -> str:
        """libpq conninfo (for ``psycopg.connect``) for ``database`` on this server."""
        return (
            f"host={self.host} port={self.port} user={self.user} dbname={database} "
            "connect_timeout=10"
        )

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the default database."""
        return self.url_for(self.database)

    @property
    def dsn(self) -> str:
        """libpq conninfo of the default database."""
        return self.dsn_for(self.database)

    @property
    def postmaster_pid(self) -> int | None:
        """PID of the running postmaster (from ``postmaster.pid``), if any."""
        if self._postmaster_pid is None and self._root is not None:
            with contextlib.suppress(OSError, ValueError, IndexError):
                pid_text = (self.data_dir / "postmaster.pid").read_text().splitlines()[0]
                self._postmaster_pid = int(pid_text)
        return self._postmaster_pid

    # -- life cycle -----------------------------------------------------------------------
    def _as_server_user(self, argv: list[str]) -> list[str]:
        if self._run_as is None:
            return argv
        runuser = shutil.which("runuser") or "/usr/sbin/runuser"
        return [runuser, "-u", self._run_as, "--", *argv]

    def _prepare_root(self) -> None:
        """Create the temp dir, owned by and traversable for the server user."""
        bases: list[str | None] = [None if self._base_dir is None else str(self._base_dir)]
        if self._run_as is not None and self._base_dir is None:
            bases.append("/tmp")  # fallback when $TMPDIR is not traversable for postgres
        for base in bases:
            self._base_dir = None if base is None else Path(base)
            root = self._make_root("b2l-pg-")
            (root / "sock").mkdir()
            self.log_path.touch()
            if self._run_as is None:
                return
            import pwd

            pw = pwd.getpwnam(self._run_as)
            for path in (root, root / "sock", self.log_path):
                os.chown(path, pw.pw_uid, pw.pw_gid)
            probe = subprocess.run(
                self._as_server_user(["test", "-w", str(root), "-a", "-x", str(root)]),
                capture_output=True,
                timeout=30,
            )
            if probe.returncode == 0:
                return
            self._remove_root()
        raise ServiceError(
            f"temp dir is not traversable for the {self._run_as!r} user; "
            "set base_dir= to a directory it can reach (e.g. /tmp)"
        )

    def _initdb(self) -> None:
        argv = [
            str(self.bindir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            self.user,
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]
        result = subprocess.run(
            self._as_server_user(argv),
            capture_output=True,
            text=True,
            env=_clean_env(),
            cwd=str(self.root),
            timeout=120,
        )
        if result.returncode != 0:
            raise ServiceError(
                f"initdb failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write("\ninclude 'b2l_throwaway.conf'\n")

    def _write_settings(self) -> None:
        values: dict[str, str | int | float | bool] = {
            "listen_addresses": LOOPBACK,
            "port": self.port,
            "unix_socket_directories": str(self.socket_dir),
            "logging_collector": False,
            "log_destination": "stderr",
            "fsync": self.fsync,
        }
        if not self.fsync:
            # Still crash-safe for a killed *process* (WAL is written to the OS at commit);
            # only an OS crash could lose data. synchronous_commit stays on for that reason.
            values["full_page_writes"] = False
        values.update(self.settings)
        lines = [f"{key} = {_pg_value(value)}" for key, value in values.items()]
        conf = self.data_dir / "b2l_throwaway.conf"
        conf.write_text("# written by hil.services.PostgresServer\n" + "\n".join(lines) + "\n")

    def start(self) -> Self:
        """initdb (first time), start the postmaster and wait until it accepts connections."""
        if self.is_running:
            return self
        bindir = self.bindir  # fail early with the install hint
        if self._run_as is not None and not (
            shutil.which("runuser") or Path("/usr/sbin/runuser").exists()
        ):
            raise ServiceNotInstalledError("running PostgreSQL as root needs runuser (util-linux)")
        fresh = self._root is None
        if fresh:
            self._prepare_root()
            try:
                self._initdb()
            except BaseException:
                self._remove_root()
                raise
        attempts = 3 if (fresh and self._fixed_port is None) else 1
        for attempt in range(attempts):
            if fresh and self._fixed_port is None:
                self.port = find_free_port()
            self._write_settings()
            self._spawn(
                self._as_server_user([str(bindir / "postgres"), "-D", str(self.data_dir)]),
                self.log_path,
            )
            try:
                self.wait_ready(self.startup_timeout_s)
                break
            except ServiceError:
                log = _tail(self.log_path, 20)
                self._reap(5.0)
                if attempt + 1 < attempts and any(e in log for e in _BIND_ERRORS):
                    continue
                if fresh:
                    err = self._fail("did not start")
                    self._remove_root()
                    raise err from None
                raise
        if fresh and self.database != "postgres":
            self.create_database(self.database, exist_ok=True)
        return self

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Poll ``pg_isready`` until the server accepts connections (recovery included)."""
        deadline = time.monotonic() + timeout_s
        isready = self.bindir / "pg_isready"
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                raise self._fail(f"exited with code {self._proc.returncode} during startup")
            if isready.exists():
                rc = subprocess.run(
                    [
                        str(isready),
                        "-q",
                        "-h",
                        self.host,
                        "-p",
                        str(self.port),
                        "-U",
                        self.user,
                        "-d",
                        "postgres",
                        "-t",
                        "2",
                    ],
                    env=_clean_env(),
                    timeout=10,
                    check=False,
                ).returncode
                ready = rc == 0
            else:
                ready = port_accepts(self.host, self.port)
            if ready:
                self._postmaster_pid = None
                return
            if time.monotonic() > deadline:
                raise self._fail(f"not ready on {self.host}:{self.port} after {timeout_s}s")
            time.sleep(0.1)

    def stop(self, *, keep_data: bool = False, timeout_s: float = 30.0) -> None:
        """Fast shutdown (SIGINT); removes the temp dir unless ``keep_data``."""
        if self.is_running:
            pid = self.postmaster_pid
            if pid is not None and pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGINT)
            elif self._pgid is not None:
                _killpg(self._pgid, signal.SIGINT)
        self._reap(timeout_s)
        self._postmaster_pid = None
        if not keep_data:
            self._remove_root()

    def kill(self) -> None:
        """SIGKILL the postmaster (a crash); its children exit; data stays for ``restart()``."""
        if not self.is_running:
            raise ServiceError("PostgreSQL is not running")
        pid = self.postmaster_pid
        if pid is None:
            raise self._fail("has no postmaster.pid")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        # Backends notice the postmaster's death and exit; restart needs them gone.
        self._reap(15.0)
        self._postmaster_pid = None

    def restart(self, timeout_s: float | None = None) -> Self:
        """Start again on the same port and data dir (after ``kill()``, or stops it first)."""
        if self._root is None:
            raise ServiceError("nothing to restart: the temp dir was removed by stop()")
        if self.is_running:
            self.stop(keep_data=True)
        else:
            self._reap(15.0)
        if timeout_s is not None:
            self.startup_timeout_s = timeout_s
        return self.start()

    def _emergency_cleanup(self) -> None:
        pid = self._postmaster_pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        super()._emergency_cleanup()

    # -- SQL through psql (no driver needed) ------------------------------------------------
    def psql(self, sql: str, database: str = "postgres", timeout_s: float = 60.0) -> str:
        """Run ``sql`` with psql; returns unaligned tuples-only output; raises on error."""
        argv = [
            str(self.bindir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
            "-h", self.host, "-p", str(self.port), "-U", self.user, "-d", database, "-c", sql,
        ]  # fmt: skip
        result = subprocess.run(
            argv, capture_output=True, text=True, env=_clean_env(), timeout=timeout_s
        )
        if result.returncode != 0:
            raise ServiceError(f"psql failed: {sql!r}\n{result.stderr.strip()}")
        return result.stdout.strip()

    def create_database(self, name: str, *, exist_ok: bool = False) -> str:
        """Create database ``name``; returns its SQLAlchemy URL."""
        _check_db_name(name)
        exists = self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'") == "1"
        if exists and not exist_ok:
            raise ServiceError(f"database {name!r} already exists")
        if not exists:
            self.psql(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists, closing its sessions."""
        _check_db_name(name)
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _check_db_name(name: str) -> None:
    if not _DB_NAME_RE.match(name):
        raise ValueError(f"invalid database name {name!r} (letters, digits, _; max 63)")


def _pg_value(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int | float):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


# --------------------------------------------------------------------------------------------
# Mosquitto


def find_mosquitto() -> Path:
    """Path of the ``mosquitto`` broker binary (``$B2L_MOSQUITTO``, PATH, /usr/sbin)."""
    for cand in (
        os.environ.get("B2L_MOSQUITTO"),
        shutil.which("mosquitto"),
        "/usr/sbin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ):
        if cand and Path(cand).is_file():
            return Path(cand)
    raise ServiceNotInstalledError(f"mosquitto binary not found; {_MOSQUITTO_INSTALL_HINT}")


# Directives the service owns: dropped from a base config and written by us instead.
_MOSQ_MANAGED = {
    "autosave_interval",
    "autosave_on_changes",
    "log_dest",
    "persistence",
    "persistence_file",
    "persistence_location",
    "pid_file",
    "user",
}
_MOSQ_UNSUPPORTED = {"port", "bind_address", "bind_interface", "include_dir"}


class MosquittoServer(_Service):
    """A throwaway Mosquitto 2 broker on ``127.0.0.1:<random port>``.

    Persistence is on (in the temp dir, autosaved every ``autosave_interval_s``) so QoS 1
    sessions survive ``stop()``/``restart()``, and after ``kill()`` everything up to the last
    autosave. ``users`` generates a password file (``mosquitto_passwd -U``), ``acl`` is the
    ACL file's content. ``base_config`` (e.g. the deployment's ``mosquitto.conf``) is used with
    every ``listener`` moved to a random loopback port and the file/log/persistence paths
    replaced by the temp dir's.
    """

    name = "Mosquitto"

    def __init__(
        self,
        *,
        allow_anonymous: bool = True,
        users: Mapping[str, str] | None = None,
        acl: str | None = None,
        base_config: str | None = None,
        extra_config: str = "",
        persistence: bool = True,
        autosave_interval_s: int = 1,
        port: int | None = None,
        binary: str | os.PathLike[str] | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        startup_timeout_s: float = 15.0,
    ) -> None:
        super().__init__(base_dir)
        self.host = LOOPBACK
        self._fixed_port = port
        self.ports: list[int] = [port] if port else []
        self.allow_anonymous = allow_anonymous
        self.users = dict(users or {})
        self.acl = acl
        self.base_config = base_config
        self.extra_config = extra_config
        self.persistence = persistence
        self.autosave_interval_s = autosave_interval_s
        self._binary = None if binary is None else Path(binary)
        self.startup_timeout_s = startup_timeout_s

    @property
    def port(self) -> int:
        """Port of the first listener."""
        if not self.ports:
            raise ServiceError("Mosquitto has no port yet: call start() first")
        return self.ports[0]

    @property
    def binary(self) -> Path:
        if self._binary is None:
            self._binary = find_mosquitto()
        elif not self._binary.is_file():
            raise ServiceNotInstalledError(
                f"{self._binary} does not exist; {_MOSQUITTO_INSTALL_HINT}"
            )
        return self._binary

    @property
    def config_path(self) -> Path:
        return self.root / "mosquitto.conf"

    @property
    def password_file(self) -> Path:
        return self.root / "passwd"

    @property
    def acl_file(self) -> Path:
        return self.root / "acl"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def persistence_path(self) -> Path:
        """The broker's persistence database file."""
        return self.data_dir / "mosquitto.db"

    @property
    def log_path(self) -> Path:
        return self.root / "mosquitto.log"

    @property
    def stdout_path(self) -> Path:
        return self.root / "mosquitto.out"

    def _log_files(self) -> list[Path]:
        return [] if self._root is None else [self.stdout_path, self.log_path]

    # -- config -----------------------------------------------------------------------------
    def _listener_count(self) -> int:
        if self.base_config is None:
            return 1
        count = sum(1 for line in self.base_config.splitlines() if _directive(line) == "listener")
        if count == 0:
            raise ServiceError("base_config has no 'listener' line")
        return count

    def render_config(self) -> str:
        """The config file text the broker runs with (needs ports and the temp dir)."""
        base = self.base_config
        if base is None:
            base = f"listener 0\nallow_anonymous {'true' if self.allow_anonymous else 'false'}\n"
        out = ["# generated by hil.services.MosquittoServer"]
        ports = iter(self.ports)
        has_pw = has_acl = False
        for raw in base.splitlines():
            key = _directive(raw)
            if key is None:
                out.append(raw)
            elif key == "listener":
                out.append(f"listener {next(ports)} {LOOPBACK}")
            elif key in _MOSQ_UNSUPPORTED:
                raise ServiceError(f"base_config directive {key!r} is not supported here")
            elif key == "password_file":
                if not self.users:
                    raise ServiceError("base_config sets password_file: pass users={...}")
                out.append(f"password_file {self.password_file}")
                has_pw = True
            elif key == "acl_file":
                if self.acl is None:
                    raise ServiceError("base_config sets acl_file: pass acl='...'")
                out.append(f"acl_file {self.acl_file}")
                has_acl = True
            elif key not in _MOSQ_MANAGED:
                out.append(raw)
        out.append("\n# managed by hil.services.MosquittoServer")
        if self.users and not has_pw:
            out.append(f"password_file {self.password_file}")
        if self.acl is not None and not has_acl:
            out.append(f"acl_file {self.acl_file}")
        out += [
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.data_dir}",
            "persistence_file mosquitto.db",
            f"autosave_interval {self.autosave_interval_s}",
            "autosave_on_changes false",
            f"log_dest file {self.log_path}",
        ]
        if _is_root():
            out.append("user root")
        if self.extra_config:
            out.append(self.extra_config)
        return "\n".join(out) + "\n"

    def _write_files(self) -> None:
        self.data_dir.mkdir(exist_ok=True)
        if self.acl is not None:
            self.acl_file.write_text(self.acl)
            self.acl_file.chmod(0o600)
        if self.users:
            lines = []
            for user, password in self.users.items():
                if not user or any(c in user for c in ":\n") or "\n" in password:
                    raise ValueError(f"invalid MQTT username/password for {user!r}")
                lines.append(f"{user}:{password}")
            self.password_file.write_text("\n".join(lines) + "\n")
            self.password_file.chmod(0o600)
            passwd = shutil.which("mosquitto_passwd") or str(
                self.binary.parent / "mosquitto_passwd"
            )
            if not Path(passwd).exists():
                raise ServiceNotInstalledError(
                    f"mosquitto_passwd not found; {_MOSQUITTO_INSTALL_HINT}"
                )
            result = subprocess.run(
                [passwd, "-U", str(self.password_file)], capture_output=True, text=True, timeout=60
            )
            if result.returncode != 0:
                raise ServiceError(f"mosquitto_passwd -U failed:\n{result.stdout}{result.stderr}")
        self.config_path.write_text(self.render_config())

    # -- life cycle -----------------------------------------------------------------------
    def start(self) -> Self:
        """Write the config (first time), start the broker and wait for its port."""
        if self.is_running:
            return self
        binary = self.binary
        fresh = self._root is None
        if fresh:
            self._make_root("b2l-mqtt-")
        n = self._listener_count()
        attempts = 3 if (fresh and self._fixed_port is None) else 1
        try:
            for attempt in range(attempts):
                if fresh:
                    fixed = [self._fixed_port] if self._fixed_port else []
                    self.ports = fixed + [find_free_port() for _ in range(n - len(fixed))]
                    self._write_files()
                self._spawn([str(binary), "-c", str(self.config_path)], self.stdout_path)
                try:
                    self.wait_ready(self.startup_timeout_s)
                    return self
                except ServiceError:
                    logs = self.log_tail(20)
                    self._reap(5.0)
                    if attempt + 1 < attempts and any(e in logs for e in _BIND_ERRORS):
                        continue
                    raise
        except BaseException:
            if fresh:
                err = self._fail("did not start")
                self._reap(5.0)
                self._remove_root()
                raise err from None
            raise
        return self  # pragma: no cover

    def wait_ready(self, timeout_s: float = 10.0) -> None:
        """Poll TCP connects to every listener until they succeed."""
        deadline = time.monotonic() + timeout_s
        for port in self.ports:
            while not port_accepts(self.host, port, 0.5):
                if self._proc is not None and self._proc.poll() is not None:
                    raise self._fail(f"exited with code {self._proc.returncode} during startup")
                if time.monotonic() > deadline:
                    raise self._fail(f"not ready on {self.host}:{port} after {timeout_s}s")
                time.sleep(0.05)

    def stop(self, *, keep_data: bool = False, timeout_s: float = 15.0) -> None:
        """SIGTERM (the broker saves its persistence db); removes the temp dir unless
        ``keep_data``."""
        if self.is_running and self._pgid is not None:
            _killpg(self._pgid, signal.SIGTERM)
        self._reap(timeout_s)
        if not keep_data:
            self._remove_root()

    def kill(self) -> None:
        """SIGKILL the broker: state since the last autosave is lost, as in a crash."""
        if not self.is_running or self._pgid is None:
            raise ServiceError("Mosquitto is not running")
        _killpg(self._pgid, signal.SIGKILL)
        self._reap(10.0)

    def restart(self, timeout_s: float | None = None) -> Self:
        """Start again with the same ports, config and persistence (stops it first if up)."""
        if self._root is None:
            raise ServiceError("nothing to restart: the temp dir was removed by stop()")
        if self.is_running:
            self.stop(keep_data=True)
        if timeout_s is not None:
            self.startup_timeout_s = timeout_s
        return self.start()

    def reload(self) -> None:
        """SIGHUP: the broker reads its password and ACL files again (sessions stay)."""
        if not self.is_running or self._pgid is None:
            raise ServiceError("Mosquitto is not running")
        _killpg(self._pgid, signal.SIGHUP)

    def wait_persisted(self, after_ns: int, timeout_s: float = 10.0) -> None:
        """Wait until the persistence db was written after ``after_ns`` (``time.time_ns()``)."""
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(OSError):
                if self.persistence_path.stat().st_mtime_ns > after_ns:
                    return
            if time.monotonic() > deadline:
                raise self._fail(f"did not autosave {self.persistence_path} within {timeout_s}s")
            time.sleep(0.05)

    def save_now(self, timeout_s: float = 10.0) -> None:
        """Ask the broker to write its persistence db now (SIGUSR1) and wait for it."""
        if not self.is_running or self._proc is None:
            raise ServiceError("Mosquitto is not running")
        before = time.time_ns()
        self._proc.send_signal(signal.SIGUSR1)
        self.wait_persisted(before, timeout_s)


def _directive(line: str) -> str | None:
    """First word of a config line, or None for blank lines and comments."""
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    return stripped.split(None, 1)[0]
