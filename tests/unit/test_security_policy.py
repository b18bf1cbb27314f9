"""The access policy of SPEC section 5 (a pure function) and the passport tiers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cloud.security.policy import (
    DATA_CATEGORIES,
    Action,
    Category,
    Grant,
    Principal,
    Role,
    decide,
    needs_audit,
    passport_tier,
)
from twin.passport import AccessTier

pytestmark = pytest.mark.unit

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
ADMIN = Principal("root", Role.ADMIN)
DEVICE = Principal("dev-1", Role.DEVICE, battery_id="B-1")
R, W = Action.READ, Action.WRITE


def _grant(
    battery: str | None, *categories: Category, start: int = -1, end: int | None = 1
) -> Grant:
    return Grant(
        battery,
        frozenset(categories),
        NOW + start * HOUR,
        None if end is None else NOW + end * HOUR,
    )


@pytest.mark.parametrize("category", list(Category))
@pytest.mark.parametrize("action", list(Action))
def test_admin_does_everything(category: Category, action: Action) -> None:
    assert decide(ADMIN, "B-9", category, action, NOW)


@pytest.mark.parametrize(
    ("category", "action", "allowed"),
    [
        (Category.TELEMETRY, W, True),
        (Category.EIS, W, True),
        (Category.EVENTS, W, True),
        (Category.ACKS, W, True),
        (Category.COMMANDS, R, True),
        (Category.PASSPORT_PUBLIC, R, True),
        (Category.TELEMETRY, R, False),
        (Category.COMMANDS, W, False),
        (Category.PASSPORT_PUBLIC, W, False),
        (Category.PASSPORT_RESTRICTED, R, False),
        (Category.ANALYTICS, R, False),
        (Category.ANALYTICS, W, False),
    ],
)
def test_device_on_its_own_battery(category: Category, action: Action, allowed: bool) -> None:
    grants = [_grant(None, *DATA_CATEGORIES)]  # grants never widen a device
    assert bool(decide(DEVICE, "B-1", category, action, NOW, grants)) is allowed


@pytest.mark.parametrize("category", list(Category))
@pytest.mark.parametrize("action", list(Action))
def test_device_never_reaches_another_battery(category: Category, action: Action) -> None:
    decision = decide(DEVICE, "B-2", category, action, NOW, [_grant(None, *DATA_CATEGORIES)])
    assert not decision
    assert "own battery" in decision.reason


@pytest.mark.parametrize("role", [Role.OPERATOR, Role.MANUFACTURER, Role.SERVICE, Role.VIEWER])
def test_reads_need_a_grant_except_public_passport(role: Role) -> None:
    user = Principal("u", role)
    for category in DATA_CATEGORIES - {Category.PASSPORT_PUBLIC}:
        assert not decide(user, "B-1", category, R, NOW)
        assert decide(user, "B-1", category, R, NOW, [_grant("B-1", category)])
        assert decide(user, "B-1", category, R, NOW, [_grant(None, category)])
        assert not decide(user, "B-2", category, R, NOW, [_grant("B-1", category)])
    assert decide(user, "B-1", Category.PASSPORT_PUBLIC, R, NOW)


def test_grant_time_window() -> None:
    user = Principal("u", Role.VIEWER)
    t = Category.TELEMETRY
    assert not decide(user, "B-1", t, R, NOW, [_grant("B-1", t, start=1, end=2)])  # not yet
    assert not decide(user, "B-1", t, R, NOW, [_grant("B-1", t, start=-2, end=-1)])  # over
    assert not decide(user, "B-1", t, R, NOW, [_grant("B-1", t, start=-1, end=0)])  # end excl.
    assert decide(user, "B-1", t, R, NOW, [_grant("B-1", t, start=0, end=1)])  # start incl.
    assert decide(user, "B-1", t, R, NOW, [_grant("B-1", t, start=-1, end=None)])  # open end


def test_grant_category_must_match() -> None:
    user = Principal("u", Role.OPERATOR)
    assert not decide(user, "B-1", Category.EIS, R, NOW, [_grant("B-1", Category.TELEMETRY)])


@pytest.mark.parametrize(
    ("role", "writable"),
    [
        (Role.OPERATOR, {Category.COMMANDS}),
        (Role.MANUFACTURER, {Category.PASSPORT_PUBLIC, Category.PASSPORT_RESTRICTED}),
        (Role.SERVICE, {Category.ANALYTICS}),
        (Role.VIEWER, set()),
    ],
)
def test_writes_by_role_and_grant(role: Role, writable: set[Category]) -> None:
    user = Principal("u", role)
    everything = [_grant(None, *DATA_CATEGORIES)]
    for category in Category:
        assert bool(decide(user, "B-1", category, W, NOW, everything)) is (category in writable)
        assert not decide(user, "B-1", category, W, NOW)  # never without a grant


def test_uplink_channels_are_for_devices() -> None:
    user = Principal("u", Role.OPERATOR)
    for category in (Category.EVENTS, Category.ACKS):
        assert not decide(user, "B-1", category, W, NOW, [_grant(None, *DATA_CATEGORIES)])


def test_manufacturer_named_on_the_battery() -> None:
    maker = Principal("acme", Role.MANUFACTURER)
    for category in (Category.PASSPORT_PUBLIC, Category.PASSPORT_RESTRICTED):
        assert decide(maker, "B-1", category, W, NOW, manufacturer="acme")
        assert not decide(maker, "B-1", category, W, NOW, manufacturer="other")
    assert not decide(maker, "B-1", Category.TELEMETRY, R, NOW, manufacturer="acme")
    viewer = Principal("acme", Role.VIEWER)
    assert not decide(viewer, "B-1", Category.PASSPORT_RESTRICTED, R, NOW, manufacturer="acme")


def test_audit_of_restricted_reads() -> None:
    user = Principal("u", Role.VIEWER)
    assert needs_audit(user, "B-1", Category.TELEMETRY, R)
    assert needs_audit(ADMIN, "B-1", Category.PASSPORT_RESTRICTED, R)
    assert not needs_audit(user, "B-1", Category.PASSPORT_PUBLIC, R)
    assert not needs_audit(user, "B-1", Category.TELEMETRY, W)
    assert not needs_audit(DEVICE, "B-1", Category.COMMANDS, R)
    assert needs_audit(DEVICE, "B-2", Category.COMMANDS, R)


def test_passport_tiers() -> None:
    restricted = [_grant("B-1", Category.PASSPORT_RESTRICTED)]
    assert passport_tier(ADMIN, "B-1", NOW) is AccessTier.AUTHORITY
    assert passport_tier(Principal("u", Role.VIEWER), "B-1", NOW) is AccessTier.PUBLIC
    viewer = Principal("u", Role.VIEWER)
    assert passport_tier(viewer, "B-1", NOW, restricted) is AccessTier.LEGITIMATE_INTEREST
    maker = Principal("acme", Role.MANUFACTURER)
    assert passport_tier(maker, "B-1", NOW, manufacturer="acme") is AccessTier.AUTHORITY
    assert passport_tier(maker, "B-1", NOW) is AccessTier.PUBLIC
    assert passport_tier(DEVICE, "B-1", NOW) is AccessTier.PUBLIC
