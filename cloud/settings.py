"""Settings of a cloud process (pydantic-settings): environment variables ``B2L_*`` and an
optional ``.env`` file. One settings object per process, built in the composition root.

Outside development mode, start-up refuses the default secrets (``check_secrets``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from cloud.db.engine import DEFAULT_POOL_SIZE
from twin.errors import ConfigError

DEFAULT_DATABASE_URL = "sqlite:///./b2l-data/b2l.db"
DEV_SECRET = "dev-only-insecure-secret-change-me-0123456789"


class CloudSettings(BaseSettings):
    """Everything a cloud process needs; every field can be set as ``B2L_<NAME>``."""

    model_config = SettingsConfigDict(
        env_prefix="B2L_", env_file=".env", extra="ignore", frozen=True
    )

    mode: Literal["development", "production"] = "development"
    database_url: str = DEFAULT_DATABASE_URL
    """SQLAlchemy URL: ``sqlite:///path`` (embedded default) or ``postgresql+psycopg://...``."""
    database_pool_size: int = Field(default=DEFAULT_POOL_SIZE, ge=1, le=500)
    """PostgreSQL connections each process keeps open (as many again for bursts); size it to
    the requests one process serves at once, or each burst pays for new connections."""
    read_cache_entries: int = Field(default=4_096, ge=0, le=1_000_000)
    """PostgreSQL: access facts and twins each HTTP process keeps (``cloud.services.read_cache``,
    dropped on change notifications); 0 turns the cache off."""
    jwt_secret: SecretStr = SecretStr(DEV_SECRET)
    """HMAC key of the current signing key id (``jwt_key_id``)."""
    jwt_key_id: str = "k1"
    jwt_previous_keys: dict[str, SecretStr] = Field(default_factory=dict)
    """Older keys (kid -> secret) still accepted for verification during a rotation."""
    access_token_ttl_s: int = Field(default=900, gt=0)
    refresh_token_ttl_s: int = Field(default=7 * 24 * 3600, gt=0)
    mqtt_url: str | None = None
    """``mqtt://user:password@host:port`` (``mqtts://`` for TLS); None disables MQTT in
    ``b2l cloud serve`` (docs/cloud-mqtt.md)."""
    mqtt_client_id: str | None = None
    """Stable MQTT client id of this process (its persistent session); None:
    ``b2l-cloud-{hostname}``. Give every cloud process its own."""
    mqtt_group: str = Field(default="b2l-cloud", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    """Shared-subscription group: the processes of one group split the uplink messages."""
    mqtt_ca_file: str | None = None
    """PEM CA bundle that signed the broker's certificate (TLS; None: the system's CAs)."""
    mqtt_cert_file: str | None = None
    """Client certificate (PEM) for brokers that require one; with ``mqtt_key_file``."""
    mqtt_key_file: str | None = None
    mqtt_session_expiry_s: int = Field(default=7 * 86_400, ge=0)
    """How long the broker keeps this process's session (and queues its share) while it is
    away; 0: the session ends with the connection."""
    mqtt_keepalive_s: int = Field(default=30, ge=5, le=65_535)
    mqtt_receive_maximum: int = Field(default=12_000, ge=1, le=65_535)
    """Unacknowledged messages the broker may have in flight to this process (MQTT 5); keep it
    at least twice ``mqtt_batch_max_messages`` (a group is decoded while the last commits)."""
    mqtt_batch_max_messages: int = Field(default=4_000, ge=1)
    """A group commit takes at most this many messages (each battery's twin is written once
    per group: bigger groups, fewer twin writes per message) ..."""
    mqtt_batch_max_wait_s: float = Field(default=0.05, ge=0.0, le=10.0)
    """... or what arrived within this long after the first one."""
    mqtt_twin_interval_s: float = Field(default=1.0, ge=0.0, le=60.0)
    """The consumer keeps the stored telemetry of its groups and merges it into the twins (and
    the cloud mirror) at most this often, and when it stops: each twin written once per interval
    instead of once per group (at 1,000 batteries 11.4k-11.6k msg/s against 8.9k). The rows are
    stored and acknowledged at each commit as before; the reported state lags by up to the
    interval. A consumer killed meanwhile leaves twins behind their stored rows: the next one to
    start merges those rows first. 0: each group commit also merges its telemetry."""
    mqtt_dead_letter_dir: str | None = "./b2l-data/mqtt-dead-letters"
    """Malformed messages go to ``dead-letters.jsonl`` here (None: only counted and logged)."""
    mqtt_dead_letter_max_bytes: int = Field(default=64 * 1024 * 1024, ge=4096)
    """Bound of the dead-letter files (the current one and one rotated)."""
    mqtt_commands: bool = True
    """Publish queued commands to ``b2l/v1/{battery_id}/commands`` from this process."""
    mqtt_command_poll_s: float = Field(default=0.5, gt=0.0, le=60.0)
    """How often the command publisher looks for new queued commands."""
    telemetry_partition_span: Literal["day", "month"] = "month"
    """PostgreSQL: the time span of one partition of the cell telemetry tables."""
    mirror_period_s: float = Field(default=60.0, ge=0.0)
    """The cloud mirror corrects its SoC filter at most once per this much data time (0: every
    Pillar 1 record); the charge in between is integrated exactly."""
    mirror_divergence_soc: float = Field(default=0.05, gt=0.0, le=1.0)
    """An event is raised when the mirror's SoC and the edge's differ by more than this."""
    history_max_rows: int = Field(default=100_000, ge=1)
    """The most rows one history query may return."""
    command_default_ttl_s: float = Field(default=24 * 3600.0, gt=0.0)

    login_max_failures: int = Field(default=5, ge=1)
    """Consecutive failed logins that lock a user account."""
    login_lockout_s: float = Field(default=900.0, gt=0)
    """How long a locked account stays locked."""
    argon2_time_cost: int = Field(default=3, ge=1)
    argon2_memory_kib: int = Field(default=65_536, ge=8)
    argon2_parallelism: int = Field(default=4, ge=1)
    ingest_rate_rows_per_s: float = Field(default=200_000.0, ge=0)
    """Per-device ingestion rate (rows per second, per cloud process); 0 disables the limit."""
    ingest_burst_rows: float = Field(default=2_000_000.0, gt=0)
    """Rows a device may send at once before the rate applies (an offline backlog)."""
    log_level: str = "INFO"
    log_json: bool = True
    """JSON lines on stderr (one object per record); False: plain text for a terminal."""
    access_log: bool = True
    """One log line per HTTP request (logger ``cloud.access``)."""
    tls_certfile: str | None = None
    """PEM certificate (chain) for HTTPS in ``b2l cloud serve``; None serves plain HTTP."""
    tls_keyfile: str | None = None

    def check_secrets(self) -> None:
        """Refuse to start in production with the development secret (or a short one)."""
        if self.mode == "development":
            return
        secret = self.jwt_secret.get_secret_value()
        if secret == DEV_SECRET or len(secret) < 32:
            raise ConfigError(
                "B2L_JWT_SECRET must be set to a random value of at least 32 characters "
                "outside development mode (B2L_MODE=production)"
            )
        for kid, previous in self.jwt_previous_keys.items():
            value = previous.get_secret_value()
            if value == DEV_SECRET or len(value) < 32:
                raise ConfigError(
                    f"B2L_JWT_PREVIOUS_KEYS[{kid!r}] must be a random value of at least "
                    "32 characters outside development mode"
                )
