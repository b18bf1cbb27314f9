"""Settings of the edge runtime: one TOML file, overridden by ``B2L_EDGE_*`` environment variables.

``load_settings(path)`` reads the TOML file (``tomllib``), lets the environment override any key
(prefix ``B2L_EDGE_``, nesting with ``__``: ``B2L_EDGE_LINK__CHANNEL=vcan0``,
``B2L_EDGE_UPLINK__SECRET=...``), validates everything and raises ``twin.errors.ConfigError``
naming each bad key (``uplink.base_url: Field required``). The sections are documented in
``docs/edge-runtime.md``; ``examples/edge.toml`` is a complete file.

Adapters are picked by ``kind``: ``[link] kind = "can" | "serial"``,
``[uplink] kind = "http" | "mqtt" | "memory"``.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from twin.base import BatteryId
from twin.cell_params import CellParameters, builtin_parameter_sets, load_builtin
from twin.commands import MAX_REPORTING_PERIOD_S, MIN_REPORTING_PERIOD_S
from twin.errors import B2LError, ConfigError
from twin.topology import BatteryTopology
from twin.uplink import MAX_RECORDS_PER_BATCH

__all__ = [
    "ENV_PREFIX",
    "CanLinkSettings",
    "EdgeSettings",
    "HttpUplinkSettings",
    "LinkSettings",
    "LoggingSettings",
    "MemoryUplinkSettings",
    "MqttUplinkSettings",
    "OutboxSettings",
    "SerialLinkSettings",
    "UplinkSettings",
    "load_settings",
]

ENV_PREFIX = "B2L_EDGE_"
_PositiveS = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]


class _Section(BaseModel):
    """A TOML table: unknown keys are errors (a typo must not silently fall back to a default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# ----------------------------------------------------------------------------- links


class CanLinkSettings(_Section):
    """``[link] kind = "can"``: a Pillar 2 BMS on any python-can interface."""

    kind: Literal["can"]
    interface: str = "socketcan"
    """python-can interface name: socketcan, virtual, udp_multicast, pcan, ..."""
    channel: str = "can0"
    bitrate: Annotated[int, Field(gt=0)] | None = None
    """None: the interface's setting (socketcan: set with ``ip link``)."""
    options: dict[str, str | int | float | bool] = Field(default_factory=dict)
    """Extra keyword arguments of ``can.Bus`` (e.g. ``preserve_timestamps = true``)."""
    command_timeout_s: _PositiveS = 0.25
    command_retries: Annotated[int, Field(ge=0, le=10)] = 3
    sample_timeout_s: _PositiveS = 0.5
    """A burst of cell frames older than this is reported as an incomplete sample."""


class SerialLinkSettings(_Section):
    """``[link] kind = "serial"``: a Pillar 1 BMS on any pyserial URL."""

    kind: Literal["serial"]
    url: Annotated[str, Field(min_length=1)]
    """``/dev/ttyUSB0``, a pty path, ``socket://host:port``, ``loop://``, ``rfc2217://...``."""
    baudrate: Annotated[int, Field(gt=0)] = 115_200
    command_timeout_s: _PositiveS = 0.25
    command_retries: Annotated[int, Field(ge=0, le=10)] = 3
    sample_timeout_s: _PositiveS = 0.5
    reconnect_s: _PositiveS = 2.0
    """Wait between attempts to (re)open the port."""


LinkSettings = Annotated[CanLinkSettings | SerialLinkSettings, Field(discriminator="kind")]


# ----------------------------------------------------------------------------- outbox


class OutboxSettings(_Section):
    """``[outbox]``: the SQLite store-and-forward queue."""

    path: Path = Path("/var/lib/b2l-edge/outbox.sqlite")
    max_bytes: Annotated[int, Field(ge=64 * 1024)] = 256 * 1024 * 1024
    """Bound of the stored record bodies; past it the oldest are dropped (data-loss event)."""
    max_age_s: _PositiveS = 30 * 86_400.0
    """Records older than this are dropped (data-loss event)."""
    batch_max_records: Annotated[int, Field(ge=1, le=MAX_RECORDS_PER_BATCH)] = 500
    batch_max_bytes: Annotated[int, Field(ge=4 * 1024)] = 512 * 1024
    """Bound of one batch's JSON before compression."""
    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    """SQLite ``synchronous`` in WAL mode; FULL survives power loss (docs/edge-runtime.md)."""


# ----------------------------------------------------------------------------- uplinks


class _UplinkCommon(_Section):
    backoff_base_s: _PositiveS = 1.0
    backoff_cap_s: _PositiveS = 300.0
    linger_s: Annotated[float, Field(ge=0.0, le=3600.0)] = 0.5
    """Wait this long for more records before sending a partial batch (alarms never wait)."""

    @model_validator(mode="after")
    def _backoff_order(self) -> _UplinkCommon:
        if self.backoff_cap_s < self.backoff_base_s:
            raise ValueError("backoff_cap_s must be >= backoff_base_s")
        return self


class HttpUplinkSettings(_UplinkCommon):
    """``[uplink] kind = "http"``: HTTPS POST of batches to the cloud's REST API."""

    kind: Literal["http"]
    base_url: Annotated[str, Field(pattern=r"^https?://[^\s/]+(/[^\s]*)?$")]
    device_id: Annotated[str, Field(min_length=1, max_length=128)]
    secret: SecretStr | None = None
    secret_file: Path | None = None
    """File holding the device secret (e.g. a systemd credential); instead of ``secret``."""
    ca_file: Path | None = None
    """PEM bundle of the CA that signed the cloud's certificate; None: the system's CAs."""
    verify: bool = True
    """False disables TLS verification: for a lab only; logged as a warning."""
    timeout_s: _PositiveS = 10.0
    compress: bool = True
    """gzip the request body (``Content-Encoding: gzip``)."""
    command_poll_s: _PositiveS = 30.0
    """How often pending commands are fetched (and at once after a reconnect)."""

    @model_validator(mode="after")
    def _one_secret(self) -> HttpUplinkSettings:
        if (self.secret is None) == (self.secret_file is None):
            raise ValueError("set exactly one of secret and secret_file")
        return self

    def secret_value(self) -> str:
        """The device secret (read from ``secret_file`` if given)."""
        if self.secret is not None:
            return self.secret.get_secret_value()
        assert self.secret_file is not None
        return _read_secret(self.secret_file, "uplink.secret_file")


class MqttUplinkSettings(_UplinkCommon):
    """``[uplink] kind = "mqtt"``: QoS 1 publishes to ``b2l/v1/{battery_id}/...``."""

    kind: Literal["mqtt"]
    host: Annotated[str, Field(min_length=1)]
    port: Annotated[int, Field(ge=1, le=65_535)] = 1883
    protocol: Literal["5", "3.1.1"] = "5"
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    client_id: str | None = None
    """None: ``b2l-edge-{battery_id}`` (stable, so the broker keeps the session)."""
    clean_start: bool = False
    session_expiry_s: Annotated[int, Field(ge=0)] = 7 * 86_400
    keepalive_s: Annotated[int, Field(ge=5, le=65_535)] = 30
    max_inflight: Annotated[int, Field(ge=1, le=1000)] = 10
    ack_timeout_s: _PositiveS = 60.0
    """A batch without PUBACK for this long is sent again."""
    replay_window_s: Annotated[float, Field(ge=0.0)] = 30.0
    """Records acknowledged by the broker within this window are published again after a
    reconnect (a broker killed before its autosave loses them; the cloud dedupes by seq)."""
    compress: bool = False
    """gzip the payload (MQTT 5 ``content_type`` = ``application/json+gzip``)."""
    command_poll_url: str | None = None
    """Optional HTTPS base URL: fetch pending commands there after each reconnect."""
    device_id: str | None = None
    """The device id the command poll logs in with (the password is the same device secret);
    None: ``username``. On the broker the user name is the battery id (its ACL)."""

    @model_validator(mode="after")
    def _consistent(self) -> MqttUplinkSettings:
        if self.password is not None and self.password_file is not None:
            raise ValueError("set at most one of password and password_file")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self

    def password_value(self) -> str | None:
        """The MQTT password (from ``password_file`` if given)."""
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None:
            return _read_secret(self.password_file, "uplink.password_file")
        return None


class MemoryUplinkSettings(_UplinkCommon):
    """``[uplink] kind = "memory"``: an in-process cloud stand-in (tests and the demo)."""

    kind: Literal["memory"]
    name: str = "default"
    """Name of the ``MemoryCloud`` in this process (``edge_runtime.uplink.memory.cloud(name)``)."""


UplinkSettings = Annotated[
    HttpUplinkSettings | MqttUplinkSettings | MemoryUplinkSettings, Field(discriminator="kind")
]


class LoggingSettings(_Section):
    """``[logging]``: level and format of the runtime's logs (stderr, journald picks them up)."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"
    """``json``: one object per line with ``time``, ``level``, ``logger``, ``message``, extras."""


# ----------------------------------------------------------------------------- the whole file


class EdgeSettings(BaseSettings):
    """Everything one edge runtime (one battery) needs."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        case_sensitive=False,
    )

    battery_id: BatteryId
    topology: BatteryTopology
    chemistry: str = "nmc_lgm50"
    """Built-in cell parameter set of the estimator (``b2l cell`` lists them)."""
    parameter_file: Path | None = None
    """A cell parameter JSON file (``b2l cell identify``); replaces ``chemistry``."""
    reporting_period_s: Annotated[
        float, Field(ge=MIN_REPORTING_PERIOD_S, le=MAX_REPORTING_PERIOD_S)
    ] = 1.0
    """Default period of the BMS's cell reports; a command changes it for a while."""
    link: LinkSettings
    outbox: OutboxSettings = OutboxSettings()
    uplink: UplinkSettings
    logging: LoggingSettings = LoggingSettings()
    status_file: Path | None = None
    """None: next to the outbox, ``<outbox>.status.json``."""
    status_period_s: _PositiveS = 5.0
    eis_timeout_s: _PositiveS = 3600.0
    """An EIS sweep that has not finished after this long fails."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The environment overrides the file (passed as init values)."""
        return (env_settings, init_settings)

    @property
    def status_path(self) -> Path:
        """Where the runtime writes its status JSON."""
        if self.status_file is not None:
            return self.status_file
        return self.outbox.path.with_name(self.outbox.path.name + ".status.json")

    def cell_parameters(self) -> CellParameters:
        """The estimator's cell parameters; ConfigError naming the key if they cannot load."""
        if self.parameter_file is not None:
            try:
                text = self.parameter_file.read_text(encoding="utf-8")
                return CellParameters.model_validate_json(text)
            except OSError as exc:
                raise ConfigError(
                    f"parameter_file: cannot read {self.parameter_file}: {exc}"
                ) from None
            except ValidationError as exc:
                raise ConfigError(
                    f"parameter_file: {self.parameter_file} is not a cell parameter file: "
                    f"{_first_error(exc)}"
                ) from None
        try:
            return load_builtin(self.chemistry)
        except B2LError as exc:
            raise ConfigError(f"chemistry: {exc}") from None


