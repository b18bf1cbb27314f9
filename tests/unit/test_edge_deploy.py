"""Static checks of the edge's deployment files (no Docker engine or systemd needed)."""

from __future__ import annotations

import configparser
import json
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "edge.Dockerfile"
UNIT = ROOT / "docker" / "b2l-edge.service"
RUN_ARGS = ["b2l", "edge", "run", "--config", "/etc/b2l/edge.toml"]


def instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_the_dockerfile_runs_the_edge_as_a_user_from_python_311_slim() -> None:
    steps = instructions()
    args = {
        rest.split("=")[0]: rest.split("=", 1)[1]
        for word, rest in steps
        if word == "ARG" and "=" in rest
    }
    assert args["PYTHON_IMAGE"] == "python:3.11-slim"  # published for amd64 and arm64
    froms = [rest.split()[0] for word, rest in steps if word == "FROM"]
    assert froms and all(f == "${PYTHON_IMAGE}" for f in froms)
    users = [rest for word, rest in steps if word == "USER"]
    assert users[-1] not in ("root", "0")
    (entrypoint,) = [rest for word, rest in steps if word == "ENTRYPOINT"]
    assert json.loads(entrypoint) == RUN_ARGS
    for word, rest in steps:
        if word == "COPY" and not rest.startswith("--from"):
            for source in rest.split()[:-1]:
                assert (ROOT / source).exists(), source
    assert any(word == "HEALTHCHECK" and '"edge", "status"' in rest for word, rest in steps)


def test_the_unit_restarts_on_failure_and_is_hardened() -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    service = parser["Service"]
    assert service["ExecStart"].split()[1:] == RUN_ARGS[1:]
    assert service["Restart"] == "on-failure"
    assert service["User"] == "b2l"
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "ProtectKernelModules"):
        assert service[key] == "yes", key
    assert service["ProtectSystem"] == "strict"
    assert service["DevicePolicy"] == "closed"
    assert "AF_CAN" in service["RestrictAddressFamilies"]
    # the default outbox path is in the state directory systemd makes writable
    example = tomllib.loads((ROOT / "examples" / "edge.toml").read_text())
    assert example["outbox"]["path"].startswith(f"/var/lib/{service['StateDirectory']}/")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    unit = tmp_path / "b2l-edge.service"
    unit.write_text(UNIT.read_text().replace("/opt/b2l/bin/b2l", "/bin/true"))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "b2l-edge.service" not in result.stderr, result.stderr
