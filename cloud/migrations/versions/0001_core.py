"""Core schema: batteries, passports, twins, time series, commands.

Revision ID: 0001_core
Revises:
Create Date: 2026-11-25

The cell telemetry tables are ``PARTITION BY RANGE (ts)`` on PostgreSQL (partitions are made at
run time by ``cloud.db.partitions``); SQLite ignores the option and gets plain tables.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001_core"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
PARTITION_BY = "RANGE (ts)"


def _ts(name: str = "ts", nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _battery_id(**kwargs: object) -> sa.Column[object]:
    return sa.Column("battery_id", sa.String(64), nullable=False, **kwargs)  # type: ignore[arg-type]


def _battery_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["battery_id"],
        ["batteries.battery_id"],
        name=op.f(f"fk_{table}_battery_id_batteries"),
        ondelete="CASCADE",
    )


def _double(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.Double(), nullable=nullable)


def _cell_key() -> list[sa.Column[object]]:
    return [
        _battery_id(),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        _ts(),
        sa.Column("cell_id", sa.Integer(), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "batteries",
        _battery_id(),
        sa.Column("topology", JSON, nullable=False),
        sa.Column("cell_parameters", JSON, nullable=True),
        sa.Column("manufacturer", sa.String(64), nullable=True),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("battery_id", name=op.f("pk_batteries")),
    )
    op.create_table(
        "sizing_parameters",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        _battery_id(),
        _ts(),
        sa.Column("parameters", JSON, nullable=False),
        _ts("created_at"),
        _battery_fk("sizing_parameters"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sizing_parameters")),
        sa.UniqueConstraint("battery_id", "ts", name=op.f("uq_sizing_parameters_battery_id")),
    )
    op.create_index(op.f("ix_sizing_parameters_battery_id"), "sizing_parameters", ["battery_id"])
    op.create_table(
        "passports",
        _battery_id(),
        sa.Column("attributes", JSON, nullable=False),
        sa.Column("extensions", JSON, nullable=False),
        sa.Column("lifecycle_status", sa.String(16), nullable=False),
        _ts("updated_at", nullable=True),
        sa.Column("updated_by", sa.String(64), nullable=True),
        _battery_fk("passports"),
        sa.PrimaryKeyConstraint("battery_id", name=op.f("pk_passports")),
    )
    op.create_table(
        "lifecycle_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        _battery_id(),
        sa.Column("old_status", sa.String(16), nullable=True),
        sa.Column("new_status", sa.String(16), nullable=False),
        _ts("changed_at"),
        sa.Column("changed_by", sa.String(64), nullable=True),
        sa.Column("reason", sa.String(200), nullable=True),
        _battery_fk("lifecycle_events"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lifecycle_events")),
    )
    op.create_index(op.f("ix_lifecycle_events_battery_id"), "lifecycle_events", ["battery_id"])
    op.create_table(
        "twins",
        _battery_id(),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("desired", JSON, nullable=False),
        sa.Column("desired_metadata", JSON, nullable=False),
        sa.Column("reported", JSON, nullable=False),
        sa.Column("reported_metadata", JSON, nullable=False),
        sa.Column("estimator_state", JSON, nullable=True),
        _ts("updated_at"),
        _battery_fk("twins"),
        sa.PrimaryKeyConstraint("battery_id", name=op.f("pk_twins")),
    )
    op.create_table(
        "ingested_records",
        _battery_id(),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        _ts(),
        _ts("received_at"),
        sa.PrimaryKeyConstraint("battery_id", "seq", name=op.f("pk_ingested_records")),
    )

    op.create_table(
        "cell_pillar1",
        *_cell_key(),
        _double("voltage_v"),
        _double("temperature_c"),
        _double("current_a"),
        _double("sot"),
        _double("phase"),
        _double("soc"),
        _double("sos"),
        postgresql_partition_by=PARTITION_BY,
    )
    op.create_table(
        "cell_pillar2",
        *_cell_key(),
        _double("soc"),
        _double("soh"),
        _double("sos"),
        _double("equivalent_cycles"),
        _double("voltage_v", nullable=True),
        _double("temperature_c", nullable=True),
        postgresql_partition_by=PARTITION_BY,
    )
    op.create_table(
        "cell_estimates",
        *_cell_key(),
        _double("soc"),
        _double("soc_std"),
        _double("sos", nullable=True),
        postgresql_partition_by=PARTITION_BY,
    )
    for table in ("cell_pillar1", "cell_pillar2", "cell_estimates"):
        op.create_index(f"ix_{table}_battery_ts", table, ["battery_id", "ts"])

    op.create_table(
        "pack_measurements",
        _battery_id(),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("pack_index", sa.SmallInteger(), nullable=False),
        _ts(),
        _double("voltage_v"),
        _double("current_a"),
        sa.Column("state", sa.String(32), nullable=True),
        sa.Column("faults", JSON, nullable=False),
        sa.PrimaryKeyConstraint(
            "battery_id", "seq", "pack_index", name=op.f("pk_pack_measurements")
        ),
    )
    op.create_index("ix_pack_measurements_battery_ts", "pack_measurements", ["battery_id", "ts"])
    op.create_table(
        "eis_rows",
        _battery_id(),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("row_index", sa.Integer(), nullable=False),
        _ts(),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("cell_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        _double("frequency_hz"),
        _double("amplitude_ohm"),
        _double("phase_deg"),
        _double("current_offset_a"),
        _double("v_start_v"),
        _double("v_end_v"),
        _double("temperature_c"),
        sa.PrimaryKeyConstraint("battery_id", "seq", "row_index", name=op.f("pk_eis_rows")),
    )
    op.create_index("ix_eis_rows_battery_event", "eis_rows", ["battery_id", "event_id"])
    op.create_index("ix_eis_rows_battery_ts", "eis_rows", ["battery_id", "ts"])
    op.create_table(
        "events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        _battery_id(),
        sa.Column("seq", sa.BigInteger(), nullable=True),
        sa.Column("source", sa.String(16), nullable=False),
        _ts(),
        _ts("received_at"),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("message", sa.String(200), nullable=True),
        sa.Column("cell_id", sa.Integer(), nullable=True),
        sa.Column("data", JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    op.create_index("ix_events_battery_ts", "events", ["battery_id", "ts"])

    op.create_table(
        "commands",
        sa.Column("command_id", sa.Uuid(), nullable=False),
        _battery_id(),
        sa.Column("command_type", sa.String(32), nullable=False),
        sa.Column("payload", JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        _ts("created_at"),
        _ts("expires_at"),
        sa.Column("created_by", sa.String(64), nullable=True),
        _ts("delivered_at", nullable=True),
        sa.Column("delivery_count", sa.Integer(), nullable=False),
        _ts("completed_at", nullable=True),
        sa.Column("reason", sa.String(200), nullable=True),
        sa.Column("result", JSON, nullable=True),
        _ts("updated_at"),
        _battery_fk("commands"),
        sa.PrimaryKeyConstraint("command_id", name=op.f("pk_commands")),
    )
    op.create_index("ix_commands_battery_status", "commands", ["battery_id", "status"])
    op.create_table(
        "command_transitions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("command_id", sa.Uuid(), nullable=False),
        sa.Column("old_status", sa.String(16), nullable=True),
        sa.Column("new_status", sa.String(16), nullable=False),
        _ts("at"),
        sa.Column("detail", sa.String(200), nullable=True),
        sa.ForeignKeyConstraint(
            ["command_id"],
            ["commands.command_id"],
            name=op.f("fk_command_transitions_command_id_commands"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_command_transitions")),
    )
    op.create_index(
        op.f("ix_command_transitions_command_id"), "command_transitions", ["command_id"]
    )
    op.create_table(
        "command_acks",
        _battery_id(),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        _ts(),
        sa.Column("command_id", sa.Uuid(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(200), nullable=True),
        sa.Column("result", JSON, nullable=True),
        sa.Column("applied", sa.Boolean(), nullable=False),
        sa.Column("note", sa.String(200), nullable=True),
        sa.PrimaryKeyConstraint("battery_id", "seq", name=op.f("pk_command_acks")),
    )
    op.create_index(op.f("ix_command_acks_command_id"), "command_acks", ["command_id"])


def downgrade() -> None:
    for table in (
        "command_acks",
        "command_transitions",
        "commands",
        "events",
        "eis_rows",
        "pack_measurements",
        "cell_estimates",
        "cell_pillar2",
        "cell_pillar1",
        "ingested_records",
        "twins",
        "lifecycle_events",
        "passports",
        "sizing_parameters",
        "batteries",
    ):
        op.drop_table(table)
