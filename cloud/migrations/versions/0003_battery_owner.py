"""The owner of a battery: reads all of it and grants others access (SPEC section 5).

Revision ID: 0003_battery_owner
Revises: 0002_security
Create Date: 2026-12-06

Runs on PostgreSQL and SQLite (ADD COLUMN; the downgrade goes through batch mode on SQLite).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_battery_owner"
down_revision: str | Sequence[str] | None = "0002_security"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("batteries", sa.Column("owner", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("batteries") as batch:
        batch.drop_column("owner")
