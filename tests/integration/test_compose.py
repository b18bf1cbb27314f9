"""compose.hil.yml passes the static check, and its services run as local processes.

docker/mosquitto runs with the real broker; the postgres, mosquitto and cloud healthchecks run
against real servers; ``provision`` and ``cloud`` run their compose commands on a real
PostgreSQL; ``sim-serial`` and ``edge-serial`` run theirs (docker/edge-serial.toml) and uplink
through the bench's broker configuration with the bench's credentials. Only what a container
network provides is rewritten: service names and fixed ports become 127.0.0.1 and free ports.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from compose_support import argv, compose_file, environment

from hil.services import MosquittoServer, PostgresServer, find_free_port, port_accepts

if TYPE_CHECKING:
    from tests.conftest import MqttTestClient

    MqttFactory = Callable[..., MqttTestClient]

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "compose.hil.yml"
MOSQUITTO_DIR = REPO / "docker" / "mosquitto"
USERS = {"bat-a": "secret-a", "bat-b": "secret-b", "cloud": "secret-cloud", "healthcheck": "hc"}
TIMEOUT_S = 10.0
STARTUP_TIMEOUT_S = 30.0


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
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    doc = yaml.safe_load(COMPOSE.read_text())
    doc["services"]["ghost"] = {
        "build": {"context": ".", "dockerfile": "docker/ghost.Dockerfile"},
        "depends_on": {"postgres": {"condition": "service_healthy"}, "phantom": {}},
        "networks": ["hil"],
    }
    broken = tmp_path / "compose.hil.yml"
    broken.write_text(yaml.safe_dump(doc, sort_keys=False))
    result = _check_compose(broken)
    assert result.returncode != 0
    assert "docker/ghost.Dockerfile" in result.stderr
    assert "'phantom'" in result.stderr

    (tmp_path / "docker" / "ghost.Dockerfile").write_text("FROM python:3.11-slim\n")
    del doc["services"]["ghost"]["depends_on"]["phantom"]
    broken.write_text(yaml.safe_dump(doc, sort_keys=False))
    result = _check_compose(broken)
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_compose_rejects_unknown_hosts_and_restarting_one_shots(tmp_path: Path) -> None:
    shutil.copytree(REPO / "docker", tmp_path / "docker")
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    doc = yaml.safe_load(COMPOSE.read_text())
    cloud = doc["services"]["cloud"]
    cloud["environment"]["B2L_MQTT_URL"] = "mqtt://cloud:x@mosquito:1883"  # a typo
    cloud["environment"]["B2L_EXTERNAL"] = "https://ca.example.org/x"  # dotted: not checked
    doc["services"]["provision"]["restart"] = "on-failure"
    doc["services"]["postgres"]["networks"] = ["elsewhere"]
    doc["networks"]["elsewhere"] = {"driver": "bridge"}
    broken = tmp_path / "compose.hil.yml"
    broken.write_text(yaml.safe_dump(doc, sort_keys=False))
    result = _check_compose(broken)
    assert result.returncode != 0
    problems = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert sorted(problems) == sorted(
        [
            "error: compose.hil.yml: services.cloud.depends_on.provision: a one-shot service "
            "waited for must not restart (restart: on-failure)",
            "error: compose.hil.yml: services.provision.environment.B2L_DATABASE_URL: service "
            "'postgres' shares no network with 'provision'",
            "error: compose.hil.yml: services.cloud.environment.B2L_DATABASE_URL: service "
            "'postgres' shares no network with 'cloud'",
            "error: compose.hil.yml: services.cloud.environment.B2L_MQTT_URL: URL host "
            "'mosquito' is not a service",
        ]
    )


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


# ------------------------------------------------------------------ the bench as local processes


def _b2l(command: list[str]) -> list[str]:
    """A container's ``b2l ...`` command, run with this interpreter."""
    assert command[0] == "b2l", command
    return [sys.executable, "-m", "b2l.cli", *command[1:]]


def _swap(command: list[str], replacements: Mapping[str, str]) -> list[str]:
    """``command`` with whole arguments replaced (container addresses -> loopback)."""
    for old in replacements:
        assert old in command, (old, command)
    return [replacements.get(word, word) for word in command]


