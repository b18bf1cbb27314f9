"""Static checks of the container files: docker/*.Dockerfile, compose.hil.yml, docker/edge-*.toml.

No Docker engine: the files are read as data, every container command is parsed by the real
``b2l`` parser, and the edge configurations are loaded by the edge's own loader. What the bench
wires together (hosts, ports, multicast group, battery ids, credentials) must agree end to end.
"""

from __future__ import annotations

import inspect
import ipaddress
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from can.interfaces.udp_multicast import UdpMulticastBus
from compose_support import (
    DOCKER,
    ROOT,
    argv,
    compose_file,
    dockerfile_of,
    environment,
    exec_form,
    instructions,
)

from b2l.cli import build_parser
from cloud.settings import DEV_SECRET, CloudSettings
from edge_runtime.config import (
    CanLinkSettings,
    MqttUplinkSettings,
    SerialLinkSettings,
    load_settings,
)
from twin.errors import ConfigError

pytestmark = pytest.mark.unit

DOCKERFILES = {name: DOCKER / f"{name}.Dockerfile" for name in ("cloud", "edge", "sim")}
EDGE_CONFIG_IN_IMAGE = "/etc/b2l/edge.toml"
BENCH_SERVICES = {"postgres", "mosquitto", "provision", "cloud", "sim-serial", "edge-serial"}
BENCH_SERVICES |= {"sim-can", "edge-can"}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.upper().startswith("B2L_"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    services: dict[str, Any] = compose_file()["services"]
    return services


def _stages(dockerfile: Path) -> list[list[tuple[str, str]]]:
    """Instructions per stage (the lines before the first FROM are stage 0)."""
    stages: list[list[tuple[str, str]]] = [[]]
    for word, rest in instructions(dockerfile):
        if word == "FROM":
            stages.append([])
        stages[-1].append((word, rest))
    return stages


def _parse(command: list[str]) -> Any:
    """``command`` (``b2l ...``) parsed by the real CLI; a bad command fails the test."""
    assert command[0] == "b2l", command
    try:
        return build_parser().parse_args(command[1:])
    except SystemExit as exc:  # argparse's error exit
        raise AssertionError(f"not a valid b2l command: {command}") from exc


def _option(command: list[str], name: str) -> list[str]:
    """Every value of ``--name VALUE`` in a command."""
    return [command[i + 1] for i, word in enumerate(command[:-1]) if word == name]


# ----------------------------------------------------------------------------- Dockerfiles


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_each_image_runs_b2l_as_a_user_from_python_311_slim(name: str) -> None:
    dockerfile = DOCKERFILES[name]
    steps = instructions(dockerfile)
    args = dict(rest.split("=", 1) for word, rest in steps if word == "ARG" and "=" in rest)
    assert args["PYTHON_IMAGE"] == "python:3.11-slim"  # published for amd64 and arm64
    froms = [rest.split()[0] for word, rest in steps if word == "FROM"]
    assert froms == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]
    users = [rest for word, rest in steps if word == "USER"]
    assert users == ["b2l"]  # the last instructions run as b2l, not root
    (useradd,) = [rest for word, rest in steps if word == "RUN" and "useradd" in rest]
    assert "useradd --system --uid ${B2L_UID} --gid b2l" in useradd and " b2l" in useradd
    assert int(args["B2L_UID"]) >= 1000
    for word, rest in steps:
        if word == "COPY" and not rest.startswith("--from"):
            for source in rest.split()[:-1]:
                assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source}"
        assert "curl" not in rest and "wget" not in rest, "no such tools in python:3.11-slim"
    entrypoint = exec_form(dockerfile, "ENTRYPOINT")
    assert entrypoint is not None
    _parse([*entrypoint, *(exec_form(dockerfile, "CMD") or [])])


def test_the_images_share_one_build_stage() -> None:
    build_stages = {name: _stages(path)[1] for name, path in DOCKERFILES.items()}
    assert build_stages["cloud"][0] == ("FROM", "${PYTHON_IMAGE} AS build")
    assert build_stages["cloud"] == build_stages["edge"] == build_stages["sim"]
    wheel = [rest for word, rest in build_stages["cloud"] if word == "RUN"]
    assert wheel == ['pip wheel --wheel-dir /wheels . "python-can[multicast]"']
    # the runtime stage installs only from those wheels; the CAN images with msgpack for
    # python-can's udp_multicast interface
    for name, path in DOCKERFILES.items():
        (install,) = [r for w, r in _stages(path)[2] if w == "RUN" and "pip install" in r]
        assert "--no-index --find-links=/wheels b2l" in install
        assert ('"python-can[multicast]"' in install) is (name != "cloud"), name


