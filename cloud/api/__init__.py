"""The HTTP API: one module per resource, each with a ``router`` (``fastapi.APIRouter``).

``cloud.app.create_app`` includes the routers of ``CORE_ROUTERS`` and of every module of
``RESOURCE_ROUTERS`` that exists, so a resource is added by writing ``cloud/api/<name>.py``
with a module-level ``router`` whose paths start with ``/api/v1``: no edit of ``cloud.app``.
"""

from __future__ import annotations

import importlib
import importlib.util

from fastapi import APIRouter

CORE_ROUTERS = ("cloud.api.ops", "cloud.api.auth")
RESOURCE_ROUTERS = (
    "cloud.api.batteries",
    "cloud.api.twin",
    "cloud.api.telemetry",
    "cloud.api.eis",
    "cloud.api.commands",
    "cloud.api.passport",
    "cloud.api.analytics",
    "cloud.api.admin",
    "cloud.api.grants",
)


def load_routers() -> list[APIRouter]:
    """The routers of the core modules and of every resource module that exists."""
    routers: list[APIRouter] = []
    for name in (*CORE_ROUTERS, *RESOURCE_ROUTERS):
        if name not in CORE_ROUTERS and importlib.util.find_spec(name) is None:
            continue
        router = importlib.import_module(name).router
        if not isinstance(router, APIRouter):
            raise TypeError(f"{name}.router is not an APIRouter")
        routers.append(router)
    return routers
