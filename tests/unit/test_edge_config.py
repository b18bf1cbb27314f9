"""Edge settings: the example file, environment overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_runtime.config import (
    CanLinkSettings,
    HttpUplinkSettings,
    MqttUplinkSettings,
    SerialLinkSettings,
    load_settings,
)
from twin.errors import ConfigError

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "edge.toml"

MINIMAL = """
battery_id = "B-1"
[topology]
cells_per_module = 4
[link]
kind = "serial"
url = "loop://"
[uplink]
kind = "http"
base_url = "https://cloud.example.org"
device_id = "dev-0001"
secret = "s3cret"
[outbox]
path = "{outbox}"
"""


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.upper().startswith("B2L_EDGE_"):
            monkeypatch.delenv(key)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edge.toml"
    path.write_text(text.replace("{outbox}", str(tmp_path / "o.sqlite")), encoding="utf-8")
    return path


def error_of(path: Path | None, **overrides: object) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(path, **overrides)
    return str(info.value)


def test_the_example_file_is_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "secret"
    secret.write_text("abc\n")
    monkeypatch.setenv("B2L_EDGE_UPLINK__SECRET_FILE", str(secret))
    settings = load_settings(EXAMPLE)
    assert settings.battery_id == "pack-0001"
    assert settings.topology.n_cells == 16
    assert isinstance(settings.link, CanLinkSettings) and settings.link.channel == "can0"
    assert isinstance(settings.uplink, HttpUplinkSettings)
    assert settings.uplink.secret_value() == "abc"
    assert settings.outbox.synchronous == "FULL"
    assert settings.logging.format == "json"


def test_the_example_names_a_missing_secret_file() -> None:
    assert "uplink.secret_file: /etc/b2l/device-secret does not exist" in error_of(EXAMPLE)
    # b2l edge status reads the settings without the files
    assert load_settings(EXAMPLE, check_files=False).status_path.name == "outbox.sqlite.status.json"


def test_environment_overrides_nested_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, MINIMAL)
    monkeypatch.setenv("B2L_EDGE_LINK__URL", "socket://127.0.0.1:5000")
    monkeypatch.setenv("B2L_EDGE_OUTBOX__MAX_BYTES", "100000")
    monkeypatch.setenv("B2L_EDGE_REPORTING_PERIOD_S", "2.5")
    monkeypatch.setenv("b2l_edge_uplink__secret", "from-env")
    settings = load_settings(path)
    assert isinstance(settings.link, SerialLinkSettings)
    assert settings.link.url == "socket://127.0.0.1:5000"
    assert settings.link.baudrate == 115_200  # the rest of the table stays
    assert settings.outbox.max_bytes == 100_000
    assert settings.reporting_period_s == 2.5
    assert isinstance(settings.uplink, HttpUplinkSettings)
    assert settings.uplink.secret_value() == "from-env"
    assert settings.uplink.base_url == "https://cloud.example.org"


def test_the_environment_alone_is_a_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("B2L_EDGE_BATTERY_ID", "B-9")
    monkeypatch.setenv("B2L_EDGE_TOPOLOGY__CELLS_PER_MODULE", "8")
    monkeypatch.setenv("B2L_EDGE_LINK__KIND", "can")
    monkeypatch.setenv("B2L_EDGE_LINK__INTERFACE", "virtual")
    monkeypatch.setenv("B2L_EDGE_UPLINK__KIND", "mqtt")
    monkeypatch.setenv("B2L_EDGE_UPLINK__HOST", "127.0.0.1")
    monkeypatch.setenv("B2L_EDGE_OUTBOX__PATH", str(tmp_path / "o.sqlite"))
    settings = load_settings(None)
    assert settings.battery_id == "B-9" and settings.topology.n_cells == 8
    assert isinstance(settings.link, CanLinkSettings) and settings.link.interface == "virtual"
    assert isinstance(settings.uplink, MqttUplinkSettings)
    assert settings.uplink.clean_start is False and settings.uplink.port == 1883


@pytest.mark.parametrize(
    ("replace", "by", "expected"),
    [
        ('base_url = "https://cloud.example.org"\n', "", "uplink.base_url: Field required"),
        ('kind = "serial"', 'kind = "usb"', "link: Input tag 'usb'"),
        ('kind = "serial"', 'kind = "usb"', "kind must be one of: can, serial"),
        ('kind = "http"', 'kind = "carrier-pigeon"', "kind must be one of: http, mqtt, memory"),
        ('battery_id = "B-1"', 'battery_id = "B 1"', "battery_id: String should match pattern"),
        ('battery_id = "B-1"', 'battery_id = "B-1"\nreportng_period_s = 1', "reportng_period_s: "),
        ('url = "loop://"', 'url = "loop://"\nbaud = 9600', "link.baud: Extra inputs"),
        ("cells_per_module = 4", "cells_per_module = 0", "topology.cells_per_module"),
        ('secret = "s3cret"', "", "uplink: Value error, set exactly one of secret and secret_file"),
        ("[outbox]", "[outbox]\nmax_bytes = 10", "outbox.max_bytes: Input should be greater"),
        ("[outbox]", '[outbox]\nsynchronous = "OFF"', "outbox.synchronous: Input should be"),
        (
            'battery_id = "B-1"',
            'battery_id = "B-1"\nreporting_period_s = 0.0',
            "reporting_period_s",
        ),
        ('battery_id = "B-1"', 'battery_id = "B-1"\nchemistry = "unobtainium"', "chemistry: no"),
        (
            'secret = "s3cret"',
            'secret = "s3cret"\nbackoff_base_s = 10.0\nbackoff_cap_s = 1.0',
            "backoff_cap_s must be >= backoff_base_s",
        ),
    ],
)
def test_errors_name_the_key(tmp_path: Path, replace: str, by: str, expected: str) -> None:
    text = MINIMAL.replace(replace, by, 1)
    assert text != MINIMAL
    message = error_of(write(tmp_path, text))
    assert expected in message, message


def test_several_bad_keys_are_all_listed(tmp_path: Path) -> None:
    text = MINIMAL.replace('url = "loop://"', 'url = ""').replace('device_id = "dev-0001"', "")
    message = error_of(write(tmp_path, text))
    assert "link.url" in message and "uplink.device_id" in message


def test_an_environment_value_of_the_wrong_type_names_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("B2L_EDGE_OUTBOX__MAX_BYTES", "lots")
    assert "outbox.max_bytes" in error_of(write(tmp_path, MINIMAL))


def test_unreadable_or_invalid_files(tmp_path: Path) -> None:
    assert "cannot read the edge configuration" in error_of(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("battery_id = \n")
    assert "is not valid TOML" in error_of(bad)
    bad.write_bytes(b'battery_id = "B-1"\n\xff = 1\n')  # not UTF-8
    assert "is not valid TOML" in error_of(bad)


def test_a_can_link_takes_at_most_256_cells(tmp_path: Path) -> None:
    text = MINIMAL.replace('kind = "serial"\nurl = "loop://"', 'kind = "can"').replace(
        "cells_per_module = 4", "cells_per_module = 300"
    )
    assert "topology: a Pillar 2 CAN BMS reports at most 256 cells" in error_of(
        write(tmp_path, text)
    )


def test_mqtt_secrets_and_certificates(tmp_path: Path) -> None:
    text = MINIMAL.replace(
        'kind = "http"\nbase_url = "https://cloud.example.org"\ndevice_id = "dev-0001"\n'
        'secret = "s3cret"',
        'kind = "mqtt"\nhost = "broker"\ncert_file = "/nonexistent.pem"',
    )
    assert "cert_file and key_file go together" in error_of(write(tmp_path, text))
    pw = tmp_path / "pw"
    pw.write_text("hunter2\n")
    text = text.replace('cert_file = "/nonexistent.pem"', f'password_file = "{pw}"')
    settings = load_settings(write(tmp_path, text))
    assert isinstance(settings.uplink, MqttUplinkSettings)
    assert settings.uplink.password_value() == "hunter2"


def test_cell_parameters_from_a_file(tmp_path: Path) -> None:
    params = tmp_path / "cells.json"
    params.write_text('{"name": 1}')
    text = MINIMAL.replace('battery_id = "B-1"', f'battery_id = "B-1"\nparameter_file = "{params}"')
    settings = load_settings(write(tmp_path, text))
    with pytest.raises(ConfigError, match=r"parameter_file: .* is not a cell parameter file"):
        settings.cell_parameters()
    assert load_settings(write(tmp_path, MINIMAL)).cell_parameters().name
