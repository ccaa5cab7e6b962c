"""`swapctl probe` against simulated racks: reachable with latency, or not."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from simstation.station import SimRackSpec, SimStation
from tests.support import REPO


async def _probe(config: Path) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWAPSTATION_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "controller",
        "probe",
        "--config",
        str(config),
        "--timeout",
        "1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=REPO,
        env=env,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_probe_reports_every_device(tmp_path: Path) -> None:
    sim = SimStation(
        tmp_path,
        [
            SimRackSpec("a", [1, 2, 3, 4]),
            SimRackSpec("b", [5, 6], transport="rtu", profile="simrack-unit"),
        ],
    )
    await sim.start()
    config = tmp_path / "station.toml"
    config.write_text(
        sim.controller_toml(
            station_id="p1", mqtt_host="127.0.0.1", mqtt_port=1, storage=tmp_path / "state"
        )
    )
    try:
        code, out = await _probe(config)
        assert code == 0, out
        lines = out.splitlines()
        assert lines[0].split() == ["device", "address", "result", "latency", "detail"]
        rack_a = next(line for line in lines if line.startswith("rack a "))
        assert "reachable" in rack_a and " ms " in rack_a
        assert "SWAPSIM R8 fw 102 4 slots (configured 4)" in rack_a
        rtu = [line for line in lines if line.startswith("rack b slot")]
        assert len(rtu) == 2 and all("reachable" in line and "heartbeat" in line for line in rtu)
        await sim.racks["a"].go_offline()
        code, out = await _probe(config)
        assert code == 1
        rack_a = next(line for line in out.splitlines() if line.startswith("rack a "))
        assert "UNREACHABLE" in rack_a and "cannot connect" in rack_a
    finally:
        await sim.stop()
