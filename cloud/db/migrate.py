"""Alembic migrations run from code: no ``alembic.ini``, scripts found inside the package.

``upgrade(url)`` brings a database to the newest schema (``upgrade heads``); it is what
``b2l cloud migrate`` and the tests call. The scripts live in ``cloud/migrations`` and are found
as package resources (``script_location = "cloud:migrations"``), so an installed package works.
"""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine
from sqlalchemy.engine import URL

from cloud.db.engine import make_engine, normalise_url

SCRIPT_LOCATION = "cloud:migrations"


def alembic_config(url: str | URL | None = None) -> Config:
    """An Alembic configuration built in code (``url`` for offline use and ``alembic`` CLI)."""
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    if url is not None:
        rendered = normalise_url(url).render_as_string(hide_password=False)
        config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return config


def upgrade_engine(engine: Engine, revision: str = "heads") -> None:
    """Run the migrations up to ``revision`` on ``engine``, in one transaction."""
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def upgrade(url: str | URL, revision: str = "heads") -> None:
    """Migrate the database at ``url`` to ``revision`` (default: every head)."""
    engine = make_engine(url)
    try:
        upgrade_engine(engine, revision)
    finally:
        engine.dispose()


def head_revisions() -> set[str]:
    """The newest revision ids of the shipped scripts."""
    return set(ScriptDirectory.from_config(alembic_config()).get_heads())


def current_revisions(engine: Engine) -> set[str]:
    """The revisions the database is at (empty before the first migration)."""
    with engine.connect() as connection:
        return set(MigrationContext.configure(connection).get_current_heads())


def is_up_to_date(engine: Engine) -> bool:
    """Whether the database is at every head (``/readyz`` can check it)."""
    return current_revisions(engine) == head_revisions()
