"""The Pillar 1 simulator's TCP line bound to a chosen address (``tcp:HOST:PORT``).

In a container the simulator listens on ``tcp:0.0.0.0:5000`` so the edge of another container
reaches it by service name. Here the same bind is checked on this machine, and a client connects
over 127.0.0.1 only (never another interface): it reads the BMS hello, the real protocol.
"""

from __future__ import annotations

import socket
import time

import pytest
import serial

from simulators.serial_bms import (
    ANY_HOST,
    LOOPBACK_HOST,
    SerialBmsSimulator,
    TcpLink,
    open_link,
    parse_tcp_spec,
)
from twin.protocols.serial_codec import Frame, FrameDecoder, Status

pytestmark = pytest.mark.hil

WALL_TIMEOUT_S = 10.0


def _bound_address(link: TcpLink) -> tuple[str, int]:
    host, port = link._server.getsockname()[:2]  # the listening socket, as the kernel has it
    return str(host), int(port)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("tcp", (LOOPBACK_HOST, 0)),
        ("tcp:0", (LOOPBACK_HOST, 0)),
        ("tcp:5000", (LOOPBACK_HOST, 5000)),
        ("tcp:0.0.0.0:5000", (ANY_HOST, 5000)),
        ("tcp:127.0.0.1:5001", (LOOPBACK_HOST, 5001)),
    ],
)
def test_tcp_specs_parse_to_a_bind_address_and_port(spec: str, expected: tuple[str, int]) -> None:
    assert parse_tcp_spec(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tcp::5000", "give tcp:PORT or tcp:HOST:PORT"),
        ("tcp:sim-serial:5000", "'sim-serial' is not an IPv4 address"),
        ("tcp:[::]:5000", "is not an IPv4 address"),
        ("tcp:0.0.0.0:65536", "TCP port 65536 is not in 0..65535"),
        ("tcp:0.0.0.0:x", "'x' is not a TCP port"),
    ],
)
def test_bad_tcp_specs_are_refused_with_the_reason(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        open_link(spec)


def test_the_default_stays_on_loopback() -> None:
    link = open_link("tcp:0")
    try:
        assert isinstance(link, TcpLink)
        assert _bound_address(link)[0] == LOOPBACK_HOST
        assert link.address == f"socket://127.0.0.1:{link.port}"
    finally:
        link.close()


def test_bound_to_all_interfaces_a_loopback_client_reads_the_hello() -> None:
    link = open_link(f"tcp:{ANY_HOST}:0")
    assert isinstance(link, TcpLink)
    sim = SerialBmsSimulator(link, cells_in_series=4, seed=3)
    try:
        host, port = _bound_address(link)
        assert (host, port) == (ANY_HOST, link.port) and port > 0
        # where a client on this host opens it: loopback, not the wildcard
        assert link.address == f"socket://{LOOPBACK_HOST}:{port}"
        client = serial.serial_for_url(link.address, timeout=0.05)
        try:
            peer = client._socket.getpeername()[:2]  # pyserial's socket:// transport
            assert peer == (LOOPBACK_HOST, port)
            deadline = time.monotonic() + WALL_TIMEOUT_S
            while not link.connected:  # the simulator takes the peer when it polls
                assert time.monotonic() < deadline, "the simulator never accepted the client"
                time.sleep(0.01)
            decoder = FrameDecoder()
            statuses: list[Frame] = []
            now = 0.0
            while not statuses:
                assert time.monotonic() < deadline, "no STATUS hello over the TCP line"
                now += 0.5
                sim.run(now)
                for item in decoder.feed(client.read(4096)):
                    if isinstance(item, Frame) and isinstance(item.message, Status):
                        statuses.append(item)
            assert statuses[0].seq == 0  # the boot hello, as on a real UART
            assert isinstance(statuses[0].message, Status)
        finally:
            client.close()
    finally:
        sim.close()
        link.close()


def test_a_second_client_waits_while_the_first_is_the_peer() -> None:
    link = TcpLink(ANY_HOST, 0)
    try:
        first = socket.create_connection((LOOPBACK_HOST, link.port), timeout=2.0)
        second = socket.create_connection((LOOPBACK_HOST, link.port), timeout=2.0)
        try:
            deadline = time.monotonic() + WALL_TIMEOUT_S
            while not link.connected:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            link.write(b"\x00hello")
            first.settimeout(2.0)
            assert first.recv(16) == b"\x00hello"
            second.settimeout(0.2)
            with pytest.raises(TimeoutError):
                second.recv(16)  # one peer at a time, like a UART
        finally:
            first.close()
            second.close()
    finally:
        link.close()


def test_the_command_line_binds_as_told_and_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    from b2l.cli import main

    command = ["sim", "pack", "--serial", "tcp:0.0.0.0:0", "--cells", "4", "--duration", "2s"]
    code = main([*command, "--current", "1.0", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    where = out.splitlines()[0]
    assert where.startswith("Pillar 1 BMS on socket://127.0.0.1:"), where
    port = where.rpartition(":")[2]
    assert f"b2l sim: listening on 0.0.0.0:{port} (not only loopback)" in err
    # a malformed bind address is a clear error, not a traceback
    assert main(["sim", "pack", "--serial", "tcp:sim-serial:5000", "--duration", "1s"]) == 1
    assert "'sim-serial' is not an IPv4 address" in capsys.readouterr().err
