"""The server processes' GC settings (``cloud.gc_tuning``), checked in fresh interpreters: frozen
objects are never collected, so this test process must not call them itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cloud.db.migrate import upgrade
from cloud.gc_tuning import YOUNG_THRESHOLD

pytestmark = pytest.mark.unit

_PROBE = """
import gc, json, sys
from cloud.gc_tuning import tune_for_server
before = gc.get_threshold()
tune_for_server()
print(json.dumps({"before": before, "after": gc.get_threshold(), "frozen": gc.get_freeze_count()}))
"""


def _run(code: str, env: dict[str, str] | None = None) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_tune_for_server_freezes_the_start_up_heap_and_spaces_young_collections() -> None:
    result = _run(_PROBE)
    before, after = result["before"], result["after"]
    assert isinstance(before, list) and isinstance(after, list)
    assert after[0] == YOUNG_THRESHOLD > before[0]
    assert after[1:] == before[1:]  # the older generations keep their settings
    assert isinstance(result["frozen"], int) and result["frozen"] > 1000


def test_a_serve_worker_builds_the_app_and_tunes_its_process(tmp_path: Path) -> None:
    """``b2l cloud serve --workers N`` points uvicorn at ``b2l.cloud_cmd:worker_app``."""
    url = f"sqlite:///{tmp_path / 'cloud.db'}"
    upgrade(url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("B2L_")}
    env["B2L_DATABASE_URL"] = url
    code = (
        "import gc, json\n"
        "from b2l.cloud_cmd import worker_app\n"
        "app = worker_app()\n"
        "print(json.dumps({'title': app.title, 'young': gc.get_threshold()[0], "
        "'frozen': gc.get_freeze_count()}))\n"
    )
    result = _run(code, env)
    assert result["title"] == "b2l cloud"
    assert result["young"] == YOUNG_THRESHOLD
    assert isinstance(result["frozen"], int) and result["frozen"] > 1000
