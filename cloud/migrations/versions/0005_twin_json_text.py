"""Twin documents as JSON text: ``json`` instead of ``jsonb``, lz4-compressed.

Revision ID: 0005_twin_json_text
Revises: 0004_change_notifications
Create Date: 2026-12-06

PostgreSQL only (SQLite stores JSON as text already). Ingestion rewrites a twin's reported
state and per-leaf stamps (~11 kB for 16 cells) at every group commit; as ``jsonb`` each write
cost the server ~150 µs of CPU (parse into the binary form, pglz), as ``json`` with lz4 ~35 µs.
Nothing queries inside these columns: they are written and read whole. lz4 is used where the
server was built with it (Debian's and the official images are); elsewhere, and before
PostgreSQL 14, the default stays.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005_twin_json_text"
down_revision: str | Sequence[str] | None = "0004_change_notifications"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("desired", "desired_metadata", "reported", "reported_metadata", "estimator_state")


def _alter(type_: str, compression: str) -> None:
    alters = ", ".join(f"ALTER COLUMN {c} TYPE {type_} USING {c}::{type_}" for c in COLUMNS)
    op.execute(f"ALTER TABLE twins {alters}")
    compress = ", ".join(f"ALTER COLUMN {c} SET COMPRESSION {compression}" for c in COLUMNS)
    op.execute(  # refused by a server without lz4, unknown before PostgreSQL 14: keep the default
        f"""
        DO $$ BEGIN
            EXECUTE 'ALTER TABLE twins {compress}';
        EXCEPTION WHEN feature_not_supported OR syntax_error THEN
            RAISE NOTICE 'twins keep the default compression: %', SQLERRM;
        END $$
        """
    )


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    _alter("json", "lz4")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    _alter("jsonb", "default")