def _env(service_env: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without B2L_* settings, plus the service's."""
    base = {k: v for k, v in os.environ.items() if not k.upper().startswith("B2L_")}
    return {**base, **service_env}


@contextmanager
def _process(
    command: list[str], env: Mapping[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` (stdout and stderr to ``log``); SIGTERM, then SIGKILL, at the end."""
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, cwd=REPO, env=_env(env), stdout=out, stderr=subprocess.STDOUT
        )
        try:
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _healthcheck(port: int) -> subprocess.CompletedProcess[str]:
    """The cloud service's healthcheck (the image's), against ``port`` instead of 8000."""
    test = compose_file()["services"]["cloud"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"] and ":8000/" in test[3]
    code = test[3].replace(":8000/", f":{port}/")
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )


def _wait(
    condition: Callable[[], Any], what: str, process: subprocess.Popen[bytes], log: Path
) -> Any:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        value = condition()
        if value:
            return value
        assert process.poll() is None, f"{what}: the process ended:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{log.read_text()}"
        time.sleep(0.2)


def test_cloud_is_healthy_once_provision_has_migrated(pg_database: Any, tmp_path: Path) -> None:
    services = compose_file()["services"]
    port = find_free_port()
    env = {"B2L_DATABASE_URL": pg_database.url}
    # no broker in this test: an empty B2L_MQTT_URL serves the API only
    cloud_env = {**environment(services["cloud"]), **env, "B2L_MQTT_URL": ""}
    cloud_command = _swap(argv(services["cloud"]), {"0.0.0.0": "127.0.0.1", "8000": str(port)})
    assert "--no-migrate" in cloud_command
    cloud_env["B2L_MQTT_DEAD_LETTER_DIR"] = str(tmp_path / "dead-letters")
    log = tmp_path / "cloud.log"
    with _process(_b2l(cloud_command), cloud_env, log) as cloud:
        # up but the database is empty: /readyz says 503 and the healthcheck fails
        _wait(lambda: port_accepts("127.0.0.1", port), "the cloud to listen", cloud, log)
        unhealthy = _healthcheck(port)
        assert unhealthy.returncode == 1 and "503" in unhealthy.stderr, unhealthy.stderr

        started = time.monotonic()
        provision = subprocess.run(
            _b2l(argv(services["provision"])),
            cwd=REPO,
            env=_env({**environment(services["provision"]), **env}),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        provision_s = time.monotonic() - started
        assert provision.returncode == 0, provision.stderr
        assert "battery bench-serial-01: registered" in provision.stdout
        assert "battery bench-can-01: registered" in provision.stdout
        healthy = _wait(lambda: _healthcheck(port).returncode == 0, "healthy", cloud, log)
        assert healthy and provision_s < 60

        # the bench operator logs in with the compose default and sees both batteries
        password = environment(services["provision"])["B2L_OPERATOR_PASSWORD"]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=TIMEOUT_S) as api:
            token = (
                api.post(
                    "/api/v1/auth/token", data={"username": "bench-operator", "password": password}
                )
                .raise_for_status()
                .json()["access_token"]
            )
            batteries = (
                api.get("/api/v1/batteries", headers={"Authorization": f"Bearer {token}"})
                .raise_for_status()
                .json()
            )
        assert {b["battery_id"] for b in batteries} == {"bench-serial-01", "bench-can-01"}

        # provision again (a restarted bench): still fine
        again = subprocess.run(
            _b2l(argv(services["provision"])),
            cwd=REPO,
            env=_env({**environment(services["provision"]), **env}),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert again.returncode == 0, again.stderr
    assert _healthcheck(port).returncode == 1  # the cloud stopped: unhealthy


def test_serial_pair_uplinks_through_the_bench_broker(
    make_mosquitto_server: Callable[..., MosquittoServer],
    mqtt_client_factory: MqttFactory,
    tmp_path: Path,
) -> None:
    services = compose_file()["services"]
    edge_env = environment(services["edge-serial"])
    cloud_password = urlsplit(environment(services["cloud"])["B2L_MQTT_URL"]).password
    assert cloud_password
    broker = make_mosquitto_server(
        base_config=(MOSQUITTO_DIR / "mosquitto.conf").read_text(),
        acl=(MOSQUITTO_DIR / "acl").read_text(),
        users={
            "cloud": cloud_password,
            "healthcheck": "hc",
            "bench-serial-01": edge_env["B2L_EDGE_UPLINK__PASSWORD"],
        },
    )
    cloud = mqtt_client_factory(
        broker, client_id="cloud-t", username="cloud", password=cloud_password
    )
    assert not cloud.connect().is_failure
    # every uplink topic, as the cloud does: a publish nobody subscribed to is sent again by the
    # edge (PUBACK "no matching subscribers"), and holds back the records behind it
    for kind in ("telemetry", "events", "eis", "acks"):
        cloud.subscribe(f"b2l/v1/+/{kind}")

    port = find_free_port()
    scenario = str(REPO / "examples" / "scenario-pack.yaml")  # what compose mounts
    sim_command = _swap(
        argv(services["sim-serial"]),
        {"tcp:0.0.0.0:5000": f"tcp:127.0.0.1:{port}", "/etc/b2l/scenario.yaml": scenario},
    )
    edge_command = _swap(
        argv(services["edge-serial"]),
        {"/etc/b2l/edge.toml": str(REPO / "docker" / "edge-serial.toml")},
    )
    edge_env |= {
        "B2L_EDGE_LINK__URL": f"socket://127.0.0.1:{port}",  # socket://sim-serial:5000
        "B2L_EDGE_UPLINK__HOST": broker.host,  # mosquitto
        "B2L_EDGE_UPLINK__PORT": str(broker.port),
        "B2L_EDGE_OUTBOX__PATH": str(tmp_path / "outbox.sqlite"),  # the edge-serial-data volume
    }
    sim_log, edge_log = tmp_path / "sim.log", tmp_path / "edge.log"
    with (
        _process(_b2l(sim_command), {}, sim_log) as sim,
        _process(_b2l(edge_command), edge_env, edge_log) as edge,
    ):
        message = cloud.expect_message(STARTUP_TIMEOUT_S)
        while message.topic.endswith("/events"):  # the edge's start events come first
            message = cloud.expect_message(STARTUP_TIMEOUT_S)
        assert sim.poll() is None, sim_log.read_text()
        assert edge.poll() is None, edge_log.read_text()
    assert message.topic == "b2l/v1/bench-serial-01/telemetry"
    batch = json.loads(message.payload)
    assert batch["battery_id"] == "bench-serial-01" and batch["records"]
