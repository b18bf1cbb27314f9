"""Garbage-collector settings of the long-running cloud processes (``b2l cloud serve|mqtt``).

A server allocates its modules, schemas and application once, then streams short-lived objects
(requests, parsed batches, rows). CPython's cyclic collector, left at its defaults, runs a young
collection every 700 allocations and now and then walks every object ever allocated: at ingestion
rates that is a measurable share of the CPU. ``tune_for_server`` collects once, freezes what
start-up allocated (``gc.freeze``: the collector never walks it again) and makes young collections
rarer. Call it once per process after start-up, never in a library or a test process (frozen
objects are never collected).
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 200_000
"""Allocations (net) between two young-generation collections (CPython's default: 700). An MQTT
group of 4,000 messages holds some 100,000 objects while it is stored: at 50,000 they were
walked and promoted over and over (1,000-battery drain: 3.4k-4.1k msg/s at 50,000, 4.0k-4.9k at
200,000, alternating in one sitting)."""


def tune_for_server() -> None:
    """Freeze the start-up heap and make young collections rarer (see the module docstring)."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
