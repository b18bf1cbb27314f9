"""Helpers of the edge runtime tests: a runtime wired to a simulated pack, in virtual time.

``EdgeBench`` steps a pack simulator (``simulators.serial_bms`` over a real TCP socket or pty,
``simulators.can_bms`` on python-can's virtual bus) and an ``EdgeRuntime`` in turns: the
simulator runs ``step_s`` simulated seconds, then the runtime polls its link and the forwarder
sends what is due. The runtime's clocks are the simulator's (``origin + env.now``), so periods,
timeouts and record timestamps are simulated time; a run takes a fraction of its simulated time.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_runtime.clock import Clock
from edge_runtime.config import EdgeSettings, load_settings
from edge_runtime.runtime import EdgeRuntime
from edge_runtime.uplink import Uplink
from edge_runtime.uplink.memory import MemoryCloud, MemoryUplink
from simulators.pack import PackSimulator

ORIGIN_S = 1_760_000_000.0
WALL_LIMIT_S = 60.0


def edge_settings(
    tmp_path: Path, *, battery_id: str = "B-1", cells: int = 4, link: dict[str, Any], **extra: Any
) -> EdgeSettings:
    """Settings of one battery with ``cells`` series cells, a memory uplink by default."""
    values: dict[str, Any] = {
        "battery_id": battery_id,
        "topology": {"cells_per_module": cells},
        "link": link,
        "uplink": {"kind": "memory", "linger_s": 0.0},
        "outbox": {"path": str(tmp_path / "outbox.sqlite")},
        "status_period_s": 1.0,
    }
    values.update(extra)
    return load_settings(None, **values)


class EdgeBench:
    """A simulator and an edge runtime stepped together (see the module docstring)."""

    def __init__(
        self,
        sim: PackSimulator,
        settings: EdgeSettings,
        *,
        truth: io.StringIO | None = None,
        uplink: Uplink | None = None,
        cloud: MemoryCloud | None = None,
    ) -> None:
        self.sim = sim
        self.truth = truth
        self.settings = settings
        env = sim.env
        self.clock = Clock(
            wall_s=lambda: ORIGIN_S + float(env.now), monotonic_s=lambda: float(env.now)
        )
        if uplink is None:
            self.cloud = cloud or MemoryCloud()
            uplink = MemoryUplink(settings.battery_id, self.cloud, clock=self.clock)
        self.runtime = EdgeRuntime(settings, clock=self.clock, uplink=uplink)
        self.runtime.start(threaded=False)

    @property
    def now(self) -> float:
        """Simulated seconds since the start."""
        return float(self.sim.env.now)

    def step(self, step_s: float = 0.05) -> None:
        """One turn: the simulator, then the runtime and the forwarder."""
        self.sim.run(self.now + step_s)
        self.runtime.step(0.0)
        self.runtime.forwarder.step()

    def run(self, seconds: float, step_s: float = 0.05) -> None:
        """Run ``seconds`` more simulated seconds."""
        self.run_until(lambda: False, seconds, step_s)

    def run_until(self, done: Callable[[], bool], max_s: float, step_s: float = 0.05) -> bool:
        """Step until ``done()`` or ``max_s`` simulated seconds passed; wall time bounded."""
        end = self.now + max_s
        wall_end = time.monotonic() + WALL_LIMIT_S
        while self.now < end - 1e-9:
            assert time.monotonic() < wall_end, "the bench is too slow"
            self.step(step_s)
            if done():
                return True
        return done()

    def truth_lines(self) -> list[dict[str, Any]]:
        """The simulator's ground truth so far."""
        assert self.truth is not None
        return [json.loads(line) for line in self.truth.getvalue().splitlines()]

    def truth_at(self, epoch_s: float) -> dict[str, Any]:
        """The ground-truth line nearest to a record's time."""
        t = epoch_s - ORIGIN_S
        return min(self.truth_lines(), key=lambda line: abs(line["time_s"] - t))

    def close(self) -> None:
        """Close the runtime, then the simulator."""
        self.runtime.close()
        self.sim.close()


# ----------------------------------------------------------------------------- a real cloud


class CloudServer:
    """``cloud.app.create_app`` on a SQLite file, served by uvicorn in a thread on loopback.

    One battery (``battery_id``, ``cells`` series cells) with a device (``device_id``,
    ``secret``) and an ``admin`` user. ``stop`` and ``start`` again (same port, same database)
    stand for a cloud outage. Fast argon2 parameters keep logins cheap.
    """

    def __init__(
        self,
        tmp_path: Path,
        *,
        battery_id: str = "B-1",
        cells: int = 4,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        from datetime import UTC, datetime

        from cloud.db.engine import Database
        from cloud.db.migrate import upgrade
        from cloud.security.context import SecurityContext
        from cloud.services.accounts import create_device, create_user
        from cloud.services.batteries import BatteryService
        from cloud.settings import CloudSettings
        from hil.services import find_free_port
        from twin.topology import BatteryTopology

        self.url = f"sqlite:///{tmp_path / 'cloud.db'}"
        upgrade(self.url)
        self.settings = CloudSettings(  # type: ignore[call-arg]
            _env_file=None,
            database_url=self.url,
            argon2_time_cost=1,
            argon2_memory_kib=1024,
            argon2_parallelism=1,
        )
        self.db = Database.from_url(self.url)
        now = datetime.now(UTC)
        BatteryService(self.db).register(
            battery_id, BatteryTopology(cells_per_module=cells), manufacturer="acme", now=now
        )
        security = SecurityContext.from_settings(self.settings)
        device = create_device(self.db, security, battery_id, now)
        self.device_id, self.secret = device.device_id, device.secret
        self.admin_password = "admin password 123"
        create_user(self.db, security, "admin", "admin", self.admin_password, now)
        self.battery_id = battery_id
        self.port = find_free_port()
        self.tls = tls
        """(certificate, key) of HTTPS, for the name ``localhost``; None: plain HTTP."""
        scheme, host = ("https", "localhost") if tls else ("http", "127.0.0.1")
        self.base_url = f"{scheme}://{host}:{self.port}"
        self._server: Any = None
        self._thread: Any = None

    def start(self) -> None:
        """Serve (a new app on the same database) and wait until it answers."""
        import threading

        import httpx
        import uvicorn

        from cloud.app import create_app

        app = create_app(self.settings, database=self.db)
        cert, key = (None, None) if self.tls is None else (str(self.tls[0]), str(self.tls[1]))
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            ssl_certfile=cert,
            ssl_keyfile=key,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20.0
        while True:
            try:
                if self.tls is not None:
                    if self._thread.is_alive() and getattr(self._server, "started", False):
                        return
                elif httpx.get(f"{self.base_url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the cloud did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop serving (connections are refused until ``start``)."""
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(10)
            self._server = None

    def admin_headers(self) -> dict[str, str]:
        """A fresh admin bearer token."""
        import httpx

        response = httpx.post(
            f"{self.base_url}/api/v1/auth/token",
            data={"username": "admin", "password": self.admin_password},
        )
        assert response.status_code == 200, response.text
        return {"Authorization": f"Bearer {response.json()['access_token']}"}

    def stored_seqs(self) -> list[int]:
        """Sequence numbers the cloud stored for the battery."""
        from sqlalchemy import select

        from cloud.db.models import IngestedRecordRow

        with self.db.read() as session:
            rows = session.scalars(
                select(IngestedRecordRow.seq).where(IngestedRecordRow.battery_id == self.battery_id)
            )
            return sorted(int(s) for s in rows)

    def close(self) -> None:
        """Stop and release the database."""
        self.stop()
        self.db.dispose()