def test_the_cloud_image_serves_on_8000_with_a_readyz_healthcheck() -> None:
    dockerfile = DOCKERFILES["cloud"]
    steps = instructions(dockerfile)
    entrypoint = exec_form(dockerfile, "ENTRYPOINT")
    assert entrypoint == ["b2l", "cloud", "serve", "--host", "0.0.0.0", "--port", "8000"]
    args = _parse(entrypoint)
    assert (args.host, args.port) == ("0.0.0.0", 8000)
    assert ("EXPOSE", "8000") in steps
    assert ("ENV", "PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 "
            "B2L_MODE=production B2L_LOG_JSON=true") in steps  # fmt: skip
    (health,) = [rest for word, rest in steps if word == "HEALTHCHECK"]
    command = json.loads(health[health.index("CMD ") + 4 :])
    assert command[:2] == ["python", "-c"]
    assert "urllib" in command[2] and "http://127.0.0.1:8000/readyz" in command[2]
    compile(command[2], "<healthcheck>", "exec")  # valid Python


def test_the_sim_image_defaults_to_a_real_time_pack_on_tcp_5000() -> None:
    dockerfile = DOCKERFILES["sim"]
    assert exec_form(dockerfile, "ENTRYPOINT") == ["b2l", "sim", "pack"]
    args = _parse(["b2l", "sim", "pack", *(exec_form(dockerfile, "CMD") or [])])
    assert (args.serial, args.realtime, args.duration) == ("tcp:0.0.0.0:5000", 1.0, None)
    assert ("EXPOSE", "5000") in instructions(dockerfile)


# ----------------------------------------------------------------------------- compose.hil.yml


def test_the_bench_has_every_service_on_its_network(services: dict[str, Any]) -> None:
    assert set(services) == BENCH_SERVICES
    for name, service in services.items():
        assert service["networks"] == ["hil"], name
        if "build" in service:
            assert dockerfile_of(service).is_file(), name
            assert dockerfile_of(service).parent == DOCKER
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
    published = {n for n, s in services.items() if s.get("ports")}
    assert published == {"postgres", "mosquitto", "cloud"}  # nothing else leaves the bridge


@pytest.mark.parametrize("name", sorted(BENCH_SERVICES - {"postgres", "mosquitto"}))
def test_every_container_command_is_a_b2l_command(services: dict[str, Any], name: str) -> None:
    command = argv(services[name])
    args = _parse(command)
    assert callable(args.handler)
    for source, target in (
        v.split(":")[:2] for v in services[name].get("volumes", []) if v.startswith("./")
    ):
        assert (ROOT / source).is_file(), source
        if target.startswith("/etc/"):
            assert target in command or target == EDGE_CONFIG_IN_IMAGE, (name, target)


