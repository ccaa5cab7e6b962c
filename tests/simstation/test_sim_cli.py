"""`swapctl sim`: the simulated station alone, served from a station config for a real daemon."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from controller.config.loader import load_config
from controller.runtime.daemon import Daemon
from controller.runtime.station import Station
from drivers.robot.link import LinkState
from simstation.ptypair import PtyPair
from tests.rig import until
from tests.support import REPO


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(tmp_path: Path, *, rack_port: int, plc_port: int, robot: Path) -> Path:
    path = tmp_path / "station.toml"
    path.write_text(
        f"""station_id = "bench"
profiles_dir = "{REPO / "config" / "profiles"}"
[mqtt]
host = "127.0.0.1"
port = 1
reconnect_min_s = 0.1
reconnect_max_s = 0.5
[storage]
dir = "{tmp_path / "state"}"

[[racks]]
name = "r1"
transport = "tcp"
host = "127.0.0.1"
port = {rack_port}
profile = "simrack"
unit_id = 1
slots = [1, 2, 3, 4]
poll_period_s = 0.2
timeout_max_s = 0.2

[[racks]]
name = "r2"
transport = "rtu"
profile = "simrack-unit"
unit_ids = [1, 2]
slots = [5, 6]
poll_period_s = 0.5
timeout_max_s = 0.1
[racks.serial]
device = "{tmp_path / "rack-r2"}"
baudrate = 19200
parity = "N"

[station_io]
transport = "tcp"
host = "127.0.0.1"
port = {plc_port}
poll_period_s = 0.05
timeout_max_s = 0.1

[robot]
[robot.serial]
device = "{robot}"
baudrate = 115200
parity = "N"
"""
    )
    return path


class SimProcess:
    """`python -m simstation.simcli` (`swapctl sim`) as a child; its output as lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    async def wait_line(
        self,
        predicate: Callable[[str], bool],
        timeout: float = 10.0,  # noqa: ASYNC109 - a deadline for a line to come
        *,
        after: int = 0,
    ) -> str:
        """The first line (from index `after`, already read or new) that matches."""
        for line in self.lines[after:]:
            if predicate(line):
                return line
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while raw := await self.proc.stdout.readline():
                line = raw.decode().rstrip("\n")
                self.lines.append(line)
                if predicate(line):
                    return line
        raise AssertionError(f"the simulator ended; it said {self.lines}")

    async def say(self, command: str) -> str:
        """Send a stdin command; the simulator's answer."""
        assert self.proc.stdin is not None
        mark = len(self.lines)
        self.proc.stdin.write(f"{command}\n".encode())
        await self.proc.stdin.drain()
        return await self.wait_line(lambda line: not _is_status(line), after=mark)


def _is_status(line: str) -> bool:
    return " up " in line and " | " in line


@contextlib.asynccontextmanager
async def _sim(*args: str) -> AsyncIterator[SimProcess]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWAPSTATION_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "simstation.simcli",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=REPO,
        env=env,
    )
    try:
        yield SimProcess(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@contextlib.asynccontextmanager
async def _daemon(config: Path) -> AsyncIterator[Station]:
    daemon = Daemon(load_config(config, environ={}))
    task = asyncio.create_task(daemon.run())
    try:
        await until(lambda: daemon.station is not None or task.done(), what="daemon start")
        assert daemon.station is not None, f"daemon exited with {task.result()}"
        yield daemon.station
    finally:
        if not task.done():
            daemon.request_stop("test")
        async with asyncio.timeout(10):
            assert await task == 0


@pytest.mark.timeout(60)
async def test_sim_serves_a_station_config_to_the_real_daemon(tmp_path: Path) -> None:
    # The robot on a "real serial port": one end of a pty pair the daemon holds the other of.
    cable = PtyPair(tmp_path, "robot-cable")
    await asyncio.to_thread(cable.start)
    try:
        config = _config(
            tmp_path, rack_port=_free_port(), plc_port=_free_port(), robot=cable.controller_end
        )
        async with _sim(
            "--config",
            str(config),
            "--serial",
            f"robot={cable.device_end}",
            "--status-every",
            "0.5",
        ) as sim:
            await sim.wait_line(lambda line: line == "ready")
            said = "\n".join(sim.lines)
            assert "rack r1         Modbus TCP 127.0.0.1:" in said, said
            assert f"Modbus RTU on a pty at {tmp_path / 'rack-r2'}" in said, said
            assert f"robot           serial port {cable.device_end} (115200 8N1)" in said, said
            async with _daemon(config) as station:
                # The daemon reads every slot of both racks, the PLC, and syncs with the robot.
                def slots_read() -> bool:
                    snaps = [station.book.snapshot(r) for r in ("r1", "r2")]
                    return all(s is not None and s.online for s in snaps) and {
                        n for s in snaps if s is not None for n in s.readings
                    } == {1, 2, 3, 4, 5, 6}

                await until(slots_read, what="both racks read")
                snap = station.book.snapshot("r1")
                assert snap is not None
                assert any(r.pack_serial for r in snap.readings.values()), snap
                io, robot = station.io, station.robot
                assert io is not None and robot is not None
                await until(lambda: io.reading is not None, what="station I/O read")
                await until(lambda: robot.state is LinkState.READY, what="robot link ready")

                # Faults from stdin reach the daemon over the real transports.
                assert await sim.say("rack r1 offline") == "rack r1: offline"
                await until(lambda: station.book.rack_offline("r1"), what="r1 offline")
                assert await sim.say("rack r1 online") == "rack r1: online"
                await until(lambda: station.book.rack_online("r1"), what="r1 back")
                answer = await sim.say("vehicle arrive EV-9 STD75 20")
                assert answer == "vehicle EV-9 drives in with VP-EV-9 (STD75, 20 %)"
                await until(
                    lambda: io.reading is not None and io.reading.vehicle_id == "EV-9",
                    what="vehicle id from the PLC",
                )
                assert await sim.say("estop") == "E-stop pressed: the chain is open"
                await until(
                    lambda: io.reading is not None and not io.reading.inputs["estop_ok"],
                    what="E-stop seen",
                )
                assert await sim.say("release") == "E-stop released: the chain is closed"
                await until(
                    lambda: io.reading is not None and io.reading.inputs["estop_ok"],
                    what="E-stop released",
                )
                assert (await sim.say("frobnicate")).startswith("error: unknown command")
                assert (await sim.say("rack r9 offline")).startswith("error: a rack of r1, r2")
            status = await sim.wait_line(lambda line: _is_status(line) and "EV-9" in line)
            assert "r1 up" in status and "robot idle at home" in status, status
            sim.proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(10):
                assert await sim.proc.wait() == 0, sim.lines
            await sim.wait_line(lambda line: line == "stopped")
            assert not any("Traceback" in line for line in sim.lines), sim.lines
    finally:
        cable.stop()
    # The pty it linked for the RTU rack is gone with it.
    assert not (tmp_path / "rack-r2").exists()


@pytest.mark.timeout(30)
async def test_sim_says_plainly_when_a_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        config = _config(tmp_path, rack_port=port, plc_port=_free_port(), robot=tmp_path / "rb")
        started = time.monotonic()
        async with _sim("--config", str(config)) as sim:
            async with asyncio.timeout(20):
                code = await sim.proc.wait()
            await sim.wait_line(lambda line: "cannot listen" in line)
    assert code == 1, sim.lines
    assert f"rack r1: cannot listen on 127.0.0.1:{port}: Address already in use" in sim.lines[0]
    assert time.monotonic() - started < 20
