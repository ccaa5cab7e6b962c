"""Station I/O (the station PLC) against the simulated PLC over Modbus TCP."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from controller.config.model import StationConfig
from controller.runtime.devices import Links, build_station_io
from drivers.errors import CommandNotAppliedError, SpecError
from drivers.modbus.ioprofile import (
    REQUIRED_COILS,
    REQUIRED_INPUTS,
    IoProfile,
    load_io_profile,
)
from drivers.modbus.link import LinkParams, ModbusLink, TcpParams
from drivers.modbus.profile import markdown_table
from drivers.stationio import IoReading, IoSnapshot, StationIoDriver, StationIoPoller
from simstation.charger import SimPack
from simstation.clock import SimClock
from simstation.plc import SimPlc, SimVehicle
from simstation.robot import Vehicle
from tests.rig import until
from tests.support import REPO

PROFILES = REPO / "config" / "profiles"
PROFILE = PROFILES / "simplc.toml"
DOC = REPO / "docs" / "register-map.md"
SPEED = 100.0  # simulated seconds per real second: 20 s of positioning take 0.2 s
POLL_S = 0.01
SLACK_S = 0.5  # how much later than the simulated event a reading may show it


def _profile() -> IoProfile:
    return load_io_profile(PROFILE)


def _vehicle(
    vid: str = "EV-4711", *, positioning_s: float = 0.0, power_down_s: float = 0.0
) -> SimVehicle:
    return SimVehicle(
        vid, SimPack("PK-0001"), positioning_s=positioning_s, power_down_s=power_down_s
    )


@dataclass
class Bench:
    """A simulated PLC, a driver on a real link, and a poller running it."""

    plc: SimPlc
    driver: StationIoDriver
    poller: StationIoPoller
    snapshots: list[IoSnapshot] = field(default_factory=list)

    @property
    def reading(self) -> IoReading:
        reading = self.poller.reading
        assert reading is not None
        return reading

    async def seen(
        self, predicate: Callable[[IoReading], bool], what: str, within: float = 5.0
    ) -> float:
        """Wait for a reading taken from now on that satisfies `predicate`; seconds it took."""
        since = time.monotonic()

        def ok() -> bool:
            r = self.poller.reading
            return r is not None and r.at >= since and predicate(r)

        return await until(ok, timeout=within, what=what)

    async def inputs_are(self, what: str, **expected: bool) -> float:
        """Wait until a fresh reading shows these inputs."""
        return await self.seen(
            lambda r: all(r.inputs[k] == v for k, v in expected.items()), what=what
        )


@contextlib.asynccontextmanager
async def bench(
    *,
    speed: float = SPEED,
    offline_after: int = 3,
    lift_time_s: float = 8.0,
    link: type[ModbusLink] = ModbusLink,
) -> AsyncIterator[Bench]:
    profile = _profile()
    plc = SimPlc(profile, clock=SimClock(speed), lift_time_s=lift_time_s)
    port = await plc.start_tcp()
    params = LinkParams(
        "station I/O",
        tcp=TcpParams("127.0.0.1", port),
        timeout_min_s=0.02,
        timeout_max_s=0.05,
        retries=0,
    )
    driver = StationIoDriver(profile, link(params), 1)
    snapshots: list[IoSnapshot] = []
    poller = StationIoPoller(
        driver, poll_period_s=POLL_S, offline_after=offline_after, on_snapshot=snapshots.append
    )
    task = asyncio.create_task(poller.run())
    b = Bench(plc, driver, poller, snapshots)
    try:
        await until(lambda: poller.online, what="PLC online")
        yield b
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await driver.link.close()
        await plc.stop()


def _only(table: str, name: str) -> Callable[[IoReading], bool]:
    """`name` is the only input (or coil) that is on."""

    def check(r: IoReading) -> bool:
        bits = r.inputs if table == "inputs" else r.coils
        return [k for k, v in bits.items() if v] == [name]

    return check


def _vehicle_id_is(vid: str | None) -> Callable[[IoReading], bool]:
    return lambda r: r.vehicle_id == vid


def _in_bay(plc: SimPlc) -> SimVehicle | None:
    return plc.vehicle  # read afresh (mypy would keep an earlier narrowing)


def _locked(bay: Vehicle) -> bool:
    return bay.locked


# --- the profile --------------------------------------------------------------------------


def test_profile_loads() -> None:
    profile = _profile()
    assert profile.name == "simplc"
    assert list(profile.discrete_inputs) == list(REQUIRED_INPUTS)
    assert list(profile.discrete_inputs.values()) == list(range(11))
    assert profile.coils == {"lift_raise": 0, "lift_lower": 1, "gate_open": 2, "signal_go": 3}
    regs = profile.register_specs
    assert (regs["vehicle_id"].offset, regs["vehicle_id"].words) == (0, 8)
    assert (regs["heartbeat"].offset, regs["heartbeat"].type) == (8, "u16")


def test_broken_profile_names_its_problems(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    inputs = {n: i for i, n in enumerate(REQUIRED_INPUTS) if n != "estop_ok"}
    inputs["plc_ok"] = 3  # shares doors_closed's address
    path.write_text(
        'name = "broken"\n'
        f"discrete_inputs = {{ {', '.join(f'{n} = {a}' for n, a in inputs.items())} }}\n"
        "coils = { lift_raise = 0, lift_lower = 0, gate_open = 2 }\n"
        "registers = [\n"
        '  { name = "vehicle_id", table = "input", offset = 0, type = "u32" },\n'
        '  { name = "spare", table = "input", offset = 1, type = "u16" },\n'
        "]\n"
    )
    with pytest.raises(SpecError) as info:
        load_io_profile(path)
    text = str(info.value)
    for problem in (
        "discrete_inputs: missing ['estop_ok']",
        "discrete_inputs: doors_closed and plc_ok share address 3",
        "coils: missing ['signal_go']",
        "coils: lift_raise and lift_lower share address 0",
        "registers: missing ['heartbeat']",
        'vehicle_id must be type = "string"',
        "registers: vehicle_id overlaps spare in the input table",
    ):
        assert problem in text, f"{problem!r} not in:\n{text}"
    assert text.startswith(str(path))


def test_profile_field_errors_are_located(tmp_path: Path) -> None:
    path = tmp_path / "typo.toml"
    good = PROFILE.read_text()
    path.write_text(good.replace("coils = {", "coilz = {").replace('type = "u16"', 'type = "u17"'))
    with pytest.raises(SpecError) as info:
        load_io_profile(path)
    locs = {loc for loc, _ in info.value.issues}
    assert {"coils", "coilz", "registers[1].type"} <= locs, info.value.issues
    path.write_text("name = [")
    with pytest.raises(SpecError, match="not valid TOML"):
        load_io_profile(path)
    with pytest.raises(SpecError, match="cannot read"):
        load_io_profile(tmp_path / "missing.toml")


def test_register_map_documents_the_profile() -> None:
    profile = _profile()
    section = DOC.read_text().split("## Station I/O (profile `simplc`)", 1)[1]
    for heading, named in (
        ("### Discrete inputs", profile.discrete_inputs),
        ("### Coils", profile.coils),
    ):
        table = section.split(heading, 1)[1].split("###", 1)[0]
        rows = dict(re.findall(r"^\| (\d+) \| `(\w+)` \|", table, re.MULTILINE))
        assert {name: int(a) for a, name in rows.items()} == named
    assert markdown_table(profile.registers, absolute=True) in section


# --- reading and writing over Modbus -----------------------------------------------------------


async def test_every_input_reads_at_its_address() -> None:
    async with bench() as b:
        assert b.driver.requests_per_read == 3
        names = list(b.plc.profile.discrete_inputs)
        for name in names:
            for other in names:
                b.plc.force_input(other, other == name)
            await b.seen(_only("inputs", name), name)
        for name in names:
            b.plc.force_input(name, None)
        # Released to the physics: an empty bay, lift down, everything safe.
        await b.inputs_are(
            "idle bay",
            vehicle_present=False,
            vehicle_in_position=False,
            vehicle_hv_off=False,
            doors_closed=False,
            brake_gear_ok=False,
            lift_up=False,
            lift_down=True,
            estop_ok=True,
            light_curtain_clear=True,
            gate_open=False,
            plc_ok=True,
        )
        r = b.reading
        assert r.vehicle_id is None
        assert set(r.coils) == set(REQUIRED_COILS) and not any(r.coils.values())


async def test_safety_signals_follow_the_plc() -> None:
    async with bench() as b:
        for attr, name in (
            ("estop_ok", "estop_ok"),
            ("light_curtain_clear", "light_curtain_clear"),
            ("plc_ok", "plc_ok"),
        ):
            setattr(b.plc, attr, False)
            await b.inputs_are(f"{name} off", **{name: False})
            setattr(b.plc, attr, True)
            await b.inputs_are(f"{name} on", **{name: True})


async def test_every_coil_reads_at_its_address() -> None:
    async with bench() as b:
        names = list(b.plc.profile.coils)
        for name in names:
            for other in names:
                await b.plc.force_coil(other, other == name)
            coils = await b.driver.read_coils()
            assert [k for k, v in coils.items() if v] == [name]
            await b.seen(_only("coils", name), name)


async def test_set_coil_is_verified_by_read_back() -> None:
    async with bench() as b:
        await b.driver.set_coil("gate_open", True)
        assert (await b.plc.read_coils())["gate_open"] is True
        await b.inputs_are("gate opens", gate_open=True)
        await b.driver.set_coil("gate_open", False)
        await b.inputs_are("gate closes", gate_open=False)
        await b.plc.stick_coil("signal_go", False)  # a dead output: writes do not take
        with pytest.raises(CommandNotAppliedError, match="signal_go=1, read back 0"):
            await b.driver.set_coil("signal_go", True)
        with pytest.raises(CommandNotAppliedError, match=r"signal_go=1 \(read back 0\)"):
            await b.driver.set_coils(gate_open=True, signal_go=True)
        await b.plc.stick_coil("signal_go", None)
        await b.driver.set_coils(gate_open=True, signal_go=True)
        assert await b.plc.read_coils() == {
            "lift_raise": False,
            "lift_lower": False,
            "gate_open": True,
            "signal_go": True,
        }
        with pytest.raises(ValueError, match="no coil 'horn'"):
            await b.driver.set_coil("horn", True)


class _RecordingLink(ModbusLink):
    def __init__(self, params: LinkParams) -> None:
        super().__init__(params)
        self.writes: list[tuple[int, bool]] = []

    async def write_coil(self, unit: int, address: int, *, value: bool) -> None:
        self.writes.append((address, value))
        await super().write_coil(unit, address, value=value)


async def test_set_coils_clears_before_it_sets() -> None:
    async with bench(link=_RecordingLink) as b:
        await b.driver.set_coils(lift_raise=True)
        await b.driver.set_coils(lift_raise=False, lift_lower=True)
        await b.driver.set_coils(lift_lower=True, lift_raise=True)  # at once: the PLC's problem
        link = b.driver.link
        assert isinstance(link, _RecordingLink)
        assert link.writes == [(0, True), (0, False), (1, True), (1, True), (0, True)]


async def _sim_time_passes(plc: SimPlc, seconds: float) -> None:
    """Wait until `seconds` of simulated time have passed (a window for a negative check)."""
    target = plc.clock.now() + seconds
    await until(lambda: plc.clock.now() > target, what=f"{seconds} simulated seconds")


async def test_lift_rises_and_falls_with_the_coils() -> None:
    lift_time_s = 20.0
    lift_s = lift_time_s / SPEED  # real seconds for a full travel
    async with bench(lift_time_s=lift_time_s) as b:
        started = time.monotonic()
        await b.driver.set_coil("lift_raise", True)
        b.poller.poll_soon()  # as the sequencer does after a command
        await b.inputs_are("lift leaves the bottom", lift_down=False, lift_up=False)
        await b.inputs_are("lift up", lift_up=True, lift_down=False)
        assert lift_s <= time.monotonic() - started <= lift_s + SLACK_S
        assert b.plc.lift.position == 1.0
        await b.driver.set_coils(lift_raise=True, lift_lower=True)  # both: it does not move
        await until(lambda: b.plc.coils["lift_lower"], what="PLC scanned the coils")
        await _sim_time_passes(b.plc, lift_time_s / 4)
        assert b.plc.lift.up
        started = time.monotonic()
        await b.driver.set_coils(lift_raise=False, lift_lower=True)
        await b.inputs_are("lift down", lift_down=True, lift_up=False)
        assert lift_s <= time.monotonic() - started <= lift_s + SLACK_S
        # The E-stop chain cuts the lift's power whatever the outputs say.
        b.plc.estop_ok = False
        await b.driver.set_coils(lift_lower=False, lift_raise=True)
        await b.inputs_are("E-stop seen", estop_ok=False)
        await _sim_time_passes(b.plc, lift_time_s)
        assert b.plc.lift.down
        b.plc.estop_ok = True
        await b.inputs_are("lift up after the E-stop", lift_up=True)


async def test_vehicle_arrives_positions_and_powers_down_on_time() -> None:
    async with bench() as b:
        vehicle = SimVehicle("EV-4711", SimPack("PK-0001"), positioning_s=20.0, power_down_s=10.0)
        started = time.monotonic()
        b.plc.arrive(vehicle)
        await b.inputs_are(
            "vehicle present",
            vehicle_present=True,
            doors_closed=True,
            brake_gear_ok=True,
        )
        assert b.reading.vehicle_id == "EV-4711"
        await b.inputs_are("in position", vehicle_in_position=True)
        positioned = time.monotonic() - started
        await b.inputs_are("HV off", vehicle_hv_off=True)
        powered_down = time.monotonic() - started
        assert 20.0 / SPEED <= positioned <= 20.0 / SPEED + SLACK_S
        assert 30.0 / SPEED <= powered_down <= 30.0 / SPEED + SLACK_S
        # In position came first, then HV off: never the other way round.
        seen = [s.reading for s in b.snapshots if s.reading and s.reading.vehicle_id]
        first_hv_off = next(i for i, r in enumerate(seen) if r.inputs["vehicle_hv_off"])
        assert all(r.inputs["vehicle_in_position"] for r in seen[first_hv_off:])
        with pytest.raises(RuntimeError, match="bay occupied by EV-4711"):
            b.plc.arrive(_vehicle("EV-2"))


async def test_release_makes_the_vehicle_leave() -> None:
    async with bench() as b:
        vehicle = _vehicle()
        vehicle.leave_s = 10.0
        b.plc.arrive(vehicle)
        await b.inputs_are("parked", vehicle_in_position=True, vehicle_hv_off=True)
        # Not released while the lift is up, nor with the pack unlocked.
        await b.driver.set_coil("lift_raise", True)
        await b.inputs_are("lift up", lift_up=True)
        await b.driver.set_coils(gate_open=True, signal_go=True)
        await _sim_time_passes(b.plc, 1.5 * vehicle.leave_s)
        assert b.plc.vehicle is vehicle and vehicle.hv_off
        await b.driver.set_coils(lift_raise=False, gate_open=False, signal_go=False)
        await b.driver.set_coil("lift_lower", True)
        await b.inputs_are("lift down", lift_down=True)
        vehicle.locked = False
        await b.driver.set_coils(gate_open=True, signal_go=True)
        await _sim_time_passes(b.plc, 1.5 * vehicle.leave_s)
        assert b.plc.vehicle is vehicle and vehicle.hv_off
        # Released: it powers up, and drives out leave_s later.
        started = time.monotonic()
        vehicle.locked = True
        await b.inputs_are("powered up", vehicle_hv_off=False, vehicle_present=True)
        await b.inputs_are("gone", vehicle_present=False, vehicle_in_position=False)
        left = time.monotonic() - started
        assert 10.0 / SPEED <= left <= 10.0 / SPEED + SLACK_S
        assert b.reading.vehicle_id is None
        assert b.plc.departed == [vehicle] and _in_bay(b.plc) is None
        assert vehicle.pack is not None and vehicle.pack.serial == "PK-0001"
        assert b.plc.accidents == 0


async def test_a_vehicle_leaves_on_the_green_light_once_stopped_in_position() -> None:
    async with bench() as b:
        await b.driver.set_coils(gate_open=True, signal_go=True)
        await until(lambda: b.plc.coils["signal_go"], what="the PLC scanned the green light")
        vehicle = _vehicle()
        b.plc.arrive(vehicle)
        await b.inputs_are("in position", vehicle_in_position=True)
        await b.inputs_are("gone", vehicle_present=False)
        assert b.plc.departed == [vehicle]


async def test_misbehaviour_shows_on_the_inputs() -> None:
    async with bench() as b:
        vehicle = _vehicle()
        b.plc.arrive(vehicle)
        await b.inputs_are("parked", vehicle_hv_off=True, doors_closed=True, brake_gear_ok=True)
        b.plc.open_door()
        await b.inputs_are("door open", doors_closed=False)
        b.plc.close_door()
        await b.inputs_are("door closed", doors_closed=True)
        b.plc.press_brake()
        await b.inputs_are("brake released", brake_gear_ok=False)
        b.plc.release_brake()
        await b.inputs_are("brake applied", brake_gear_ok=True)
        b.plc.power_up()
        await b.inputs_are("HV on", vehicle_hv_off=False)
        await _sim_time_passes(b.plc, vehicle.power_down_s + 20.0)
        await b.inputs_are("still on: the driver switched it on", vehicle_hv_off=False)
        b.plc.power_down()
        await b.inputs_are("HV off", vehicle_hv_off=True)
        # Driving off the raised lift: an accident, the pack goes with the car.
        await b.driver.set_coil("lift_raise", True)
        await b.inputs_are("lift up", lift_up=True)
        b.plc.leave_early()
        await b.inputs_are("gone", vehicle_present=False, vehicle_in_position=False)
        assert b.plc.departed == [vehicle] and vehicle.pack is not None
        assert b.plc.accidents == 1
        with pytest.raises(RuntimeError, match="no vehicle"):
            b.plc.open_door()


async def test_vehicle_id_round_trips() -> None:
    async with bench() as b:
        for vid in ("X", "ABCDEFGHIJKLMNOP", "WVW ZZZ 1K-7"):  # up to 16 characters
            b.plc.arrive(_vehicle(vid))
            await b.seen(_vehicle_id_is(vid), vid)
            b.plc.leave_early()
            await b.seen(lambda r: r.vehicle_id is None, "no vehicle: no id")
        with pytest.raises(ValueError, match="at most 16 characters"):
            b.plc.arrive(_vehicle("ABCDEFGHIJKLMNOPQ"))
        with pytest.raises(ValueError, match="printable ASCII"):
            b.plc.arrive(_vehicle("FAHRZEUG-\u00e4"))
        assert b.plc.vehicle is None
        b.plc.arrive(_vehicle("EV-1"))
        b.plc.set_garbage("vehicle_id", [0x4556, 0x0107, 0, 0, 0, 0, 0, 0])  # "EV", a control
        await b.seen(lambda r: r.vehicle_id is None and r.inputs["vehicle_present"], "implausible")
        b.plc.set_garbage("vehicle_id", None)
        await b.seen(lambda r: r.vehicle_id == "EV-1", "restored")


async def test_heartbeat_counts_cycles_and_a_stopped_one_shows() -> None:
    async with bench() as b:
        first = b.reading
        await b.seen(lambda r: r.heartbeat != first.heartbeat, "heartbeat moves")
        assert b.reading.heartbeat_since == b.reading.at  # changed in this very reading
        b.plc.set_garbage("heartbeat", [7])
        await b.seen(lambda r: r.heartbeat == 7, "heartbeat frozen")
        since = b.reading.heartbeat_since
        await b.seen(lambda r: r.at > since + 0.1, "readings go on")
        assert b.reading.heartbeat == 7 and b.reading.heartbeat_since == since
        assert b.reading.at - b.reading.heartbeat_since > 0.1  # the consumer's staleness cue


async def test_offline_after_n_failed_polls_and_recovery() -> None:
    async with bench(offline_after=3) as b:
        b.plc.arrive(_vehicle())
        await b.inputs_are("parked", vehicle_hv_off=True)
        await b.driver.set_coil("gate_open", True)
        await b.plc.go_offline()
        await until(lambda: b.poller.offline, what="declared offline")
        failing = [s for s in b.snapshots if s.consecutive_failures > 0]
        assert [s.consecutive_failures for s in failing[:3]] == [1, 2, 3]
        assert [s.offline for s in failing[:3]] == [False, False, True]
        assert [s.online for s in failing[:3]] == [True, True, False]
        assert failing[0].error and failing[0].reading is not None
        assert failing[2].reading is failing[0].reading  # the last good one, kept
        assert not b.poller.online and b.poller.failures >= 3
        # The physics goes on while the PLC is unreachable: the vehicle is still there.
        await b.plc.come_back()
        b.poller.poll_soon()
        await until(lambda: b.poller.online, what="back online")
        snap = b.snapshots[-1]
        assert snap.online and not snap.offline and snap.consecutive_failures == 0
        assert snap.error is None
        # Back as after a reboot: every output off.
        await b.seen(lambda r: not any(r.coils.values()) and not r.inputs["gate_open"], "reset")
        assert b.reading.inputs["vehicle_present"] and b.reading.vehicle_id == "EV-4711"


async def test_a_silent_plc_goes_offline_and_recovers() -> None:
    async with bench(offline_after=2) as b:
        b.plc.silent = True
        await until(lambda: b.poller.offline, what="declared offline")
        assert b.snapshots[-1].error is not None and "no reply" in b.snapshots[-1].error
        b.plc.silent = False
        await until(lambda: b.poller.online, what="back online")


# --- the robot's view of the bay ---------------------------------------------------------------


async def test_bay_robot_can_work_only_on_a_parked_lifted_vehicle() -> None:
    async with bench() as b:
        bay: Vehicle = b.plc.bay  # the simulated robot's protocol
        assert bay.pack is None and bay.locked is False and not bay.robot_can_work()
        bay.locked = True  # no vehicle: the bolts turn in the air
        assert not _locked(bay)
        with pytest.raises(RuntimeError, match="no vehicle"):
            bay.pack = SimPack("PK-9")
        vehicle = _vehicle(positioning_s=10.0, power_down_s=10.0)
        b.plc.arrive(vehicle)
        assert bay.pack is vehicle.pack and bay.locked is True
        assert not bay.robot_can_work()  # not in position yet
        await b.inputs_are("in position", vehicle_in_position=True)
        assert not bay.robot_can_work()  # HV still on
        await b.inputs_are("HV off", vehicle_hv_off=True)
        assert not bay.robot_can_work()  # lift down
        await b.driver.set_coil("lift_raise", True)
        await b.inputs_are("lift up", lift_up=True)
        assert bay.robot_can_work()
        b.plc.power_up()
        assert not bay.robot_can_work()
        b.plc.power_down()
        assert bay.robot_can_work()
        # The robot unlocks and takes the pack, then puts a new one in.
        bay.locked = False
        taken, bay.pack = bay.pack, None
        assert vehicle.pack is None and vehicle.locked is False and taken is not None
        bay.pack = SimPack("PK-0002")
        bay.locked = True
        fitted = _in_bay(b.plc)
        assert fitted is vehicle
        assert fitted.pack is not None and fitted.pack.serial == "PK-0002" and fitted.locked


# --- the controller builds it from its config --------------------------------------------------


async def test_build_station_io_from_the_config() -> None:
    plc = SimPlc(_profile(), clock=SimClock(SPEED))
    port = await plc.start_tcp()
    base = {"station_id": "s1", "profiles_dir": str(PROFILES), "storage": {"dir": "/tmp/x"}}
    links = Links()
    snapshots: list[IoSnapshot] = []
    try:
        assert build_station_io(StationConfig.model_validate(base), links, snapshots.append) is None
        io = {"transport": "tcp", "host": "127.0.0.1", "port": port, "poll_period_s": 0.02}
        config = StationConfig.model_validate({**base, "station_io": io})
        assert config.station_io is not None and config.station_io.profile == "simplc"
        poller = build_station_io(config, links, snapshots.append)
        assert poller is not None and poller.offline_after == 3
        task = asyncio.create_task(poller.run())
        try:
            await until(lambda: poller.online, what="online")
            await poller.driver.set_coil("signal_go", True)
            await until(lambda: plc.coils["signal_go"], what="the PLC acts on it")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        missing = {**base, "station_io": {**io, "profile": "nosuch"}}
        with pytest.raises(FileNotFoundError, match="nosuch"):
            build_station_io(StationConfig.model_validate(missing), links, snapshots.append)
    finally:
        await links.close()
        await plc.stop()


# --- an independent client reads what the doc says ---------------------------------------------


def _documented(marker: str) -> tuple[list[str], dict[int, str]]:
    block = DOC.read_text().split(f"<!-- {marker} -->", 1)[1].split(f"<!-- /{marker} -->", 1)[0]
    lines = [ln for ln in block.splitlines() if ln and not ln.startswith("```")]
    expected = {}
    for line in lines[1:]:
        m = re.match(r"\[(\d+)\]:\s+(\S+)", line)
        assert m, line
        expected[int(m.group(1))] = m.group(2)
    return lines[0].removeprefix("$ ").split(), expected


async def test_mbpoll_reads_the_documented_io() -> None:
    mbpoll = shutil.which("mbpoll")
    assert mbpoll, "mbpoll is missing (Debian package mbpoll; scripts/bootstrap.sh installs it)"
    plc = SimPlc(_profile(), clock=SimClock(SPEED))
    port = await plc.start_tcp()
    try:
        plc.arrive(_vehicle("EV-4711"))
        await until(lambda: plc.inputs()["vehicle_hv_off"], what="parked")
        cycle = plc.heartbeat
        await until(lambda: plc.heartbeat > cycle + 1, what="a PLC cycle has published it")
        for marker in ("mbpoll-plc-inputs", "mbpoll-plc-registers"):
            command, expected = _documented(marker)
            args = [mbpoll, *command[1:]]
            args[args.index("-p") + 1] = str(port)
            proc = await asyncio.create_subprocess_exec(
                *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
            out, err = await asyncio.wait_for(proc.communicate(), 20)
            assert proc.returncode == 0, err.decode()
            got = dict(re.findall(r"^\[(\d+)\]:\s+(-?\d+)", out.decode(), re.MULTILINE))
            assert {int(a) for a in got} == set(expected)
            for address, value in expected.items():
                if value != "(varies)":
                    assert got[str(address)] == value, f"{marker} [{address}]"
    finally:
        await plc.stop()
