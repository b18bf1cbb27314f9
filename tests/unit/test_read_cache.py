"""``cloud.services.read_cache.ReadCache`` and the payloads of ``cloud.db.changes``."""

from __future__ import annotations

from cloud.db.changes import (
    MAX_PAYLOAD_CHARS,
    TWINS_PREFIX,
    Changes,
    parse_payload,
    twin_payloads,
)
from cloud.services.accounts import AccessFacts
from cloud.services.read_cache import ReadCache

FACTS = AccessFacts(manufacturer="acme", owner=None, grants=())
TWIN = (3, b'{"battery_id":"B-1"}')


def live_cache(max_entries: int = 16) -> ReadCache:
    cache = ReadCache(max_entries)
    cache.set_live(True)
    return cache


def test_nothing_is_served_or_kept_while_not_live() -> None:
    cache = ReadCache()
    cache.put_twin(cache.stamp("B-1"), "B-1", TWIN)
    cache.put_access_facts(cache.stamp("B-1"), "B-1", "olga", FACTS)
    assert cache.twin("B-1") is None and cache.access_facts("B-1", "olga") is None
    cache.set_live(True)
    assert cache.twin("B-1") is None  # what was offered before going live was not kept


def test_kept_values_are_served_until_a_change_drops_them() -> None:
    cache = live_cache()
    cache.put_twin(cache.stamp("B-1"), "B-1", TWIN)
    cache.put_twin(cache.stamp("B-2"), "B-2", (1, b"{}"))
    cache.put_access_facts(cache.stamp("B-1"), "B-1", "olga", FACTS)
    cache.put_access_facts(cache.stamp("B-1"), "B-1", None, FACTS)
    assert cache.twin("B-1") == TWIN and cache.access_facts("B-1", "olga") == FACTS
    assert cache.access_facts("B-1", "otto") is None  # another user's facts were not read

    cache.changed(Changes(twins=frozenset({"B-1"})))
    assert cache.twin("B-1") is None and cache.twin("B-2") == (1, b"{}")
    assert cache.access_facts("B-1", "olga") == FACTS  # a twin change leaves access alone

    cache.changed(Changes(access=True))
    assert cache.access_facts("B-1", "olga") is None and cache.access_facts("B-1", None) is None
    assert cache.twin("B-2") == (1, b"{}")


def test_a_value_read_across_a_change_is_not_kept() -> None:
    cache = live_cache()
    twin_stamp, access_stamp = cache.stamp("B-1"), cache.stamp("B-1")
    other_twin = cache.stamp("B-2")
    cache.changed(Changes(twins=frozenset({"B-1"}), access=True))  # committed mid-read
    cache.put_twin(twin_stamp, "B-1", TWIN)
    cache.put_access_facts(access_stamp, "B-1", "olga", FACTS)
    cache.put_twin(other_twin, "B-2", TWIN)  # B-2 did not change: kept
    assert cache.twin("B-1") is None and cache.access_facts("B-1", "olga") is None
    assert cache.twin("B-2") == TWIN
    cache.put_twin(cache.stamp("B-1"), "B-1", TWIN)  # read after the change: kept
    assert cache.twin("B-1") == TWIN


def test_losing_the_listener_empties_the_cache_and_voids_reads_in_flight() -> None:
    cache = live_cache()
    cache.put_twin(cache.stamp("B-1"), "B-1", TWIN)
    in_flight = cache.stamp("B-2")
    cache.set_live(False)
    assert cache.twin("B-1") is None
    cache.set_live(True)
    assert cache.twin("B-1") is None  # notifications may have been missed meanwhile
    cache.put_twin(in_flight, "B-2", TWIN)
    assert cache.twin("B-2") is None


def test_the_oldest_entry_goes_first_past_the_bound() -> None:
    cache = live_cache(max_entries=2)
    for battery_id in ("B-1", "B-2", "B-3"):
        cache.put_twin(cache.stamp(battery_id), battery_id, TWIN)
    assert cache.twin("B-1") is None
    assert cache.twin("B-2") == TWIN and cache.twin("B-3") == TWIN


def test_hits_and_misses_are_counted() -> None:
    cache = live_cache()
    cache.twin("B-1")
    cache.put_twin(cache.stamp("B-1"), "B-1", TWIN)
    cache.twin("B-1")
    assert (cache.hits, cache.misses) == (1, 1)


def test_twin_payloads_stay_under_the_limit_and_round_trip() -> None:
    ids = {f"BAT-{i:060d}" for i in range(400)}  # 64 characters each: several payloads
    payloads = twin_payloads(ids)
    assert len(payloads) > 1
    assert all(p.startswith(TWINS_PREFIX) and len(p) <= MAX_PAYLOAD_CHARS for p in payloads)
    parsed = [parse_payload(p) for p in payloads]
    assert set().union(*(c.twins for c in parsed if c is not None)) == ids


def test_payloads_this_version_does_not_know_are_ignored() -> None:
    assert parse_payload("access") == Changes(access=True)
    assert parse_payload("twins:") is None
    assert parse_payload("grants:B-1") is None