def test_the_cloud_environment_is_cloud_settings(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = environment(services["cloud"])
    fields = {f"B2L_{name.upper()}" for name in CloudSettings.model_fields}
    assert set(env) <= fields, set(env) - fields  # CloudSettings ignores unknown names
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = CloudSettings(_env_file=None)  # type: ignore[call-arg]
    database = urlsplit(settings.database_url)
    assert (database.scheme, database.hostname, database.port) == (
        "postgresql+psycopg",
        "postgres",
        5432,
    )
    postgres = environment(services["postgres"])
    assert (database.username, database.password, database.path) == (
        postgres["POSTGRES_USER"],
        postgres["POSTGRES_PASSWORD"],
        "/" + postgres["POSTGRES_DB"],
    )
    assert settings.mqtt_url is not None
    broker = urlsplit(settings.mqtt_url)
    assert (broker.scheme, broker.username, broker.hostname, broker.port) == (
        "mqtt",
        "cloud",  # the ACL's cloud user
        "mosquitto",
        1883,
    )
    assert settings.mode == "development"
    # the JWT default is the development secret: production mode refuses it
    assert settings.jwt_secret.get_secret_value() == DEV_SECRET
    monkeypatch.setenv("B2L_MODE", "production")
    with pytest.raises(ConfigError, match="B2L_JWT_SECRET"):
        CloudSettings(_env_file=None).check_secrets()  # type: ignore[call-arg]
    assert environment(services["provision"])["B2L_DATABASE_URL"] == env["B2L_DATABASE_URL"]
    depends = services["cloud"]["depends_on"]
    assert depends["provision"]["condition"] == "service_completed_successfully"
    assert services["provision"]["restart"] == "no"
    assert "--no-migrate" in argv(services["cloud"])  # provision migrated, once


def test_the_cloud_healthcheck_is_the_images(services: dict[str, Any]) -> None:
    (health,) = [r for w, r in instructions(DOCKERFILES["cloud"]) if w == "HEALTHCHECK"]
    image_command = json.loads(health[health.index("CMD ") + 4 :])
    assert services["cloud"]["healthcheck"]["test"] == ["CMD", *image_command]
    for edge in ("edge-serial", "edge-can"):
        assert services[edge]["depends_on"]["cloud"]["condition"] == "service_healthy"


# ----------------------------------------------------------------------------- edges and sims


def _edge(services: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The edge's settings as its container would load them (file + compose environment)."""
    service = services[name]
    assert argv(service) == ["b2l", "edge", "run", "--config", EDGE_CONFIG_IN_IMAGE]
    (config,) = [
        v.split(":")[0] for v in service["volumes"] if v.split(":")[1] == EDGE_CONFIG_IN_IMAGE
    ]
    assert config == f"./docker/{name}.toml" and service["volumes"][0].endswith(":ro")
    for key, value in environment(service).items():
        monkeypatch.setenv(key, value)
    return load_settings(ROOT / config, check_files=False)


def _provisioned(services: dict[str, Any]) -> set[str]:
    return {spec.split(":")[0] for spec in _option(argv(services["provision"]), "--battery")}


def _check_uplink(settings: Any, services: dict[str, Any], name: str, password_var: str) -> None:
    uplink = settings.uplink
    assert isinstance(uplink, MqttUplinkSettings)
    assert (uplink.host, uplink.port) == ("mosquitto", 1883)  # the broker's listener
    assert uplink.username == settings.battery_id  # the ACL's %u: a device's own topics
    # the compose variable reaches the settings (a misspelt B2L_EDGE_* would not)
    password = environment(services[name])["B2L_EDGE_UPLINK__PASSWORD"]
    assert uplink.password_value() == password
    raw = compose_file({password_var: "from-the-environment"})["services"][name]
    assert environment(raw)["B2L_EDGE_UPLINK__PASSWORD"] == "from-the-environment"
    assert password_var in (ROOT / "docs" / "hil-bench.md").read_text()  # documented
    assert settings.battery_id in _provisioned(services)
    assert settings.outbox.path.parent == Path("/var/lib/b2l-edge")  # the image's volume


def test_the_serial_edge_reads_the_serial_simulator(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _edge(services, "edge-serial", monkeypatch)
    link = settings.link
    assert isinstance(link, SerialLinkSettings)
    url = urlsplit(link.url)
    assert (url.scheme, url.hostname) == ("socket", "sim-serial")
    sim = argv(services["sim-serial"])
    assert _option(sim, "--serial") == [f"tcp:0.0.0.0:{url.port}"]
    assert str(url.port) in services["sim-serial"]["expose"]
    _check_uplink(settings, services, "edge-serial", "B2L_BENCH_SERIAL_MQTT_PASSWORD")


def test_the_can_edge_and_simulator_share_a_private_multicast_bus(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _edge(services, "edge-can", monkeypatch)
    link = settings.link
    assert isinstance(link, CanLinkSettings)
    assert link.interface == "udp_multicast"
    group = ipaddress.ip_address(link.channel)
    # IPv4 (a compose bridge has no IPv6 unless enabled), administratively scoped, one hop:
    # the frames never leave the bench's bridge network
    assert group in ipaddress.ip_network("239.0.0.0/8")
    assert link.channel != UdpMulticastBus.DEFAULT_GROUP_IPv4  # not a default others use
    assert link.options["hop_limit"] == 1
    accepted = set(inspect.signature(UdpMulticastBus.__init__).parameters)
    assert set(link.options) <= accepted, set(link.options) - accepted
    sim = argv(services["sim-can"])
    assert _option(sim, "--can") == [f"udp_multicast:{link.channel}"]
    sim_options = dict(o.split("=", 1) for o in _option(sim, "--can-option"))
    assert sim_options == {key: str(value) for key, value in link.options.items()}
    _check_uplink(settings, services, "edge-can", "B2L_BENCH_CAN_MQTT_PASSWORD")


def test_both_simulators_run_the_mounted_scenario_in_real_time(services: dict[str, Any]) -> None:
    for name in ("sim-serial", "sim-can"):
        command = argv(services[name])
        args = _parse(command)
        assert args.realtime == 1.0 and args.duration == 7 * 86_400.0
        assert str(args.scenario) == "/etc/b2l/scenario.yaml"
        assert services[name]["volumes"] == [
            "./examples/scenario-pack.yaml:/etc/b2l/scenario.yaml:ro"
        ]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("bench-can-01", ("bench-can-01", "nmc_lgm50", 16)),
        ("b-2:lfp_a123", ("b-2", "lfp_a123", 16)),
        ("b-3:lfp_a123:8", ("b-3", "lfp_a123", 8)),
    ],
)
def test_provision_battery_specs(spec: str, expected: tuple[str, str, int]) -> None:
    args = build_parser().parse_args(["hil", "provision", "--battery", spec])
    (battery,) = args.battery
    assert (battery.battery_id, battery.chemistry, battery.cells_in_series) == expected


@pytest.mark.parametrize("spec", [":nmc_lgm50", "b:nmc_lgm50:x", "b:nmc_lgm50:0"])
def test_bad_provision_battery_specs_are_usage_errors(spec: str) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["hil", "provision", "--battery", spec])
    assert info.value.code == 2
