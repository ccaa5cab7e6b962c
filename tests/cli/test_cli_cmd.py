"""`swapctl cmd`: a command over MQTT v5 request/response, against the real daemon."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from controller.cli.cmd import build_request
from controller.errors import UsageError
from simstation.broker import Mosquitto
from tests.rig import rack, running, until
from tests.support import REPO, station_toml


async def swapctl(*args: str, timeout: float = 30) -> tuple[int, str, str]:  # noqa: ASYNC109
    """`swapctl ARGS` as a child process, without blocking the loop the daemon runs in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWAPSTATION_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "controller",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.timeout(60)
async def test_cmd_against_the_daemon(tmp_path: Path, broker: Mosquitto) -> None:
    async with running(tmp_path, broker, [rack()], robot=True, plc=True) as rig:
        config = str(rig.config_path)

        code, out, err = await swapctl("cmd", "--config", config, "ping")
        assert code == 0, err
        assert out.startswith("done: pong"), out

        code, out, err = await swapctl("cmd", "--config", config, "--json", "--id", "r-17", "ping")
        assert code == 0, err
        reply = json.loads(out)
        assert reply["id"] == "r-17" and reply["ok"] is True and reply["code"] == "done"

        # Nothing to reset while idle: rejected, and said why.
        code, out, err = await swapctl("cmd", "--config", config, "reset_fault")
        assert code == 1, (out, err)
        assert out.startswith("rejected: "), out

        control = rig.station.control
        assert 2 not in control.disabled_slots
        code, out, err = await swapctl(
            "cmd", "--config", config, "set_slot", "slot=2", "enabled=false"
        )
        assert code == 0, (out, err)
        assert out.startswith("done"), out
        await until(lambda: 2 in control.disabled_slots, what="slot 2 disabled")

        # The same id again is not run again (and still ok: it was done).
        code, out, _ = await swapctl(
            "cmd", "--config", config, "--id", "once", "set_slot", "slot=2", "enabled=true"
        )
        assert code == 0
        assert 2 not in control.disabled_slots
        code, out, _ = await swapctl(
            "cmd", "--config", config, "--id", "once", "set_slot", "slot=2", "enabled=false"
        )
        assert code == 0 and out.startswith("duplicate"), out
        assert 2 not in control.disabled_slots


@pytest.mark.timeout(30)
async def test_usage_errors_exit_2_before_sending(tmp_path: Path, broker: Mosquitto) -> None:
    path = tmp_path / "station.toml"
    path.write_text(station_toml(broker, tmp_path / "state"))
    cases = {
        ("nosuch",): "unknown command 'nosuch' (known: start_swap vehicle_id=TEXT",
        ("set_slot", "slot=two", "enabled=false"): "set_slot slot: Input should be a valid",
        ("set_slot", "slot=2"): "set_slot enabled: Field required",
        ("set_slot", "slot=2", "enabled=false", "colour=red"): "set_slot has no argument 'colour'",
        ("ping", "id=x"): "id is set by swapctl",
        ("ping", "oops"): "'oops': arguments are written key=value",
        ("recover", "decision=later"): "recover decision: Input should be 'resume', 'abort'",
    }
    for words, message in cases.items():
        code, out, err = await swapctl("cmd", "--config", str(path), *words)
        assert code == 2, (words, out, err)
        assert message in err, (words, err)
        assert out == ""
    code, _, err = await swapctl("cmd", "--config", str(path), "--id", "no spaces", "ping")
    assert code == 2 and "--id: String should match pattern" in err, err


@pytest.mark.timeout(30)
async def test_no_daemon_exits_3_within_the_timeout(tmp_path: Path, broker: Mosquitto) -> None:
    path = tmp_path / "station.toml"
    path.write_text(station_toml(broker, tmp_path / "state"))
    started = time.monotonic()
    code, out, err = await swapctl("cmd", "--config", str(path), "--timeout", "1", "ping")
    took = time.monotonic() - started
    assert code == 3, (out, err)
    assert "no reply from swapstation/t1 within 1 s" in err
    assert took < 1 + 4, took  # the timeout, plus the interpreter's start


@pytest.mark.timeout(30)
async def test_unreachable_broker_exits_3(tmp_path: Path, broker: Mosquitto) -> None:
    path = tmp_path / "station.toml"
    path.write_text(station_toml(broker, tmp_path / "state"))
    port = str(broker.port)
    broker.stop()
    code, _, err = await swapctl("cmd", "--config", str(path), "--port", port, "ping")
    assert code == 3
    assert f"broker 127.0.0.1:{port}:" in err, err


def test_arguments_are_typed_by_the_command() -> None:
    at = datetime(2030, 1, 1, tzinfo=UTC)
    body = build_request(
        "set_slot", ["slot=3", "enabled=false"], ident="r-1", expires_at=at, by="op"
    )
    assert body == {
        "id": "r-1",
        "expires_at": "2030-01-01T00:00:00Z",
        "by": "op",
        "slot": 3,
        "enabled": False,
    }
    body = build_request(
        "start_swap", ["vehicle_id=123", "pack_type=STD75"], ident="r-2", expires_at=at, by=None
    )
    assert body["vehicle_id"] == "123"  # a word that looks like a number stays text for text
    body = build_request("abort", ["reason=door jam", "by=alice"], ident="r", expires_at=at, by="x")
    assert body["reason"] == "door jam" and body["by"] == "alice"
    with pytest.raises(UsageError, match="enabled is given twice"):
        build_request("set_slot", ["enabled=1", "enabled=0"], ident="r", expires_at=at, by=None)
