#!/usr/bin/env python3
"""Static structural check of a Compose file (default: compose.hil.yml) without Docker.

Checks what ``docker compose config`` would reject plus what it does not look at: unknown
keys, every service has ``image`` or ``build``, the Dockerfile of each build exists, bind
mount sources / env files / secret and config files exist in the repo, ``depends_on`` targets
exist (and have a healthcheck for ``service_healthy``), named volumes and networks are
declared, required services carry healthchecks, ``${VAR:-default}`` interpolation is well
formed, ports are published on 127.0.0.1 only, a one-shot service that others wait for
(``service_completed_successfully``) is not restarted, and a URL in a service's environment whose
host is a bare name (``postgresql://...@postgres:5432/...``) names a service on a shared network.
Relative paths resolve against the Compose file's directory. Paths that contain a variable
(``${B2L_MQTT_PASSWORD_FILE:-...}``) are deployment-provided and only reported. Exit 0 when
valid, 1 with one line per problem.

Usage: check_compose.py [COMPOSE_FILE] [--require-healthcheck SERVICE ...]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import yaml

DEFAULT_REQUIRED_HEALTHCHECKS = ("postgres", "mosquitto")

TOP_LEVEL_KEYS = {"name", "services", "networks", "volumes", "secrets", "configs", "include"}

# Service keys of the Compose Specification (compose-spec/schema/compose-spec.json).
SERVICE_KEYS = {
    "annotations", "attach", "blkio_config", "build", "cap_add", "cap_drop", "cgroup",
    "cgroup_parent", "command", "configs", "container_name", "cpu_count", "cpu_percent",
    "cpu_period", "cpu_quota", "cpu_rt_period", "cpu_rt_runtime", "cpu_shares", "cpus",
    "cpuset", "credential_spec", "depends_on", "deploy", "develop", "device_cgroup_rules",
    "devices", "dns", "dns_opt", "dns_search", "domainname", "entrypoint", "env_file",
    "environment", "expose", "extends", "external_links", "extra_hosts", "gpus", "group_add",
    "healthcheck", "hostname", "image", "init", "ipc", "isolation", "labels", "links",
    "logging", "mac_address", "mem_limit", "mem_reservation", "mem_swappiness", "memswap_limit",
    "network_mode", "networks", "oom_kill_disable", "oom_score_adj", "pid", "pids_limit",
    "platform", "ports", "post_start", "pre_stop", "privileged", "profiles", "pull_policy",
    "read_only", "restart", "runtime", "scale", "secrets", "security_opt", "shm_size",
    "stdin_open", "stop_grace_period", "stop_signal", "storage_opt", "sysctls", "tmpfs", "tty",
    "ulimits", "user", "userns_mode", "uts", "volumes", "volumes_from", "working_dir",
}  # fmt: skip
BUILD_KEYS = {
    "additional_contexts", "args", "cache_from", "cache_to", "context", "dockerfile",
    "dockerfile_inline", "entitlements", "extra_hosts", "isolation", "labels", "network",
    "no_cache", "platforms", "privileged", "pull", "secrets", "shm_size", "ssh", "tags",
    "target", "ulimits",
}  # fmt: skip
HEALTHCHECK_KEYS = {"disable", "interval", "retries", "start_interval", "start_period", "test",
                    "timeout"}  # fmt: skip
DEPENDS_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
RESTART_POLICIES = re.compile(r"^(no|always|unless-stopped|on-failure(:\d+)?)$")
DURATION = re.compile(r"^(\d+(\.\d+)?(us|ms|s|m|h))+$")
VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
LOOPBACK_HOSTS = {"127.0.0.1", "::1", "[::1]", "localhost"}
URL_IN_TEXT = re.compile(r"\b[a-z][a-z0-9+.-]*://(?P<authority>[^/\s]+)")
"""A URL inside an environment value; the host is the authority after the last '@'."""
BARE_HOST = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")
"""A host name without dots: on a Compose network, a service (or the container itself)."""


def split_colons(text: str) -> list[str]:
    """Split on ':' outside ``${...}`` (so ``${VAR:-x}`` stays whole)."""
    parts: list[str] = []
    depth, current = 0, ""
    for index, char in enumerate(text):
        if char == "{" and text[index - 1 : index] == "$":
            depth += 1
        elif char == "}" and depth:
            depth -= 1
        if char == ":" and not depth:
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current]


class Checker:
    """Collects problems (errors) and notes for one Compose file."""

    def __init__(self, path: Path, required_healthchecks: tuple[str, ...]) -> None:
        self.path = path
        self.base = path.parent
        self.required_healthchecks = required_healthchecks
        self.errors: list[str] = []
        self.notes: list[str] = []

    def error(self, where: str, message: str) -> None:
        self.errors.append(f"{self.path.name}: {where}: {message}")

    def note(self, where: str, message: str) -> None:
        self.notes.append(f"{self.path.name}: {where}: {message}")

    # -- helpers ------------------------------------------------------------------------
    def check_interpolation(self, where: str, value: str) -> None:
        """``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-x}``, ``${VAR-x}``, ``${VAR:?x}``, ..."""
        i = 0
        while i < len(value):
            if value[i] != "$":
                i += 1
                continue
            nxt = value[i + 1 : i + 2]
            if nxt == "$":
                i += 2
            elif nxt == "{":
                depth, j = 1, i + 2
                while j < len(value) and depth:
                    depth += {"{": 1, "}": -1}.get(value[j], 0)
                    j += 1
                if depth:
                    self.error(where, f"unclosed '${{' in {value!r}")
                    return
                inner = value[i + 2 : j - 1]
                match = VAR_NAME.match(inner)
                rest = inner[match.end() :] if match else None
                if rest is None or not re.match(r"^(|:?[-?+].*)$", rest, re.S):
                    self.error(where, f"bad interpolation '${{{inner}}}' (escape $ as $$)")
                i = j
            elif VAR_NAME.match(value, i + 1):
                i += 1
            else:
                self.error(where, f"lone '$' in {value!r} (escape it as $$)")
                i += 1

    def walk_strings(self, where: str, node: Any) -> None:
        if isinstance(node, str):
            self.check_interpolation(where, node)
        elif isinstance(node, dict):
            for key, value in node.items():
                self.walk_strings(f"{where}.{key}", value)
        elif isinstance(node, list):
            for index, value in enumerate(node):
                self.walk_strings(f"{where}[{index}]", value)

    def local_path(self, where: str, raw: str, *, kind: str, want_dir: bool | None = None) -> None:
        """A repo path must exist; variable paths are only reported."""
        if "$" in raw.replace("$$", ""):
            self.note(where, f"{kind} {raw!r} is set by the deployment (not checked)")
            return
        target = Path(raw).expanduser()
        if target.is_absolute():
            self.error(where, f"{kind} {raw!r} is an absolute host path; use a repo-relative one")
            return
        resolved = self.base / target
        if not resolved.exists():
            self.error(where, f"{kind} {raw!r} does not exist ({resolved})")
        elif want_dir is True and not resolved.is_dir():
            self.error(where, f"{kind} {raw!r} is not a directory")
        elif want_dir is False and not resolved.is_file():
            self.error(where, f"{kind} {raw!r} is not a file")

    # -- top level ------------------------------------------------------------------------
    def run(self) -> None:
        try:
            doc = yaml.safe_load(self.path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            self.error("file", f"cannot read YAML: {exc}")
            return
        if not isinstance(doc, dict):
            self.error("file", "top level must be a mapping")
            return
        if "version" in doc:
            self.error("version", "obsolete in the Compose Specification; remove it")
        for key in doc:
            if key != "version" and key not in TOP_LEVEL_KEYS and not str(key).startswith("x-"):
                self.error(str(key), "unknown top-level key")
        for key, value in doc.items():
            if not str(key).startswith("x-"):
                self.walk_strings(str(key), value)
        services = doc.get("services")
        if not isinstance(services, dict) or not services:
            self.error("services", "must be a non-empty mapping")
            return
        volumes = self.declared(doc, "volumes")
        networks = self.declared(doc, "networks")
        secrets = self.declared(doc, "secrets")
        configs = self.declared(doc, "configs")
        for kind, table in (("secrets", secrets), ("configs", configs)):
            for name, spec in table.items():
                if isinstance(spec, dict) and "file" in spec:
                    self.local_path(f"{kind}.{name}.file", str(spec["file"]), kind="file")
        containers = [s.get("container_name") for s in services.values() if isinstance(s, dict)]
        for dup in sorted({c for c in containers if c is not None and containers.count(c) > 1}):
            self.error("services", f"container_name {dup!r} is used twice")
        used_volumes: set[str] = set()
        used_networks: set[str] = set()
        for name, service in services.items():
            where = f"services.{name}"
            if not isinstance(service, dict):
                self.error(where, "must be a mapping")
                continue
            self.check_service(where, name, service, services, volumes, networks)
            used_volumes |= self.named_volumes(service)
            used_networks |= set(self.service_networks(service))
            for kind, table in (("secrets", secrets), ("configs", configs)):
                for ref in service.get(kind) or []:
                    ref_name = ref.get("source") if isinstance(ref, dict) else ref
                    if ref_name not in table:
                        self.error(f"{where}.{kind}", f"{ref_name!r} is not declared")
        for missing in sorted(self.required_healthchecks):
            if missing not in services:
                self.error("services", f"required service {missing!r} is missing")
        for unused in sorted(set(volumes) - used_volumes):
            self.note(f"volumes.{unused}", "declared but not used")
        for unused in sorted(set(networks) - used_networks):
            self.note(f"networks.{unused}", "declared but not used")

    def declared(self, doc: dict[str, Any], key: str) -> dict[str, Any]:
        table = doc.get(key) or {}
        if not isinstance(table, dict):
            self.error(key, "must be a mapping")
            return {}
        return table

    # -- services -------------------------------------------------------------------------
    def check_service(
        self,
        where: str,
        name: str,
        service: dict[str, Any],
        services: dict[str, Any],
        volumes: dict[str, Any],
        networks: dict[str, Any],
    ) -> None:
        for key in service:
            if key not in SERVICE_KEYS and not str(key).startswith("x-"):
                self.error(f"{where}.{key}", "unknown service key")
        if "image" not in service and "build" not in service:
            self.error(where, "needs 'image' or 'build'")
        if "image" in service and (not isinstance(service["image"], str) or not service["image"]):
            self.error(f"{where}.image", "must be a non-empty string")
        if "build" in service:
            self.check_build(f"{where}.build", service["build"])
        healthcheck = service.get("healthcheck")
        if healthcheck is not None:
            self.check_healthcheck(f"{where}.healthcheck", healthcheck)
        if name in self.required_healthchecks and (
            not isinstance(healthcheck, dict)
            or healthcheck.get("disable")
            or "test" not in healthcheck
        ):
            self.error(where, "must define a healthcheck with a test")
        self.check_depends_on(f"{where}.depends_on", service.get("depends_on"), services)
        self.check_url_hosts(f"{where}.environment", name, service, services)
        restart = service.get("restart")
        if restart is not None and not RESTART_POLICIES.match(str(restart)):
            self.error(f"{where}.restart", f"bad restart policy {restart!r}")
        for vol in service.get("volumes") or []:
            self.check_volume(f"{where}.volumes", vol, volumes)
        if "network_mode" in service and "networks" in service:
            self.error(where, "'network_mode' and 'networks' are exclusive")
        for net in self.service_networks(service):
            if net != "default" and net not in networks:
                self.error(f"{where}.networks", f"network {net!r} is not declared")
        env_files = service.get("env_file") or []
        for env_file in [env_files] if isinstance(env_files, str | dict) else env_files:
            if isinstance(env_file, dict):
                if env_file.get("required", True) is False:
                    continue
                env_file = env_file.get("path", "")
            self.local_path(f"{where}.env_file", str(env_file), kind="env file", want_dir=False)
        for port in service.get("ports") or []:
            self.check_port(f"{where}.ports", port)

    def check_build(self, where: str, build: Any) -> None:
        if isinstance(build, str):
            build = {"context": build}
        if not isinstance(build, dict):
            self.error(where, "must be a path or a mapping")
            return
        for key in build:
            if key not in BUILD_KEYS and not str(key).startswith("x-"):
                self.error(f"{where}.{key}", "unknown build key")
        context = str(build.get("context", "."))
        if re.match(r"^(https?://|git@|github\.com/)", context):
            return
        self.local_path(f"{where}.context", context, kind="build context", want_dir=True)
        if "dockerfile_inline" in build:
            return
        dockerfile = str(build.get("dockerfile", "Dockerfile"))
        if "$" in dockerfile.replace("$$", "") or "$" in context.replace("$$", ""):
            self.note(f"{where}.dockerfile", "set by the deployment (not checked)")
            return
        resolved = (
            Path(dockerfile) if Path(dockerfile).is_absolute() else Path(context) / dockerfile
        )
        self.local_path(f"{where}.dockerfile", str(resolved), kind="Dockerfile", want_dir=False)

    def check_healthcheck(self, where: str, healthcheck: Any) -> None:
        if not isinstance(healthcheck, dict):
            self.error(where, "must be a mapping")
            return
        for key, value in healthcheck.items():
            if key not in HEALTHCHECK_KEYS:
                self.error(f"{where}.{key}", "unknown healthcheck key")
            elif key in {"interval", "timeout", "start_period", "start_interval"} and not (
                DURATION.match(str(value))
            ):
                self.error(f"{where}.{key}", f"bad duration {value!r} (e.g. 5s, 1m30s)")
            elif key == "retries" and (not isinstance(value, int) or value < 0):
                self.error(f"{where}.retries", "must be a non-negative integer")
        test = healthcheck.get("test")
        if test is None:
            return
        if isinstance(test, list):
            if not test or test[0] not in {"CMD", "CMD-SHELL", "NONE"}:
                self.error(f"{where}.test", "a list must start with CMD, CMD-SHELL or NONE")
            elif test[0] != "NONE" and (len(test) < 2 or not all(isinstance(t, str) for t in test)):
                self.error(f"{where}.test", "needs a command after CMD/CMD-SHELL")
        elif not isinstance(test, str) or not test.strip():
            self.error(f"{where}.test", "must be a list or a non-empty string")

    def check_depends_on(self, where: str, depends_on: Any, services: dict[str, Any]) -> None:
        if depends_on is None:
            return
        if isinstance(depends_on, list):
            items: dict[str, Any] = {str(d): {} for d in depends_on}
        elif isinstance(depends_on, dict):
            items = depends_on
        else:
            self.error(where, "must be a list or a mapping")
            return
        for target, spec in items.items():
            if target not in services:
                self.error(where, f"depends on undefined service {target!r}")
                continue
            condition = (spec or {}).get("condition", "service_started")
            if condition not in DEPENDS_CONDITIONS:
                self.error(f"{where}.{target}", f"bad condition {condition!r}")
            target_hc = (services.get(target) or {}).get("healthcheck")
            if condition == "service_healthy" and not (
                isinstance(target_hc, dict) and "test" in target_hc
            ):
                self.error(f"{where}.{target}", "service_healthy needs a healthcheck on the target")
            target_restart = str((services.get(target) or {}).get("restart", "no"))
            if condition == "service_completed_successfully" and target_restart != "no":
                self.error(
                    f"{where}.{target}",
                    f"a one-shot service waited for must not restart (restart: {target_restart})",
                )

    def check_url_hosts(
        self, where: str, name: str, service: dict[str, Any], services: dict[str, Any]
    ) -> None:
        """A URL host without dots must be a service that shares a network with this one."""
        env = service.get("environment") or {}
        if isinstance(env, list):
            env = dict(str(item).partition("=")[::2] for item in env)
        if not isinstance(env, dict):
            return
        own_networks = set(self.service_networks(service) or ["default"])
        for key, value in env.items():
            for match in URL_IN_TEXT.finditer(str(value or "")):
                host = match["authority"].rpartition("@")[2].partition(":")[0]
                if "$" in host or not BARE_HOST.match(host) or host in LOOPBACK_HOSTS:
                    continue
                if host == name or host == service.get("hostname"):
                    continue
                target = services.get(host)
                if not isinstance(target, dict):
                    self.error(f"{where}.{key}", f"URL host {host!r} is not a service")
                elif not own_networks & set(self.service_networks(target) or ["default"]):
                    self.error(
                        f"{where}.{key}", f"service {host!r} shares no network with {name!r}"
                    )

    def check_volume(self, where: str, vol: Any, volumes: dict[str, Any]) -> None:
        if isinstance(vol, str):
            parts = split_colons(vol)
            if len(parts) == 1:
                return  # anonymous volume
            source = parts[0]
            if len(parts) > 3 or not parts[1].startswith("/"):
                self.error(where, f"bad volume {vol!r} (SOURCE:/TARGET[:MODE])")
            if source.startswith((".", "/", "~", "$")):
                self.local_path(where, source, kind="bind mount source")
            elif source not in volumes:
                self.error(where, f"named volume {source!r} is not declared under volumes:")
        elif isinstance(vol, dict):
            kind = vol.get("type")
            source = str(vol.get("source", ""))
            if "target" not in vol:
                self.error(where, f"volume {vol!r} needs a target")
            if kind == "bind":
                self.local_path(where, source, kind="bind mount source")
            elif kind == "volume" and source and source not in volumes:
                self.error(where, f"named volume {source!r} is not declared under volumes:")
            elif kind not in {"bind", "volume", "tmpfs", "npipe", "cluster", "image"}:
                self.error(where, f"bad volume type {kind!r}")
        else:
            self.error(where, f"bad volume {vol!r}")

    def check_port(self, where: str, port: Any) -> None:
        if isinstance(port, dict):
            host_ip = port.get("host_ip")
        else:
            text = str(port)
            if not re.match(r"^[\w.\[\]:${}\-/]+$", text):
                self.error(where, f"bad port {port!r}")
                return
            pieces = split_colons(text)
            host_ip = pieces[0] if len(pieces) == 3 else None
        if host_ip not in LOOPBACK_HOSTS:
            self.error(where, f"{port!r} publishes beyond loopback; bind it to 127.0.0.1")

    @staticmethod
    def named_volumes(service: dict[str, Any]) -> set[str]:
        names: set[str] = set()
        for vol in service.get("volumes") or []:
            if isinstance(vol, str) and ":" in vol:
                source = split_colons(vol)[0]
                if not source.startswith((".", "/", "~", "$")):
                    names.add(source)
            elif isinstance(vol, dict) and vol.get("type") == "volume" and vol.get("source"):
                names.add(str(vol["source"]))
        return names

    @staticmethod
    def service_networks(service: dict[str, Any]) -> list[str]:
        nets = service.get("networks") or []
        return [str(n) for n in (nets if isinstance(nets, list) else nets.keys())]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("compose_file", nargs="?", default="compose.hil.yml")
    parser.add_argument(
        "--require-healthcheck",
        nargs="*",
        default=list(DEFAULT_REQUIRED_HEALTHCHECKS),
        metavar="SERVICE",
        help="services that must exist and define a healthcheck (default: postgres mosquitto)",
    )
    args = parser.parse_args(argv)
    path = Path(args.compose_file).resolve()
    checker = Checker(path, tuple(args.require_healthcheck))
    checker.run()
    for note in checker.notes:
        print(f"note: {note}")
    if checker.errors:
        for err in checker.errors:
            print(f"error: {err}", file=sys.stderr)
        print(f"{path.name}: INVALID ({len(checker.errors)} problem(s))", file=sys.stderr)
        return 1
    print(f"{path.name}: OK (structure, files, references)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
