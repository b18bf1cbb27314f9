"""Shared helpers of the cloud API tests: a controllable clock and an app on a real database.

``CloudHarness`` runs ``cloud.app.create_app`` on a migrated database (SQLite file or a fresh
PostgreSQL database), with two batteries ``B-1`` and ``B-2`` registered and fast argon2
parameters, behind a ``TestClient``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient

from cloud.app import create_app
from cloud.db.engine import Database
from cloud.db.migrate import upgrade
from cloud.security.policy import Role
from cloud.services.accounts import create_device, create_user, grant_access
from cloud.services.batteries import BatteryService
from cloud.settings import CloudSettings
from twin.topology import BatteryTopology

FAST_ARGON2: dict[str, Any] = {
    "argon2_time_cost": 1,
    "argon2_memory_kib": 1024,
    "argon2_parallelism": 1,
}
PASSWORD = "correct horse battery"
BATTERIES = ("B-1", "B-2")


@dataclass
class FakeClock:
    """A clock the test moves by hand."""

    now: datetime = field(default_factory=lambda: datetime.now(UTC).replace(microsecond=0))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        self.now += timedelta(seconds=seconds)


@dataclass
class CloudHarness:
    """An app, its client, its database and its clock."""

    app: FastAPI
    client: TestClient
    db: Database
    clock: FakeClock
    settings: CloudSettings

    @property
    def state(self) -> Any:
        """The application's ``AppState``."""
        return self.app.state.b2l

    def add_user(self, name: str, role: Role | str, password: str = PASSWORD) -> None:
        """Create a user."""
        create_user(self.db, self.state.security, name, role, password, self.clock())

    def grant(
        self,
        user: str,
        battery_id: str | None,
        *categories: str,
        start_s: float = -3600,
        end_s: float | None = 3600,
    ) -> None:
        """Grant ``user`` the categories from now+start_s to now+end_s (None: no end)."""
        now = self.clock()
        grant_access(
            self.db,
            user_name=user,
            battery_id=battery_id,
            categories=categories,
            valid_from=now + timedelta(seconds=start_s),
            valid_until=None if end_s is None else now + timedelta(seconds=end_s),
            granted_by="test",
            now=now,
        )

    def add_device(self, battery_id: str) -> tuple[str, str]:
        """Create a device for ``battery_id``; (device_id, secret)."""
        new = create_device(self.db, self.state.security, battery_id, self.clock())
        return new.device_id, new.secret

    def login(self, username: str, password: str = PASSWORD) -> dict[str, Any]:
        """POST the token form; the JSON answer (asserts 200)."""
        response = self.client.post(
            "/api/v1/auth/token", data={"username": username, "password": password}
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def headers(self, username: str, password: str = PASSWORD) -> dict[str, str]:
        """Authorization headers for a fresh access token of ``username``."""
        return bearer(self.login(username, password)["access_token"])


def bearer(token: str) -> dict[str, str]:
    """The ``Authorization`` header for ``token``."""
    return {"Authorization": f"Bearer {token}"}


def cloud_settings(url: str, **overrides: Any) -> CloudSettings:
    """Settings for tests: the database ``url``, fast argon2, no env file."""
    values: dict[str, Any] = {"database_url": url, **FAST_ARGON2, **overrides}
    return CloudSettings(_env_file=None, **values)  # type: ignore[call-arg]


@contextmanager
def cloud_harness(
    url: str, *, register: bool = True, app_factory: Any = create_app, **overrides: Any
) -> Iterator[CloudHarness]:
    """Migrate ``url``, register ``BATTERIES``, start the app; everything closed at the end."""
    upgrade(url)
    settings = cloud_settings(url, **overrides)
    clock = FakeClock()
    db = Database.from_url(url)
    try:
        if register:
            service = BatteryService(db)
            for battery_id in BATTERIES:
                service.register(
                    battery_id,
                    BatteryTopology(cells_per_module=4),
                    manufacturer="acme",
                    now=clock(),
                )
        app = app_factory(settings, database=db, clock=clock)
        with TestClient(app) as client:
            yield CloudHarness(app=app, client=client, db=db, clock=clock, settings=settings)
    finally:
        db.dispose()
