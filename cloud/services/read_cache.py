"""Per-process caches for the hot read path: access facts and twin documents.

A twin read needs the caller's access facts (the battery's parties, the caller's grants) and the
twin's JSON. Both change rarely compared with how often they are read, so a server process
keeps them, and drops them when told of a change (``cloud.db.changes``: at once for the
process's own writes, within milliseconds through PostgreSQL for the others').

It trusts itself only while ``live``: while the change listener holds its connection. Every
change of ``live`` empties it, since notifications may have been missed in between.

A value read from the database is stored only if nothing was announced for it since the read
began (``stamp`` before the read, ``put_*`` after it): a change committed while a read was in
flight never leaves the older value behind. Access is decided on every request from the cached
facts (grant windows against the clock), and every restricted read is still audited.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

from cloud.db.changes import Changes
from cloud.services.accounts import AccessFacts

DEFAULT_MAX_ENTRIES = 4_096
_MAX_GENERATIONS_PER_ENTRY = 16
K = TypeVar("K")
V = TypeVar("V")


class _Bounded(Generic[K, V]):
    """An insertion-ordered map of at most ``max_entries``: the oldest entry goes first."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self.entries: OrderedDict[K, V] = OrderedDict()

    def put(self, key: K, value: V) -> None:
        self.entries[key] = value
        if len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)


@dataclass(frozen=True)
class Stamp:
    """The cache's generations when a database read began (``ReadCache.stamp``)."""

    epoch: int
    access: int
    twin: int


class ReadCache:
    """Access facts by (battery, user name or None) and twin ``(version, JSON)`` by battery."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self._lock = threading.Lock()
        self._access: _Bounded[tuple[str, str | None], AccessFacts] = _Bounded(max_entries)
        self._twins: _Bounded[str, tuple[int, bytes]] = _Bounded(max_entries)
        self._live = False
        self._epoch = 0  # every emptying
        self._access_generation = 0  # every access change
        self._twin_generations: dict[str, int] = {}  # every change of one twin
        self.hits = 0
        self.misses = 0

    @property
    def live(self) -> bool:
        """Whether changes are being heard: only then is anything served from the cache."""
        return self._live

    def set_live(self, live: bool) -> None:
        """The change listener's state; any transition empties the cache."""
        with self._lock:
            self._live = live
            self._empty()

    def changed(self, changes: Changes) -> None:
        """Drop what ``changes`` announces."""
        with self._lock:
            if changes.access:
                self._access_generation += 1
                self._access.entries.clear()
            for battery_id in changes.twins:
                self._twin_generations[battery_id] = self._twin_generations.get(battery_id, 0) + 1
                self._twins.entries.pop(battery_id, None)
            if len(self._twin_generations) > _MAX_GENERATIONS_PER_ENTRY * self._twins.max_entries:
                self._empty()  # bounds the bookkeeping of fleets far larger than the cache

    def _empty(self) -> None:
        self._epoch += 1
        self._access.entries.clear()
        self._twins.entries.clear()
        self._twin_generations.clear()

    def stamp(self, battery_id: str) -> Stamp:
        """Take before reading ``battery_id``'s facts or twin from the database."""
        with self._lock:
            return Stamp(
                self._epoch, self._access_generation, self._twin_generations.get(battery_id, 0)
            )

    def access_facts(self, battery_id: str, user_name: str | None) -> AccessFacts | None:
        """The cached facts, or None (not cached, or not live)."""
        facts = self._access.entries.get((battery_id, user_name)) if self._live else None
        self._count(facts is not None)
        return facts

    def twin(self, battery_id: str) -> tuple[int, bytes] | None:
        """The cached ``(version, JSON)`` of a twin, or None."""
        twin = self._twins.entries.get(battery_id) if self._live else None
        self._count(twin is not None)
        return twin

    def put_access_facts(
        self, stamp: Stamp, battery_id: str, user_name: str | None, facts: AccessFacts
    ) -> None:
        """Keep facts read since ``stamp``, unless access changed meanwhile."""
        with self._lock:
            if self._live and (stamp.epoch, stamp.access) == (self._epoch, self._access_generation):
                self._access.put((battery_id, user_name), facts)

    def put_twin(self, stamp: Stamp, battery_id: str, twin: tuple[int, bytes]) -> None:
        """Keep a twin read since ``stamp``, unless it changed meanwhile."""
        with self._lock:
            current = (self._epoch, self._twin_generations.get(battery_id, 0))
            if self._live and (stamp.epoch, stamp.twin) == current:
                self._twins.put(battery_id, twin)

    def _count(self, hit: bool) -> None:
        if hit:
            self.hits += 1
        else:
            self.misses += 1
