"""sd_notify against a fake notify socket: a filesystem path and an abstract `@` name."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.config.loader import load_config
from controller.runtime.daemon import Daemon
from controller.runtime.sdnotify import Notifier
from simstation.broker import Mosquitto
from tests.support import DaemonProcess, Subscriber, station_toml


class FakeNotifySocket:
    """What systemd listens on: a datagram socket, by path or abstract name."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + address[1:].encode() if address.startswith("@") else address)
        self.messages: list[str] = []

    def close(self) -> None:
        self.sock.close()

    def receive_until(self, wanted: str, timeout: float = 10.0) -> list[str]:
        """Collect datagrams until one contains the line `wanted`."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {wanted!r} within {timeout} s; got {self.messages}")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            self.messages.append(data)
            if wanted in data.split("\n"):
                return self.messages


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FakeNotifySocket]:
    name = (
        f"@swapstation-test-{uuid.uuid4().hex}"
        if request.param == "abstract"
        else str(tmp_path / "notify.sock")
    )
    fake = FakeNotifySocket(name)
    yield fake
    fake.close()


def test_notifier_sends_each_message_as_one_datagram(notify_socket: FakeNotifySocket) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": notify_socket.address})
    assert notifier.enabled
    assert notifier.ready("2 racks online")
    assert notifier.watchdog()
    assert notifier.status("line one\nline two")
    assert notifier.stopping()
    notifier.close()
    notifier.close()  # idempotent
    got = [notify_socket.sock.recv(4096).decode() for _ in range(4)]
    assert got == [
        "READY=1\nSTATUS=2 racks online",
        "WATCHDOG=1",
        "STATUS=line one line two",
        "STOPPING=1",
    ]


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.ready()
    assert notifier.watchdog_interval is None


def test_send_failure_is_not_an_exception(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert notifier.ready() is False
    notifier.close()


@pytest.mark.parametrize(
    ("env", "interval"),
    [
        ({"WATCHDOG_USEC": "4000000"}, 2.0),
        ({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}, 2.0),
        ({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_interval_is_half_the_timeout_for_our_pid(
    env: dict[str, str], interval: float | None
) -> None:
    assert Notifier({"NOTIFY_SOCKET": "/x", **env}).watchdog_interval == interval


@pytest.mark.timeout(30)
def test_daemon_ready_watchdog_stopping(
    tmp_path: Path, broker: Mosquitto, notify_socket: FakeNotifySocket
) -> None:
    path = tmp_path / "station.toml"
    path.write_text(station_toml(broker, tmp_path / "state"))
    env = {"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": "200000"}
    with Subscriber(broker, "swapstation/t1/status") as sub, DaemonProcess(path, env=env) as daemon:
        first = notify_socket.receive_until("READY=1")
        assert any(m.startswith("READY=1\nSTATUS=station t1") for m in first)
        sub.wait_line("swapstation/t1/status online")
        # The watchdog is pinged every 0.1 s (half of WATCHDOG_USEC) while the loop is alive.
        for _ in range(3):
            notify_socket.messages.clear()
            notify_socket.receive_until("WATCHDOG=1", timeout=2)
        daemon.signal(signal.SIGTERM)
        notify_socket.receive_until("STOPPING=1")
        assert daemon.wait(timeout=10) == 0


class _StalledDaemon(Daemon):
    async def _control_loop(self) -> None:
        self._last_tick = asyncio.get_running_loop().time()
        await asyncio.Event().wait()  # the control loop hangs without ticking


async def test_watchdog_is_withheld_when_the_control_loop_stalls(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeNotifySocket(str(tmp_path / "notify.sock"))
    fake.sock.setblocking(False)
    path = tmp_path / "station.toml"
    path.write_text(station_toml(None, tmp_path / "state"))
    notifier = Notifier({"NOTIFY_SOCKET": fake.address, "WATCHDOG_USEC": "100000"})
    daemon = _StalledDaemon(load_config(path, environ={}), notifier=notifier)
    runner = asyncio.create_task(daemon.run())
    loop = asyncio.get_running_loop()
    pings: list[float] = []
    started = loop.time()
    while loop.time() - started < 1.5:
        try:
            data = await asyncio.wait_for(loop.sock_recv(fake.sock, 4096), 0.1)
        except TimeoutError:
            continue
        if data == b"WATCHDOG=1":
            pings.append(loop.time() - started)
    daemon.request_stop("test")
    assert await asyncio.wait_for(runner, 10) == 0
    fake.close()
    # Pings stop within a few control periods of the stall, and the stall is logged.
    assert pings, "the watchdog was never pinged"
    assert max(pings) < 0.6
    assert "control loop stalled: withholding the watchdog ping" in caplog.text