def _read_secret(path: Path, key: str) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc}") from None
    if not value:
        raise ConfigError(f"{key}: {path} is empty")
    return value


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    return f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"


_TAGS = {"can", "serial", "http", "mqtt", "memory"}


def _key(loc: tuple[int | str, ...]) -> str:
    """Dotted key of an error location without the union tag: ``uplink.http.x`` -> ``uplink.x``."""
    parts = [
        str(p)
        for i, p in enumerate(loc)
        if not (i == 1 and loc[0] in ("link", "uplink") and p in _TAGS)
    ]
    return ".".join(parts) or "(file)"


def _format(exc: ValidationError, source: str) -> ConfigError:
    lines = []
    for err in exc.errors():
        msg = err["msg"]
        if err["type"] == "union_tag_invalid" or err["type"] == "union_tag_not_found":
            msg = f"{msg} (kind must be one of: " + (
                "can, serial)" if err["loc"][:1] == ("link",) else "http, mqtt, memory)"
            )
        lines.append(f"  {_key(err['loc'])}: {msg}")
    return ConfigError(f"invalid edge configuration {source}:\n" + "\n".join(lines))


def _check_paths(settings: EdgeSettings) -> None:
    """Files the settings name must exist (checked at start, named by key)."""
    problems: list[str] = []

    def need(key: str, path: Path | None) -> None:
        if path is not None and not path.is_file():
            problems.append(f"  {key}: {path} does not exist or is not a file")

    up = settings.uplink
    if isinstance(up, HttpUplinkSettings):
        need("uplink.ca_file", up.ca_file)
        need("uplink.secret_file", up.secret_file)
    elif isinstance(up, MqttUplinkSettings):
        need("uplink.ca_file", up.ca_file)
        need("uplink.cert_file", up.cert_file)
        need("uplink.key_file", up.key_file)
        need("uplink.password_file", up.password_file)
    need("parameter_file", settings.parameter_file)
    if settings.parameter_file is None and settings.chemistry not in builtin_parameter_sets():
        known = ", ".join(builtin_parameter_sets())
        problems.append(f"  chemistry: no built-in parameter set {settings.chemistry!r} ({known})")
    if isinstance(settings.link, CanLinkSettings) and settings.topology.n_cells > 256:
        problems.append("  topology: a Pillar 2 CAN BMS reports at most 256 cells")
    if problems:
        raise ConfigError("invalid edge configuration:\n" + "\n".join(problems))


def load_settings(
    path: str | os.PathLike[str] | None, *, check_files: bool = True, **overrides: Any
) -> EdgeSettings:
    """Read ``path`` (TOML; None: environment only), apply ``B2L_EDGE_*`` and ``overrides``.

    Raises ConfigError with one line per bad key. ``check_files`` False skips the checks that
    the files the settings name exist (``b2l edge status`` needs no secrets).
    """
    data: dict[str, Any] = {}
    source = "(environment)"
    if path is not None:
        source = f"in {path}"
        try:
            with open(path, "rb") as file:
                data = tomllib.load(file)
        except OSError as exc:
            raise ConfigError(f"cannot read the edge configuration {path}: {exc}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    data.update(overrides)
    try:
        settings = EdgeSettings(**data)
    except ValidationError as exc:
        raise _format(exc, source) from None
    if check_files:
        _check_paths(settings)
    return settings
