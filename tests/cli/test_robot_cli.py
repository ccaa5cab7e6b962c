"""The robot in the station: `swapctl robot`, `swapctl probe`, the `robot` topic, STOP on exit."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path

from drivers.robot.protocol import MoveArgs, MsgType, RobotState, Target
from simstation.broker import Mosquitto
from simstation.robot import Timing
from simstation.station import SimStation
from tests.rig import until
from tests.support import REPO, Subscriber


async def _swapctl(*args: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWAPSTATION_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "controller",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=REPO,
        env=env,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def _station(tmp_path: Path, **kw: object) -> tuple[SimStation, Path]:
    sim = SimStation(tmp_path, [], robot=True, speed=1000.0, **kw)  # type: ignore[arg-type]
    await sim.start()
    path = tmp_path / "station.toml"
    path.write_text(
        sim.controller_toml(
            station_id="r1", mqtt_host="127.0.0.1", mqtt_port=1, storage=tmp_path / "state"
        )
    )
    return sim, path


async def test_swapctl_robot_status_home_stop(tmp_path: Path) -> None:
    sim, path = await _station(tmp_path)
    try:
        assert sim.robot is not None
        sim.robot.position, sim.robot.metres = Target.BAY, 1.0
        code, out = await _swapctl("robot", "--config", str(path), "status")
        assert code == 0, out
        assert "state      idle, at bay" in out
        code, out = await _swapctl("robot", "--config", str(path), "home")
        assert code == 0, out
        assert "state      idle, at home" in out
        code, out = await _swapctl("robot", "--config", str(path), "stop")
        assert code == 0, out
        assert "state      stopped, at home" in out
        await sim.robot.stop()
        code, out = await _swapctl("robot", "--config", str(path), "status", "--timeout", "1")
        assert code == 1
        assert "no answer within 1 s" in out
    finally:
        await sim.stop()


async def test_probe_reports_the_robot(tmp_path: Path) -> None:
    sim, path = await _station(tmp_path)
    try:
        code, out = await _swapctl("probe", "--config", str(path), "--timeout", "2")
        assert code == 0, out
        line = next(ln for ln in out.splitlines() if ln.startswith("robot "))
        assert "reachable" in line and " ms " in line and "idle at home" in line
    finally:
        await sim.stop()


async def test_daemon_publishes_the_robot_and_stops_it_on_exit(
    tmp_path: Path, broker: Mosquitto
) -> None:
    slow = Timing(speed_m_s=0.001)
    sim = SimStation(tmp_path, [], robot=True, speed=1.0, robot_timing=slow)
    await sim.start()
    path = tmp_path / "station.toml"
    path.write_text(
        sim.controller_toml(
            station_id="r1", mqtt_host=broker.host, mqtt_port=broker.port, storage=tmp_path / "st"
        )
    )
    from controller.config.loader import load_config
    from controller.runtime.daemon import Daemon

    daemon = Daemon(load_config(path, environ={}))
    task = asyncio.create_task(daemon.run())
    try:
        with Subscriber(broker, "swapstation/r1/robot") as sub:
            line = await asyncio.to_thread(sub.wait_for, lambda s: '"link":"ready"' in s)
            state = json.loads(line.partition(" ")[2])
            assert state["state"] == "idle" and state["position"] == "home"
        assert daemon.station is not None and daemon.station.robot is not None
        robot = daemon.station.robot
        move = asyncio.create_task(robot.command(MsgType.MOVE, MoveArgs(Target.BAY)))
        assert sim.robot is not None
        await until(lambda: sim.robot is not None and sim.robot.state is RobotState.BUSY)
        # The job that sent the move is cancelled first (as the daemon's jobs are on a stop):
        # the robot is still moving, and the link knows it may be.
        move.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await move
        assert robot.busy
        daemon.request_stop("test")
        assert await asyncio.wait_for(task, 10) == 0
        # The orderly stop halted the moving robot.
        assert sim.robot.state is RobotState.STOPPED
    finally:
        if not task.done():
            daemon.request_stop("test")
            await asyncio.wait_for(task, 10)
        await sim.stop()
