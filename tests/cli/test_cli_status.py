"""`swapctl status`: the station from its retained topics, once or live, against the daemon."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from controller.cli.status import StationView, render
from simstation.broker import Mosquitto
from tests.cli.test_cli_cmd import swapctl
from tests.rig import rack, running, until
from tests.support import REPO, station_toml


def slot_row(out: str, slot: int) -> str:
    rows = [line for line in out.splitlines() if re.match(rf"^\s*{slot}\s\s", line)]
    assert len(rows) == 1, out
    return rows[0]


@pytest.mark.timeout(60)
async def test_status_once(tmp_path: Path, broker: Mosquitto) -> None:
    async with running(tmp_path, broker, [rack()], robot=True, plc=True) as rig:
        # Slots 1 and 2 switch on once their chargers' minimum off-time from the start has
        # passed, and their state is out: only then is there charging to show.
        pub = rig.station.slot_publisher
        await until(
            lambda: all(
                (s := pub.last(slot)) is not None and s.status == "charging" for slot in (1, 2)
            ),
            what="slots 1 and 2 charging, published",
        )
        code, out, err = await swapctl("status", "--once", "--config", str(rig.config_path))
    assert code == 0, err
    header = out.splitlines()[0]
    assert header.startswith("station t1  ONLINE  mode auto  phase idle"), out
    assert "swap      none" in out
    assert re.search(r"^robot     link ready, idle at \w+, holding nothing$", out, re.MULTILINE), (
        out
    )
    assert re.search(
        r"^slot\s+status\s+pack\s+type\s+SoC %\s+kW\s+max C\s+alarms", out, re.MULTILINE
    )
    # Slots 1 and 2 charge (speed 60): the SoC moves on.
    assert re.match(r"^\s*1\s+charging\s+PK-A\s+STD75\s+9\d\.\d\s", slot_row(out, 1)), out
    assert re.match(r"^\s*2\s+charging\s+PK-B\s+STD75\s+6\d\.\d\s", slot_row(out, 2)), out
    for slot in (3, 4):
        assert " empty " in slot_row(out, slot), out


@pytest.mark.timeout(30)
async def test_status_once_without_a_station_exits_3(tmp_path: Path, broker: Mosquitto) -> None:
    path = tmp_path / "station.toml"
    path.write_text(station_toml(broker, tmp_path / "state"))
    code, out, err = await swapctl("status", "--once", "--timeout", "1", "--config", str(path))
    assert code == 3, (out, err)
    assert out == ""
    assert "no state from swapstation/t1" in err


@pytest.mark.timeout(60)
async def test_status_live_follows_changes(tmp_path: Path, broker: Mosquitto) -> None:
    async with running(tmp_path, broker, [rack()], robot=True, plc=True) as rig:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SWAPSTATION_")}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "controller",
            "status",
            "--config",
            str(rig.config_path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=REPO,
            env=env,
        )
        assert proc.stdout is not None
        seen: list[str] = []

        async def wait_line(pattern: str) -> None:
            assert proc.stdout is not None
            try:
                async with asyncio.timeout(15):
                    while not any(re.search(pattern, line) for line in seen):
                        line = await proc.stdout.readline()
                        assert line, f"swapctl status ended; saw {seen[-20:]}"
                        seen.append(line.decode())
            except TimeoutError:
                raise AssertionError(f"no line matching {pattern!r}; saw {seen[-20:]}") from None

        try:
            await wait_line(r"^\s*2\s+charging\s+PK-B")
            code, _, err = await swapctl(
                "cmd", "--config", str(rig.config_path), "set_slot", "slot=2", "enabled=false"
            )
            assert code == 0, err
            await wait_line(r"^\s*2\s+\w+\s+PK-B\s.*\sdisabled$")
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGINT)
            await asyncio.wait_for(proc.wait(), 10)
        assert proc.returncode == 0
        assert "\x1b" not in "".join(seen)  # not a terminal: frames one after another


def test_render_a_swap_in_progress() -> None:
    view = StationView("pss-0042")
    state = {
        "station": "pss-0042", "mode": "auto", "phase": "storing", "recovering": False,
        "swap": {"swap_id": "6c1d", "vehicle_id": "EV-1", "pack_type": "STD75",
                 "phase": "storing", "started_at": "2026-11-25T20:41:07.2Z",
                 "phase_since": "2026-11-25T20:42:31.0Z", "reserved_slot": 1,
                 "reserved_serial": "PK-A", "free_slot": 4, "pack_out": "PK-OLD",
                 "pack_in": None, "pack_locked": False, "reason": None},
        "blocking": ["slot 4: waiting for the charger", "door \x1b[2Jopen"],
        "alarms": [{"scope": "slot:3", "code": "over_temperature", "severity": "critical",
                    "message": "hottest cell 59.7 C above 55 C", "since": 1.0}],
        "packs_ready": {"STD75": 1}, "io": "ok", "updated_at": "2026-11-25T20:42:31.4Z",
    }  # fmt: skip
    slot3 = {
        "slot": 3, "status": "fault", "stale": True, "stale_reason": "rack offline",
        "pack": {"serial": "PK-00017", "type": "STD75", "soc": 63.4, "soh": 96.0},
        "power_w": 57855.0, "temp_max_c": 59.7, "enabled": True, "tripped": "over_temperature",
        "alarms": [{"code": "over_temperature", "severity": "critical", "message": "hot"}],
    }  # fmt: skip
    assert view.update("status", b"online")
    assert view.update("state", json.dumps(state).encode())
    assert not view.update("state", json.dumps(state).encode())  # no change, no redraw
    assert view.update("slots/3", json.dumps(slot3).encode())
    assert view.update("slots/1", b"not json at all")  # shown as unknown, never a crash
    assert view.update("robot", b'{"link": "syncing", "state": "busy", "position": "between"}')
    lines = render(view)
    text = "\n".join(lines)
    assert lines[0].startswith("station pss-0042  ONLINE  mode auto  phase storing  io ok")
    assert "swap      EV-1 STD75, storing since " in text
    assert "pack out PK-OLD, in -; reserved slot 1 (PK-A), free slot 4" in text
    assert "blocking  slot 4: waiting for the charger\n          door ?[2Jopen" in text
    assert "alarms    critical over_temperature slot:3: hottest cell 59.7 C above 55 C" in text
    assert "ready     STD75 1" in text
    assert "robot     link syncing, busy at between, holding nothing (last known)" in text
    row = slot_row(text, 3).split()
    assert row[:7] == ["3", "fault*", "PK-00017", "STD75", "63.4", "57.9", "59.7"]
    assert "stale: rack offline" in slot_row(text, 3)
    assert "tripped: over_temperature" in slot_row(text, 3)
    assert slot_row(text, 1).split()[:2] == ["1", "?"]
    assert "* stale: the data is not relied on" in text
    assert "\x1b" not in text
    # A cleared retained message removes the slot.
    assert view.update("slots/3", b"")
    assert 3 not in view.slots


def test_render_the_power_limit_and_survive_a_garbled_one() -> None:
    view = StationView("pss-0042")
    state = {
        "station": "pss-0042", "mode": "auto", "phase": "idle", "swap": None,
        "power": {"limit_kw": 300.0, "binding": "grid_operator", "budget_kw": 290.0,
                  "sources": [], "policy": "cost", "price": 1.105, "currency": "CNY"},
    }  # fmt: skip
    assert view.update("state", json.dumps(state).encode())
    assert "power     limit 300 kW (grid_operator), budget 290 kW, policy cost, 1.105 CNY/kWh" in (
        "\n".join(render(view))
    )
    for garbled in ("nonsense", {"limit_kw": True, "budget_kw": "x", "price": [1]}, None):
        assert view.update("state", json.dumps({**state, "power": garbled}).encode())
        text = "\n".join(render(view))
        assert "power     " in text
