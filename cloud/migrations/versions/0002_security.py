"""Security: users, devices, grants, refresh tokens and the audit log.

Revision ID: 0002_security
Revises: 0001_core
Create Date: 2026-11-25

Runs on PostgreSQL and SQLite. ``audit_log.battery_id`` has no foreign key on purpose: the log
outlives the batteries it names.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002_security"
down_revision: str | Sequence[str] | None = "0001_core"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _ts(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _battery_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["battery_id"],
        ["batteries.battery_id"],
        name=op.f(f"fk_{table}_battery_id_batteries"),
        ondelete="CASCADE",
    )


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("user_id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("password_hash", sa.String(256), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("failed_login_count", sa.Integer(), nullable=False),
        _ts("locked_until", nullable=True),
        _ts("created_at"),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_users")),
        sa.UniqueConstraint("name", name=op.f("uq_users_name")),
    )
    op.create_table(
        "devices",
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("battery_id", sa.String(64), nullable=False),
        sa.Column("secret_hash", sa.String(256), nullable=False),
        _ts("created_at"),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        _battery_fk("devices"),
        sa.PrimaryKeyConstraint("device_id", name=op.f("pk_devices")),
    )
    op.create_index(op.f("ix_devices_battery_id"), "devices", ["battery_id"])
    op.create_table(
        "grants",
        sa.Column("grant_id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("battery_id", sa.String(64), nullable=True),
        sa.Column("categories", JSON, nullable=False),
        _ts("valid_from"),
        _ts("valid_until", nullable=True),
        sa.Column("granted_by", sa.String(64), nullable=False),
        _ts("created_at"),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.user_id"],
            name=op.f("fk_grants_user_id_users"),
            ondelete="CASCADE",
        ),
        _battery_fk("grants"),
        sa.PrimaryKeyConstraint("grant_id", name=op.f("pk_grants")),
    )
    op.create_index("ix_grants_user_id", "grants", ["user_id"])
    op.create_table(
        "refresh_tokens",
        sa.Column("token_id", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(64), nullable=False),
        sa.Column("is_device", sa.Boolean(), nullable=False),
        _ts("issued_at"),
        _ts("expires_at"),
        _ts("revoked_at", nullable=True),
        sa.Column("replaced_by", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("token_id", name=op.f("pk_refresh_tokens")),
    )
    op.create_index("ix_refresh_tokens_subject", "refresh_tokens", ["subject"])
    op.create_table(
        "audit_log",
        sa.Column("audit_id", BIG_ID, autoincrement=True, nullable=False),
        _ts("at"),
        sa.Column("actor", sa.String(80), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("battery_id", sa.String(64), nullable=True),
        sa.Column("category", sa.String(32), nullable=True),
        sa.Column("detail", JSON, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("audit_id", name=op.f("pk_audit_log")),
    )
    op.create_index("ix_audit_log_battery_id_at", "audit_log", ["battery_id", "at"])
    op.create_index("ix_audit_log_actor_at", "audit_log", ["actor", "at"])


def downgrade() -> None:
    op.drop_index("ix_audit_log_actor_at", table_name="audit_log")
    op.drop_index("ix_audit_log_battery_id_at", table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_index("ix_refresh_tokens_subject", table_name="refresh_tokens")
    op.drop_table("refresh_tokens")
    op.drop_index("ix_grants_user_id", table_name="grants")
    op.drop_table("grants")
    op.drop_index(op.f("ix_devices_battery_id"), table_name="devices")
    op.drop_table("devices")
    op.drop_table("users")
