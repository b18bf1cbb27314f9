"""The access policy of SPEC section 5, as one pure function.

Who may read or write which data category of which battery, now, given the principal's grants.
The matrix (also in ``docs/security.md``):

- **admin**: everything, every battery.
- **device** (one edge runtime = one battery): its own battery only; writes ``telemetry``,
  ``eis``, ``events`` and ``acks``, reads ``commands`` and ``passport-public``. Nothing else.
- **every other role** reads a category of a battery only under a grant covering that battery
  (or all batteries), that category and ``now`` (``valid_from <= now < valid_until``);
  ``passport-public`` is readable by every authenticated principal without a grant.
- **writes** need a grant for the battery and category as reads do, *and* a role that may write
  the category: operator → ``commands``; manufacturer → ``passport-public`` and
  ``passport-restricted``; service → ``analytics``; viewer → nothing.
- the **manufacturer named on a battery** (``batteries.manufacturer`` = its user name) reads and
  writes that battery's passport categories without a grant.
- the **owner named on a battery** (``batteries.owner``) reads every data category of it and
  writes what its role may write, without a grant; it gives others grants on it.

``events`` and ``acks`` are uplink channels, not grantable data categories: only a device (for
its own battery) and an admin write them; events are read as ``telemetry``, acks as ``commands``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from twin.passport import AccessTier


class Role(StrEnum):
    """The roles of SPEC section 5."""

    ADMIN = "admin"
    OPERATOR = "operator"
    MANUFACTURER = "manufacturer"
    SERVICE = "service"
    DEVICE = "device"
    VIEWER = "viewer"


class Category(StrEnum):
    """Data categories (grantable) and the two uplink-only channels (``events``, ``acks``)."""

    PASSPORT_PUBLIC = "passport-public"
    PASSPORT_RESTRICTED = "passport-restricted"
    TELEMETRY = "telemetry"
    EIS = "eis"
    ANALYTICS = "analytics"
    COMMANDS = "commands"
    EVENTS = "events"
    ACKS = "acks"


class Action(StrEnum):
    """What is done with the data."""

    READ = "read"
    WRITE = "write"


DATA_CATEGORIES: frozenset[Category] = frozenset(
    {
        Category.PASSPORT_PUBLIC,
        Category.PASSPORT_RESTRICTED,
        Category.TELEMETRY,
        Category.EIS,
        Category.ANALYTICS,
        Category.COMMANDS,
    }
)
"""The categories a grant can cover."""

PASSPORT_CATEGORIES: frozenset[Category] = frozenset(
    {Category.PASSPORT_PUBLIC, Category.PASSPORT_RESTRICTED}
)

RESTRICTED_CATEGORIES: frozenset[Category] = DATA_CATEGORIES - {Category.PASSPORT_PUBLIC}
"""Reads of these are written to the audit log."""

DEVICE_PERMISSIONS: frozenset[tuple[Category, Action]] = frozenset(
    {
        (Category.TELEMETRY, Action.WRITE),
        (Category.EIS, Action.WRITE),
        (Category.EVENTS, Action.WRITE),
        (Category.ACKS, Action.WRITE),
        (Category.COMMANDS, Action.READ),
        (Category.PASSPORT_PUBLIC, Action.READ),
    }
)

WRITABLE_BY_ROLE: dict[Role, frozenset[Category]] = {
    Role.OPERATOR: frozenset({Category.COMMANDS}),
    Role.MANUFACTURER: frozenset({Category.PASSPORT_PUBLIC, Category.PASSPORT_RESTRICTED}),
    Role.SERVICE: frozenset({Category.ANALYTICS}),
    Role.VIEWER: frozenset(),
}
"""Categories a granted (non-admin, non-device) role may write."""


@dataclass(frozen=True)
class Principal:
    """Who makes a request: a user (by name) or a device (by device id, with its battery)."""

    subject: str
    role: Role
    battery_id: str | None = None
    """The device's battery; None for users."""

    @property
    def is_device(self) -> bool:
        """True for an edge runtime's credentials."""
        return self.role is Role.DEVICE


