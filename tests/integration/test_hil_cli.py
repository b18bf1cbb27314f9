"""``b2l hil services`` starts real services a bench can use, and cleans up after itself."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import psycopg
import pytest

pytestmark = pytest.mark.integration


def test_services_command_serves_postgres_and_mosquitto_then_stops() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "b2l.cli", "hil", "services", "--duration", "20", "--json"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        urls = json.loads(proc.stdout.readline())
        dsn = urls["database_url"].replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            assert conn.execute("select 41 + 1").fetchone() == (42,)
        with socket.create_connection((urls["mqtt_host"], urls["mqtt_port"]), timeout=5):
            pass
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == 0
    with pytest.raises(OSError):
        socket.create_connection((urls["mqtt_host"], urls["mqtt_port"]), timeout=2).close()
