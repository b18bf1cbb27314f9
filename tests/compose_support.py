"""compose.hil.yml and docker/*.Dockerfile read as data, for tests without a Docker engine.

``compose_file()`` is the Compose file with ``${VAR:-default}`` resolved to the defaults (or to
``env``), as ``docker compose config`` would print it without an ``.env``; ``argv(service)`` is
the command a service's container runs (the compose ``entrypoint``/``command``, else the image's
``ENTRYPOINT``/``CMD``); ``instructions(dockerfile)`` lists a Dockerfile's instructions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "compose.hil.yml"
DOCKER = ROOT / "docker"
_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>\w+)(?:(?P<op>:?-)(?P<default>[^}]*))?\}")


def interpolate(value: str, env: Mapping[str, str] | None = None) -> str:
    """``${VAR:-x}``/``${VAR-x}``/``${VAR}`` from ``env`` or the default; ``$$`` -> ``$``."""
    env = env or {}

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, default = match["name"], match["op"], match["default"] or ""
        current = env.get(name)
        if op == ":-" and not current:
            return default
        if current is None:
            return default if op else ""
        return current

    return _VARIABLE.sub(one, value)


def _resolve(node: Any, env: Mapping[str, str] | None) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, dict):
        return {key: _resolve(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [_resolve(value, env) for value in node]
    return node


def compose_file(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """compose.hil.yml with its variables resolved (defaults unless ``env`` sets them)."""
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict)
    resolved: dict[str, Any] = _resolve(document, env)
    return resolved


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per line, continuation lines joined, comments dropped."""
    text = dockerfile.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def exec_form(dockerfile: Path, word: str) -> list[str] | None:
    """The JSON (exec) form of the last ``ENTRYPOINT``/``CMD`` of ``dockerfile``, or None."""
    found = [rest for w, rest in instructions(dockerfile) if w == word]
    if not found:
        return None
    value = json.loads(found[-1])
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), found[-1]
    return value


def dockerfile_of(service: Mapping[str, Any]) -> Path:
    """The Dockerfile a service is built from."""
    build = service["build"]
    return ROOT / str(build.get("context", ".")) / str(build.get("dockerfile", "Dockerfile"))


def argv(service: Mapping[str, Any]) -> list[str]:
    """What the service's container runs: entrypoint then command, compose over the image."""
    dockerfile = dockerfile_of(service)
    entrypoint = service.get("entrypoint", exec_form(dockerfile, "ENTRYPOINT"))
    command = service.get(
        "command", exec_form(dockerfile, "CMD") if "entrypoint" not in service else None
    )
    if isinstance(entrypoint, str) or isinstance(command, str):
        raise AssertionError(f"use the exec (list) form: {entrypoint!r} {command!r}")
    return [*(entrypoint or []), *(command or [])]


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's environment as a mapping (list or mapping form)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(str(item).partition("=")[::2] for item in env)
    return {str(key): str(value) for key, value in env.items()}