@dataclass(frozen=True)
class Grant:
    """Access of one user to one battery (or all: ``battery_id`` None) for some categories."""

    battery_id: str | None
    categories: frozenset[Category]
    valid_from: datetime
    valid_until: datetime | None = None
    """Exclusive end; None: no end."""

    def covers(self, battery_id: str, category: Category, now: datetime) -> bool:
        """True if this grant covers ``battery_id`` and ``category`` at ``now``."""
        return (
            (self.battery_id is None or self.battery_id == battery_id)
            and category in self.categories
            and self.valid_from <= now
            and (self.valid_until is None or now < self.valid_until)
        )


@dataclass(frozen=True)
class Decision:
    """The policy's answer, with the reason (for the audit log and the 403 message)."""

    allowed: bool
    reason: str

    def __bool__(self) -> bool:
        return self.allowed


def decide(
    principal: Principal,
    battery_id: str,
    category: Category,
    action: Action,
    now: datetime,
    grants: Iterable[Grant] = (),
    manufacturer: str | None = None,
    owner: str | None = None,
) -> Decision:
    """May ``principal`` do ``action`` on ``category`` of ``battery_id`` at ``now``?

    ``grants`` are the principal's; ``manufacturer`` and ``owner`` are the user names of the
    battery's manufacturer and owner accounts, if any.
    """
    if principal.role is Role.ADMIN:
        return Decision(True, "admin")
    if principal.is_device:
        if principal.battery_id != battery_id:
            return Decision(False, "a device reaches only its own battery")
        if (category, action) in DEVICE_PERMISSIONS:
            return Decision(True, "device, own battery")
        return Decision(False, f"a device may not {action.value} {category.value}")
    if category not in DATA_CATEGORIES:
        return Decision(False, f"only devices {action.value} {category.value}")
    if action is Action.WRITE and category not in WRITABLE_BY_ROLE.get(principal.role, ()):
        return Decision(False, f"role {principal.role.value} may not write {category.value}")
    if action is Action.READ and category is Category.PASSPORT_PUBLIC:
        return Decision(True, "public passport data")
    if (
        principal.role is Role.MANUFACTURER
        and manufacturer is not None
        and principal.subject == manufacturer
        and category in PASSPORT_CATEGORIES
    ):
        return Decision(True, "manufacturer of the battery")
    if owner is not None and principal.subject == owner:
        return Decision(True, "owner of the battery")
    if any(grant.covers(battery_id, category, now) for grant in grants):
        return Decision(True, "grant")
    return Decision(False, f"no grant for {category.value} of this battery now")


def needs_audit(principal: Principal, battery_id: str, category: Category, action: Action) -> bool:
    """True for reads of restricted data, except a device reading its own battery."""
    if action is not Action.READ or category not in RESTRICTED_CATEGORIES:
        return False
    return not (principal.is_device and principal.battery_id == battery_id)


def passport_tier(
    principal: Principal,
    battery_id: str,
    now: datetime,
    grants: Iterable[Grant] = (),
    manufacturer: str | None = None,
    owner: str | None = None,
) -> AccessTier:
    """The highest passport access tier (EU 2023/1542 Annex XIII) ``principal`` reads.

    Admins (who stand for authorities) read every tier; a granted ``passport-restricted`` read
    gives the legitimate-interest tier; a manufacturer allowed to read it (named on the battery
    or granted) reads the authority tier of the data it entered; everyone else reads the public
    tier.
    """
    if principal.role is Role.ADMIN:
        return AccessTier.AUTHORITY
    if decide(
        principal,
        battery_id,
        Category.PASSPORT_RESTRICTED,
        Action.READ,
        now,
        grants,
        manufacturer,
        owner,
    ):
        if principal.role is Role.MANUFACTURER:
            return AccessTier.AUTHORITY
        return AccessTier.LEGITIMATE_INTEREST
    return AccessTier.PUBLIC
