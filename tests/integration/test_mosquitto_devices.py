"""Per-device MQTT credentials and the deployment's ACL on a real Mosquitto.

A device logs in with its battery id and its device secret (the line ``b2l cloud create-device
--mosquitto-passwd`` writes); the ACL of ``docker/mosquitto/acl`` lets it publish only its own
uplink topics and read only its own commands.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cloud.security.mosquitto import merge_password_file, password_hash, verify_password
from hil.services import MosquittoServer

pytestmark = pytest.mark.integration

ACL = (Path(__file__).resolve().parents[2] / "docker" / "mosquitto" / "acl").read_text()


def test_hash_format_and_verification() -> None:
    stored = password_hash("s3cret", salt=b"0123456789ab")
    assert stored.startswith("$7$101$MDEyMzQ1Njc4OWFi$")
    assert verify_password("s3cret", stored)
    assert not verify_password("s3cret!", stored)
    assert not verify_password("s3cret", "$6$abc$def")
    assert password_hash("s3cret") != password_hash("s3cret")  # salted


def test_merge_keeps_other_users(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    merge_password_file(path, "B-1", "one")
    merge_password_file(path, "B-2", "two")
    merge_password_file(path, "B-1", "uno")
    lines = dict(line.split(":", 1) for line in path.read_text().splitlines())
    assert set(lines) == {"B-1", "B-2"}
    assert verify_password("uno", lines["B-1"]) and verify_password("two", lines["B-2"])
    assert path.stat().st_mode & 0o077 == 0o040  # not world-readable


def test_a_device_reaches_only_its_own_topics(
    make_mosquitto_server: Callable[..., MosquittoServer],
    mqtt_client_factory: Callable[..., Any],
) -> None:
    broker = make_mosquitto_server(
        allow_anonymous=False, users={"cloud": "cloud-password"}, acl=ACL
    )
    merge_password_file(broker.password_file, "B-1", "secret-one")
    merge_password_file(broker.password_file, "B-2", "secret-two")
    broker.reload()
    time.sleep(0.5)

    cloud = mqtt_client_factory(broker, username="cloud", password="cloud-password")
    assert not cloud.connect().is_failure
    cloud.subscribe("b2l/v1/+/telemetry")

    wrong = mqtt_client_factory(broker, username="B-1", password="secret-two")
    assert wrong.connect().is_failure  # another device's secret does not open B-1
    anonymous = mqtt_client_factory(broker)
    assert anonymous.connect().is_failure

    device = mqtt_client_factory(broker, username="B-1", password="secret-one")
    assert not device.connect().is_failure
    device.subscribe("b2l/v1/+/commands")  # granted only for its own battery
    device.publish("b2l/v1/B-2/telemetry", b"forged")
    cloud.assert_no_message(0.5)
    device.publish("b2l/v1/B-1/telemetry", b"own")
    message = cloud.expect_message()
    assert (message.topic, message.payload) == ("b2l/v1/B-1/telemetry", b"own")

    cloud.publish("b2l/v1/B-2/commands", b"not for B-1")
    device.assert_no_message(0.5)
    cloud.publish("b2l/v1/B-1/commands", b"for B-1")
    assert device.expect_message().payload == b"for B-1"


def test_create_device_writes_the_broker_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cloud.db'}"
    env = {**os.environ, "B2L_OPERATOR_PASSWORD": "bench-Operator-1"}
    b2l = [sys.executable, "-m", "b2l.cli"]
    subprocess.run(
        [*b2l, "hil", "provision", "--battery", "B-7", "--database-url", url],
        check=True,
        capture_output=True,
        env=env,
    )
    passwd = tmp_path / "passwd"
    passwd.write_text("cloud:$7$101$x$y\n")
    done = subprocess.run(
        [*b2l, "cloud", "create-device", "B-7", "--database-url", url, "--json",
         "--mosquitto-passwd", str(passwd)],
        check=True,
        capture_output=True,
        text=True,
    )  # fmt: skip
    secret = json.loads(done.stdout)["secret"]
    lines = dict(line.split(":", 1) for line in passwd.read_text().splitlines())
    assert lines["cloud"] == "$7$101$x$y"  # the other users stay
    assert verify_password(secret, lines["B-7"])
    assert secret not in passwd.read_text()
