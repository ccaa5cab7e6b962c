"""`swapctl probe` against simulated racks and PLC: reachable with latency, or not."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from drivers.modbus.ioprofile import REQUIRED_COILS, load_io_profile
from simstation.charger import SimPack
from simstation.clock import SimClock
from simstation.plc import SimPlc, SimVehicle
from simstation.station import SimRackSpec, SimStation
from tests.peers.rack import PeerRack
from tests.support import REPO

PROFILES = REPO / "config" / "profiles"


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


async def test_probe_reads_the_station_io(tmp_path: Path) -> None:
    plc = SimPlc(load_io_profile(PROFILES / "simplc.toml"), clock=SimClock(100.0))
    port = await plc.start_tcp("127.0.0.1", 0)
    plc.arrive(SimVehicle("EV-4711", SimPack("PK-0001"), positioning_s=0.0, power_down_s=0.0))
    config = tmp_path / "station.toml"
    config.write_text(
        f'station_id = "p2"\nprofiles_dir = "{PROFILES}"\n[storage]\ndir = "{tmp_path}"\n'
        f'[station_io]\ntransport = "tcp"\nhost = "127.0.0.1"\nport = {port}\nunit_id = 1\n'
        "timeout_min_s = 0.02\ntimeout_max_s = 0.2\n"
    )
    try:
        code, out = await _probe(config)
        assert code == 0, out
        lines = out.splitlines()
        assert lines[0].split() == ["device", "address", "result", "latency", "detail"]
        io = next(line for line in lines if line.startswith("station I/O "))
        assert f"tcp 127.0.0.1:{port} unit 1" in io
        assert "reachable" in io and "UNREACHABLE" not in io and " ms " in io
        inputs = io.split("inputs ", 1)[1].split(";", 1)[0].split()
        assert {"vehicle_present=1", "estop_ok=1", "lift_down=1", "lift_up=0"} <= set(inputs)
        assert len(inputs) == len(plc.profile.discrete_inputs)
        coils = io.split("coils ", 1)[1].split(";", 1)[0].split()
        assert coils == [f"{name}=0" for name in plc.profile.coils]
        assert set(REQUIRED_COILS) <= {c.split("=")[0] for c in coils}
        assert "; vehicle EV-4711; heartbeat " in io
        assert io.rsplit("heartbeat ", 1)[1].isdigit()

        await plc.go_offline()
        code, out = await _probe(config)
        assert code == 1, out
        io = next(line for line in out.splitlines() if line.startswith("station I/O "))
        assert "UNREACHABLE" in io and "cannot connect" in io
        assert "Traceback" not in out
    finally:
        await plc.stop()


# --- against the independent peer rack (tests/peers/rack.py) -------------------------------------


def _peer_config(tmp_path: Path, port: int, slots: int) -> Path:
    config = tmp_path / "station.toml"
    config.write_text(
        f'station_id = "p3"\nprofiles_dir = "{PROFILES}"\n[storage]\ndir = "{tmp_path}"\n'
        f'[[racks]]\nname = "p"\ntransport = "tcp"\nhost = "127.0.0.1"\nport = {port}\n'
        f"unit_id = 1\nslots = {list(range(1, slots + 1))}\n"
    )
    return config


async def test_probe_reads_every_block_the_poller_will_read(tmp_path: Path) -> None:
    """A rack with 8 slots configured as 10: not ready, and no pymodbus chatter."""
    with PeerRack(8) as rack:
        code, out = await _probe(_peer_config(tmp_path, rack.start(), 10))
    assert code == 1, out
    line = next(line for line in out.splitlines() if line.startswith("rack p "))
    assert "NOT READY" in line and "PEERRACK P4 fw 101 8 slots (configured 10)" in line
    assert "the rack reports 8 slots, 10 are configured" in line
    assert "(slots 9-10): the device answers illegal data address (exception 02)" in line, line
    assert "0x" not in out and ">>>" not in out and "Traceback" not in out, out


async def test_a_rack_answering_an_exception_is_not_unreachable(tmp_path: Path) -> None:
    with PeerRack(2) as rack:
        port = rack.start()
        rack.refuse_reads = 4
        code, out = await _probe(_peer_config(tmp_path, port, 2))
    assert code == 1, out
    line = next(line for line in out.splitlines() if line.startswith("rack p "))
    assert "NOT READY" in line and "UNREACHABLE" not in line, line
    assert "answers device failure (exception 04)" in line, line
    assert "not answering" not in line and "0x" not in out, out


async def test_probe_is_ready_when_every_block_answers(tmp_path: Path) -> None:
    with PeerRack(10) as rack:
        code, out = await _probe(_peer_config(tmp_path, rack.start(), 10))
    assert code == 0, out
    line = next(line for line in out.splitlines() if line.startswith("rack p "))
    assert "reachable" in line and "10 slots (configured 10)" in line
