"""Daemon lifecycle and MQTT presence, against a real private mosquitto."""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import subprocess
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from controller.config.loader import load_config
from controller.runtime.daemon import EXIT_CONFIG, EXIT_FAILURE, Daemon
from simstation.broker import Mosquitto
from tests.support import DaemonProcess, Subscriber, station_toml

STATUS = "swapstation/t1/status"


def _config(tmp_path: Path, broker: Mosquitto | None, **kw: Any) -> Path:
    path = tmp_path / "station.toml"
    path.write_text(station_toml(broker, tmp_path / "state", **kw))
    return path


@pytest.mark.timeout(30)
def test_sigterm_stops_within_5s_and_publishes_offline(tmp_path: Path, broker: Mosquitto) -> None:
    with Subscriber(broker, STATUS) as sub, DaemonProcess(_config(tmp_path, broker)) as daemon:
        sub.wait_line(f"{STATUS} online")
        started = time.monotonic()
        daemon.signal(signal.SIGTERM)
        code = daemon.wait(timeout=10)
        elapsed = time.monotonic() - started
        sub.wait_line(f"{STATUS} offline")
        assert code == 0, daemon.log()
        assert elapsed < 5.0
        log = daemon.log()
        assert "SIGTERM received: stopping" in log
        assert "stopped (exit code 0)" in log
    # The journal was checkpointed and closed: no WAL left behind.
    assert (tmp_path / "state" / "journal.sqlite3").exists()
    assert not (tmp_path / "state" / "journal.sqlite3-wal").exists()


@pytest.mark.timeout(30)
def test_sigint_is_an_orderly_stop_too(tmp_path: Path, broker: Mosquitto) -> None:
    with Subscriber(broker, STATUS) as sub, DaemonProcess(_config(tmp_path, broker)) as daemon:
        sub.wait_line(f"{STATUS} online")
        daemon.signal(signal.SIGINT)
        assert daemon.wait(timeout=10) == 0
        sub.wait_line(f"{STATUS} offline")


@pytest.mark.timeout(30)
def test_sigkill_delivers_the_will_to_an_independent_subscriber(
    tmp_path: Path, broker: Mosquitto
) -> None:
    with Subscriber(broker, STATUS) as sub, DaemonProcess(_config(tmp_path, broker)) as daemon:
        sub.wait_line(f"{STATUS} online")
        daemon.signal(signal.SIGKILL)
        daemon.wait(timeout=5)
        sub.wait_line(f"{STATUS} offline", timeout=5)
    # A late subscriber sees the retained Will too.
    with Subscriber(broker, STATUS) as late:
        late.wait_line(f"{STATUS} offline", timeout=5)


@pytest.mark.timeout(40)
def test_broker_restart_then_online_again(tmp_path: Path, broker: Mosquitto) -> None:
    with DaemonProcess(_config(tmp_path, broker)) as daemon:
        with Subscriber(broker, STATUS) as sub:
            sub.wait_line(f"{STATUS} online")
        broker.restart()
        with Subscriber(broker, STATUS) as sub:
            sub.wait_line(f"{STATUS} online", timeout=15)
        # And again: the daemon survives repeated outages.
        broker.kill()
        broker.start()
        with Subscriber(broker, STATUS) as sub:
            sub.wait_line(f"{STATUS} online", timeout=15)
        assert "reconnecting in" in daemon.log()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=10) == 0


@pytest.mark.timeout(30)
def test_runs_without_a_broker_and_stops_promptly(tmp_path: Path) -> None:
    # Nothing listens on port 1: the daemon keeps retrying and still stops in time.
    with DaemonProcess(_config(tmp_path, None)) as daemon:
        deadline = time.monotonic() + 10
        while "reconnecting in" not in daemon.log():
            assert time.monotonic() < deadline, daemon.log()
            time.sleep(0.05)
        started = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=10) == 0
        assert time.monotonic() - started < 5.0


def test_invalid_config_exits_78_without_restart_loop(tmp_path: Path) -> None:
    path = tmp_path / "station.toml"
    path.write_text('station_id = "x"\n[mqtt]\nport = 0\n')
    with DaemonProcess(path) as daemon:
        assert daemon.wait(timeout=20) == EXIT_CONFIG
        assert f"{path}: mqtt.port: must be >= 1 (got 0)" in daemon.log()


async def test_unusable_storage_fails_with_cause(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    path = tmp_path / "station.toml"
    path.write_text(station_toml(None, blocker / "state"))
    code = await asyncio.wait_for(Daemon(load_config(path, environ={})).run(), 10)
    assert code == EXIT_FAILURE
    assert "cannot open journal" in caplog.text


class _DyingDaemon(Daemon):
    def _jobs(self) -> dict[str, Coroutine[Any, Any, None]]:
        async def boom() -> None:
            await asyncio.sleep(0.2)
            raise RuntimeError("sensor bus exploded")

        return {**super()._jobs(), "boom": boom()}


async def test_a_dying_task_takes_the_daemon_down_with_its_cause(
    tmp_path: Path, broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    path = _config(tmp_path, broker)
    with Subscriber(broker, STATUS) as sub:
        code = await asyncio.wait_for(_DyingDaemon(load_config(path, environ={})).run(), 10)
        assert code == EXIT_FAILURE
        assert "RuntimeError: sensor bus exploded (in daemon task 'boom')" in caplog.text
        # Even on a crash the station says it is offline.
        await asyncio.to_thread(sub.wait_line, f"{STATUS} offline")


@pytest.mark.timeout(30)
def test_password_never_appears_in_logs(tmp_path: Path) -> None:
    password = "Pa55-w0rd-never-logged"
    passwd = tmp_path / "passwd"
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    subprocess.run(
        [tool, "-c", "-b", str(passwd), "station", password], check=True, capture_output=True
    )
    passwd.chmod(0o644)
    with Mosquitto(
        tmp_path / "broker", allow_anonymous=False, extra_config=f"password_file {passwd}\n"
    ) as auth_broker:
        path = _config(tmp_path, auth_broker, mqtt_extra='username = "station"')
        env = {"SWAPSTATION_MQTT__PASSWORD": password}
        with (
            Subscriber(auth_broker, STATUS, "-u", "station", "-P", password) as sub,
            DaemonProcess(path, env=env) as daemon,
        ):
            sub.wait_line(f"{STATUS} online")
            daemon.signal(signal.SIGTERM)
            assert daemon.wait(timeout=10) == 0
            log = daemon.log()
        # A wrong password: the daemon logs the refusal, not the password.
        with DaemonProcess(
            path,
            env={"SWAPSTATION_MQTT__PASSWORD": password + "x"},
            log_path=tmp_path / "wrong.log",
        ) as daemon:
            deadline = time.monotonic() + 10
            while "reconnecting in" not in daemon.log():
                assert time.monotonic() < deadline, daemon.log()
                time.sleep(0.05)
            daemon.signal(signal.SIGTERM)
            daemon.wait(timeout=10)
            wrong_log = daemon.log()
    assert "connected to broker" in log
    assert password not in log
    assert password not in wrong_log
    assert "Not authorized" in wrong_log or "not authorised" in wrong_log.lower()
