"""``b2l`` commands as child processes: their command line, and the environment of a throwaway
cloud process (the demo, the end-to-end tests and the benchmarks start them this way)."""

from __future__ import annotations

import os
import sys

B2L_COMMAND = (sys.executable, "-m", "b2l.cli")
"""``b2l`` run by this interpreter (so a child sees the same installation)."""


def b2l_argv(*args: str) -> list[str]:
    """The command line of ``b2l ARGS`` run by this interpreter."""
    return [*B2L_COMMAND, *args]


def throwaway_cloud_env(database_url: str, **extra: str) -> dict[str, str]:
    """The environment of a cloud process on a throwaway database: this process's environment
    without its ``B2L_*`` settings, the database, warning-level logs without access lines, no
    ingestion rate limit and cheap argon2 hashing (for throwaway accounts only), then ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("B2L_")}
    env.update(
        B2L_DATABASE_URL=database_url,
        B2L_LOG_LEVEL="WARNING",
        B2L_ACCESS_LOG="false",
        B2L_INGEST_RATE_ROWS_PER_S="0",
        B2L_ARGON2_TIME_COST="1",
        B2L_ARGON2_MEMORY_KIB="1024",
        B2L_ARGON2_PARALLELISM="1",
    )
    env.update(extra)
    return env
