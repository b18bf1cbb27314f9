"""Provisioning a cloud for a bench or the demo: schema, batteries, devices, an operator.

``provision`` migrates the database, registers each battery (with its cell parameters, so the
cloud mirror runs) unless it exists, gives it fresh device credentials (revoking the previous
ones) and makes sure an operator user with a grant on every battery exists. It uses the cloud's
services directly, as ``b2l cloud migrate|create-device|create-user|grant`` would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cloud.db.engine import Database
from cloud.db.migrate import upgrade
from cloud.security.context import SecurityContext
from cloud.security.policy import Category
from cloud.services.accounts import (
    NewDevice,
    create_device,
    create_user,
    grant_access,
    list_devices,
    list_users,
    revoke_device,
)
from cloud.services.batteries import BatteryService
from cloud.settings import CloudSettings
from twin.cell_params import load_builtin
from twin.topology import BatteryTopology

__all__ = ["BatterySpec", "provision"]

OPERATOR_CATEGORIES = tuple(c for c in Category if c not in (Category.EVENTS, Category.ACKS))
"""Every grantable data category (events and acks are uplink channels, not categories)."""


@dataclass(frozen=True)
class BatterySpec:
    """A battery to register: id, built-in cell parameter set, series cells."""

    battery_id: str
    chemistry: str = "nmc_lgm50"
    cells_in_series: int = 16
    manufacturer: str = "demo-manufacturer"


def provision(
    settings: CloudSettings,
    batteries: Sequence[BatterySpec],
    *,
    operator: str,
    operator_password: str,
) -> dict[str, NewDevice]:
    """Migrate, register ``batteries``, make their devices and the operator; the devices."""
    upgrade(settings.database_url)
    security = SecurityContext.from_settings(settings)
    db = Database.from_url(settings.database_url)
    now = datetime.now(UTC)
    devices: dict[str, NewDevice] = {}
    try:
        registry = BatteryService(db)
        for battery in batteries:
            if not registry.exists(battery.battery_id):
                registry.register(
                    battery.battery_id,
                    BatteryTopology(
                        n_packs=1,
                        modules_per_pack=1,
                        cells_per_module=battery.cells_in_series,
                        cells_in_parallel=1,
                    ),
                    cell_parameters=load_builtin(battery.chemistry),
                    manufacturer=battery.manufacturer,
                    now=now,
                )
            for device_id, _battery, _created, revoked in list_devices(db, battery.battery_id):
                if not revoked:
                    revoke_device(db, device_id, now)
            devices[battery.battery_id] = create_device(db, security, battery.battery_id, now)
        if operator not in {name for name, _role, _disabled in list_users(db)}:
            create_user(db, security, operator, "operator", operator_password, now)
            grant_access(
                db,
                user_name=operator,
                battery_id=None,
                categories=OPERATOR_CATEGORIES,
                valid_from=now,
                valid_until=None,
                granted_by="b2l provisioning",
                now=now,
            )
    finally:
        db.dispose()
    return devices
