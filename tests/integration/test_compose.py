"""compose.hil.yml passes the static check, and docker/mosquitto runs with the real broker."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml

from hil.services import MosquittoServer, PostgresServer

if TYPE_CHECKING:
    from tests.conftest import MqttTestClient

    MqttFactory = Callable[..., MqttTestClient]

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "compose.hil.yml"
MOSQUITTO_DIR = REPO / "docker" / "mosquitto"
USERS = {"bat-a": "secret-a", "bat-b": "secret-b", "cloud": "secret-cloud", "healthcheck": "hc"}
TIMEOUT_S = 10.0


def _check_compose(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / "scripts" / "check-compose"), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _healthcheck_shell(service: str) -> str:
    """The CMD-SHELL healthcheck of ``service`` in compose.hil.yml, as the shell sees it."""
    test = yaml.safe_load(COMPOSE.read_text())["services"][service]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    return str(test[1]).replace("$$", "$")  # Compose's escape for a literal $


def test_check_compose_passes() -> None:
    result = _check_compose(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "compose.hil.yml: OK" in result.stdout


def test_check_compose_rejects_broken_references(tmp_path: Path) -> None:
    shutil.copy(COMPOSE, tmp_path / "compose.hil.yml")
    shutil.copytree(REPO / "docker", tmp_path / "docker")
    doc = yaml.safe_load(COMPOSE.read_text())
    doc["services"]["cloud"] = {
        "build": {"context": ".", "dockerfile": "docker/cloud.Dockerfile"},
        "depends_on": {"postgres": {"condition": "service_healthy"}, "ghost": {}},
        "networks": ["hil"],
    }
    broken = tmp_path / "compose.hil.yml"
    broken.write_text(yaml.safe_dump(doc, sort_keys=False))
    result = _check_compose(broken)
    assert result.returncode != 0
    assert "docker/cloud.Dockerfile" in result.stderr
    assert "'ghost'" in result.stderr

    (tmp_path / "docker" / "cloud.Dockerfile").write_text("FROM python:3.11-slim\n")
    del doc["services"]["cloud"]["depends_on"]["ghost"]
    broken.write_text(yaml.safe_dump(doc, sort_keys=False))
    result = _check_compose(broken)
    assert result.returncode == 0, result.stdout + result.stderr


def test_docker_mosquitto_config_enforces_acl(
    make_mosquitto_server: Callable[..., MosquittoServer], mqtt_client_factory: MqttFactory
) -> None:
    # The deployment config, run by the real broker: listener moved to a random loopback
    # port, password file generated, ACL and config copied into a temp dir.
    broker = make_mosquitto_server(
        base_config=(MOSQUITTO_DIR / "mosquitto.conf").read_text(),
        acl=(MOSQUITTO_DIR / "acl").read_text(),
        users=USERS,
    )
    assert "allow_anonymous false" in broker.config_path.read_text()

    anonymous = mqtt_client_factory(broker, client_id="anon")
    assert anonymous.connect().is_failure

    cloud = mqtt_client_factory(
        broker, client_id="cloud-1", username="cloud", password="secret-cloud"
    )
    bat_a = mqtt_client_factory(broker, client_id="bat-a", username="bat-a", password="secret-a")
    assert not cloud.connect().is_failure
    assert not bat_a.connect().is_failure
    cloud.subscribe("$share/ingest/b2l/v1/+/telemetry")
    cloud.subscribe("b2l/v1/+/acks")

    # A device publishes to its own telemetry: PUBACK success, the cloud receives it.
    assert not bat_a.publish("b2l/v1/bat-a/telemetry", b"t1").is_failure
    msg = cloud.expect_message(TIMEOUT_S)
    assert (msg.topic, msg.payload) == ("b2l/v1/bat-a/telemetry", b"t1")

    # ... but not as another battery: refused in the PUBACK, never delivered.
    assert bat_a.publish("b2l/v1/bat-b/telemetry", b"forged").is_failure
    assert not bat_a.publish("b2l/v1/bat-a/acks", b"ack1").is_failure
    assert cloud.expect_message(TIMEOUT_S).payload == b"ack1"  # in order: forged never came

    # Subscribing to another battery's commands yields nothing (Mosquitto 2.0 grants the
    # SUBACK and filters on delivery); its own commands still arrive.
    bat_a.subscribe("b2l/v1/bat-b/commands")
    bat_a.subscribe("b2l/v1/bat-a/commands")
    assert not cloud.publish("b2l/v1/bat-b/commands", b"for-b").is_failure
    assert not cloud.publish("b2l/v1/bat-a/commands", b"for-a").is_failure
    msg = bat_a.expect_message(TIMEOUT_S)
    assert (msg.topic, msg.payload) == ("b2l/v1/bat-a/commands", b"for-a")
    bat_a.assert_no_message(0.5)

    # A device cannot command itself either.
    assert bat_a.publish("b2l/v1/bat-a/commands", b"self").is_failure


def test_compose_mosquitto_healthcheck_command(
    make_mosquitto_server: Callable[..., MosquittoServer],
) -> None:
    broker = make_mosquitto_server(
        base_config=(MOSQUITTO_DIR / "mosquitto.conf").read_text(),
        acl=(MOSQUITTO_DIR / "acl").read_text(),
        users=USERS,
    )
    if shutil.which("mosquitto_sub") is None:
        pytest.fail("mosquitto_sub not found: apt-get install mosquitto-clients", pytrace=False)
    command = _healthcheck_shell("mosquitto")
    assert "-p 1883" in command
    command = command.replace("-p 1883", f"-p {broker.port}")
    for password, healthy in (("hc", True), ("wrong", False)):
        env = {**os.environ, "B2L_MQTT_HEALTHCHECK_PASSWORD": password}
        result = subprocess.run(
            ["sh", "-c", command], env=env, capture_output=True, text=True, timeout=30
        )
        assert (result.returncode == 0) is healthy, result.stderr


def test_compose_postgres_healthcheck_command(postgres_server: PostgresServer) -> None:
    command = _healthcheck_shell("postgres").replace(
        "-h 127.0.0.1", f"-h 127.0.0.1 -p {postgres_server.port}"
    )
    env = {
        "PATH": f"{postgres_server.bindir}:{os.environ['PATH']}",
        "POSTGRES_USER": postgres_server.user,
        "POSTGRES_DB": postgres_server.database,
    }
    result = subprocess.run(
        ["sh", "-c", command], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
