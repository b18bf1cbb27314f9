"""Access facts announce their changes: ``NOTIFY b2l_changes, 'access'`` (``cloud.db.changes``).

Revision ID: 0004_change_notifications
Revises: 0003_battery_owner
Create Date: 2026-12-06

PostgreSQL only (SQLite has no NOTIFY, and its processes do not cache access facts): statement
triggers on ``grants`` (any change), ``batteries`` (owner, manufacturer, deletion) and ``users``
(name, deletion), whichever writer changes them.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004_change_notifications"
down_revision: str | Sequence[str] | None = "0003_battery_owner"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FUNCTION = "b2l_notify_access_changed"
TRIGGERS = {
    "grants": "AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE",
    "batteries": "AFTER UPDATE OF owner, manufacturer OR DELETE OR TRUNCATE",
    "users": "AFTER UPDATE OF name OR DELETE OR TRUNCATE",
}


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        f"""
        CREATE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('b2l_changes', 'access');
            RETURN NULL;
        END
        $$
        """
    )
    for table, events in TRIGGERS.items():
        op.execute(
            f"CREATE TRIGGER {table}_access_changed {events} ON {table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {FUNCTION}()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TRIGGERS:
        op.execute(f"DROP TRIGGER {table}_access_changed ON {table}")
    op.execute(f"DROP FUNCTION {FUNCTION}()")
