"""All the cloud's tables in one ``MetaData``: every model module imported once.

``cloud.db.models`` is the core; ``cloud.db.security_models`` (users, devices, grants, audit)
joins when it is present. Alembic's ``env.py`` and the schema tests use ``load_metadata()``.
"""

from __future__ import annotations

import importlib
import importlib.util

from sqlalchemy import MetaData

from cloud.db.base import Base

MODEL_MODULES = ("cloud.db.models", "cloud.db.security_models")


def load_metadata() -> MetaData:
    """``Base.metadata`` after importing every model module that exists."""
    for name in MODEL_MODULES:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name)
    return Base.metadata
