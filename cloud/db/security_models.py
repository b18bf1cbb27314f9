"""Tables of the security layer: users, devices, grants, refresh tokens and the audit log.

Timestamps are timezone-aware UTC on both PostgreSQL and SQLite (``cloud.db.types``). Users
and devices are kept apart: a user logs in by name and password, a device by its id (``dev-…``)
and the secret shown once when it was created.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from cloud.db.base import Base
from cloud.db.types import Json, UtcDateTime

BigId = BigInteger().with_variant(Integer(), "sqlite")
"""BIGINT on PostgreSQL; INTEGER on SQLite, where only it auto-increments."""


class User(Base):
    """A person or service account; logs in by name and password."""

    __tablename__ = "users"

    user_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    """argon2id PHC string; never the password."""
    role: Mapped[str] = mapped_column(String(16))
    failed_login_count: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)


class Device(Base):
    """An edge runtime's credentials: one device, one battery."""

    __tablename__ = "devices"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    battery_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("batteries.battery_id", ondelete="CASCADE"), index=True
    )
    secret_hash: Mapped[str] = mapped_column(String(256))
    """argon2id PHC string of the device secret (shown once at creation)."""
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class AccessGrant(Base):
    """Access of a user to one battery (or all: ``battery_id`` NULL) for some categories."""

    __tablename__ = "grants"
    __table_args__ = (Index("ix_grants_user_id", "user_id"),)

    grant_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.user_id", ondelete="CASCADE"))
    battery_id: Mapped[str | None] = mapped_column(
        String(64), ForeignKey("batteries.battery_id", ondelete="CASCADE"), nullable=True
    )
    categories: Mapped[list[str]] = mapped_column(Json)
    valid_from: Mapped[datetime] = mapped_column(UtcDateTime)
    valid_until: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    """Exclusive end; NULL: no end."""
    granted_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class RefreshToken(Base):
    """An issued refresh token (by ``jti``); rotated on use, reuse revokes the subject's."""

    __tablename__ = "refresh_tokens"
    __table_args__ = (Index("ix_refresh_tokens_subject", "subject"),)

    token_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    subject: Mapped[str] = mapped_column(String(64))
    is_device: Mapped[bool] = mapped_column(Boolean, default=False)
    issued_at: Mapped[datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    replaced_by: Mapped[str | None] = mapped_column(String(64), nullable=True)


class AuditEntry(Base):
    """One audited event: a restricted read, a denial, a passport or lifecycle write, ..."""

    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_log_battery_id_at", "battery_id", "at"),
        Index("ix_audit_log_actor_at", "actor", "at"),
    )

    audit_id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime)
    actor: Mapped[str] = mapped_column(String(80))
    """``user:NAME`` or ``device:ID``."""
    action: Mapped[str] = mapped_column(String(64))
    battery_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """Not a foreign key: the log outlives the batteries it names."""
    category: Mapped[str | None] = mapped_column(String(32), nullable=True)
    detail: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    outcome: Mapped[str] = mapped_column(String(16))
    """``allowed``, ``denied``, ``ok`` or ``failed``."""
