"""Charger racks against the simulated rack over Modbus TCP and RTU on a pty."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Literal

import pytest

from controller.errors import RefusedError
from drivers.modbus.link import LinkParams, ModbusLink, SerialParams, TcpParams
from drivers.rack import RackDriver
from simstation.broker import Mosquitto
from simstation.charger import SimPack
from simstation.station import SimRackSpec, SimStation
from tests.rig import Rig, running, until

FAST_RISE = "[supervision]\nfast_rise_c_per_min = 60\nfast_rise_window_s = 1.5\ndebounce_s = 0.3\n"


Transport = Literal["tcp", "rtu"]


@pytest.fixture(params=["tcp", "rtu"])
def transport(request: pytest.FixtureRequest) -> Transport:
    """Each fault test runs over Modbus TCP and over RTU on a pty."""
    value: Transport = request.param
    return value


def _rack(transport: Transport = "tcp") -> SimRackSpec:
    profile = "simrack" if transport == "tcp" else "simrack-unit"
    packs = {1: SimPack("PK-0001", soc=40.0), 2: SimPack("PK-0002", soc=60.0)}
    return SimRackSpec("a", [1, 2, 3, 4], transport=transport, profile=profile, packs=packs)


async def test_every_register_type_decodes(tmp_path: Path, transport: Transport) -> None:
    sim = SimStation(tmp_path, [_rack(transport)], speed=1.0)
    await sim.start()
    rack = sim.racks["a"]
    profile = rack.profile
    # Known raw words, written as a real device would (independent of our encoder).
    rack.set_garbage(1, "current", [0xFFFF, 0xFB2E])  # i32 -1234 mA
    rack.set_garbage(1, "power_w", [0x4148, 0x0000])  # f32 12.5
    rack.set_garbage(1, "temp_min", [0xFF9C])  # i16 -100 -> -10.0 C
    rack.set_garbage(1, "energy_wh", [0x0001, 0x0002])  # u32 65538
    rack.set_garbage(1, "soc", [0x01F4])  # u16 500 -> 50.0 %
    rack.set_garbage(1, "pack_serial", [0x504B, 0x2D31, 0x3233, 0, 0, 0, 0, 0])  # "PK-123"
    if transport == "tcp":
        params = LinkParams("a", tcp=TcpParams("127.0.0.1", rack.port))
        driver = RackDriver("a", profile, ModbusLink(params), [1, 2, 3, 4], unit_id=1)
    else:
        params = LinkParams("a", serial=SerialParams(str(sim.ptys["a"].controller_end), parity="N"))
        driver = RackDriver("a", profile, ModbusLink(params), [1, 2, 3, 4], unit_ids=[1, 2, 3, 4])
    try:
        deadline = time.monotonic() + 5
        readings = await driver.read_all()
        while readings[1].pack_serial != "PK-123":  # until the physics has published them
            assert time.monotonic() < deadline, readings[1]
            await asyncio.sleep(0.01)
            readings = await driver.read_all()
        r = readings[1]
        assert (r.current, r.power_w, r.temp_min, r.energy_wh, r.soc) == (
            -1.234,
            12.5,
            -10.0,
            65538.0,
            50.0,
        )
        assert r.pack_serial == "PK-123"
        assert r.pack_type == "STD75"
        assert r.status == "idle" and r.pack_present is True
        assert readings[3].status == "empty" and readings[3].pack_serial is None
        ident = await driver.read_identity()
        assert ident.values["vendor"] == "SWAPSIM"
        assert ident.values["slot_count"] == 4
    finally:
        await driver.link.close()
        await sim.stop()


async def _charging(rig: Rig, slot: int = 1) -> None:
    charger = rig.sim.racks["a"].chargers[slot]
    await until(lambda: charger.enabled and charger.current_a > 0, what=f"slot {slot} charging")


async def _stopped(rig: Rig, slot: int = 1) -> None:
    charger = rig.sim.racks["a"].chargers[slot]
    await until(lambda: not charger.enabled, what=f"slot {slot} stopped")


async def test_charger_fault_stops_charging_and_clears(
    tmp_path: Path, broker: Mosquitto, transport: Transport
) -> None:
    async with running(tmp_path, broker, [_rack(transport)]) as rig:
        await _charging(rig)
        rig.sim.racks["a"].set_fault(1, 7)
        await until(lambda: "charger_fault" in rig.alarm_codes("slot:1"), what="alarm")
        await _stopped(rig)
        rig.sim.racks["a"].set_fault(1, 0)
        await until(lambda: "charger_fault" not in rig.alarm_codes("slot:1"), what="clear")
        await _charging(rig)  # not latching: charging resumes by itself
        kinds = await _event_kinds(rig)
        assert kinds.index("alarm_raised") < kinds.index("alarm_cleared")


async def _event_kinds(rig: Rig) -> list[str]:
    rows = await rig.station.journal.call(
        lambda c: c.execute("SELECT kind, body FROM events ORDER BY seq").fetchall()
    )
    return [kind for kind, _ in rows]


async def test_over_temperature_trips_and_quarantines(
    tmp_path: Path, broker: Mosquitto, transport: Transport
) -> None:
    async with running(tmp_path, broker, [_rack(transport)]) as rig:
        await _charging(rig)
        rig.sim.racks["a"].set_temperature(1, 60.0)
        await until(lambda: "over_temperature" in rig.alarm_codes("slot:1"), what="alarm")
        await _stopped(rig)
        control = rig.station.control
        assert 1 in control.trips
        assert "PK-0001" in control.quarantine
        rig.sim.racks["a"].set_temperature(1, None)
        rig.sim.racks["a"].chargers[1].pack.temp_c = 25.0  # type: ignore[union-attr]
        await until(lambda: not rig.alarm_codes("slot:1"), what="cause cleared")
        # The alarm cleared with its cause; the trip and the quarantine wait for an operator.
        blockers = control.blockers(1)
        assert any("tripped" in b for b in blockers)
        assert any("quarantined" in b for b in blockers)
        with pytest.raises(RefusedError, match="tripped"):
            await control.operator.set_charging(1, enable=True)
        await control.operator.reset_trip(1)
        await control.operator.release_pack("PK-0001")
        await _charging(rig)


async def test_thermal_runaway_ramp_is_a_fast_rise(
    tmp_path: Path, broker: Mosquitto, transport: Transport
) -> None:
    async with running(tmp_path, broker, [_rack(transport)], sections=FAST_RISE) as rig:
        await _charging(rig)
        rig.sim.racks["a"].thermal_runaway(1, 5.0)  # 5 C/min simulated = 300 C/min at 60x
        await until(lambda: "fast_temperature_rise" in rig.alarm_codes("slot:1"), what="alarm")
        await _stopped(rig)
        assert "PK-0001" in rig.station.control.quarantine
        temp = rig.sim.racks["a"].chargers[1].temp_max
        assert temp is not None and temp < 55  # caught well before over-temperature


async def test_garbage_value_is_a_sensor_fault(
    tmp_path: Path, broker: Mosquitto, transport: Transport
) -> None:
    async with running(tmp_path, broker, [_rack(transport)]) as rig:
        await _charging(rig)
        rig.sim.racks["a"].set_garbage(1, "soc", [2500])  # 250.0 %
        await until(lambda: "sensor_fault" in rig.alarm_codes("slot:1"), what="alarm")
        await _stopped(rig)
        view = rig.station.book.view(1, time.monotonic())
        assert view.reading is not None and view.reading.soc is None
        assert view.reading.sensor_faults == ("soc",)
        rig.sim.racks["a"].set_garbage(1, "soc", None)
        await until(lambda: "sensor_fault" not in rig.alarm_codes("slot:1"), what="clear")
        await _charging(rig)


@pytest.mark.parametrize(
    ("register", "words", "code"),
    [
        ("current", [0x0003, 0xD090], "over_current"),  # 250 A against a 200 A BMS limit
        ("voltage", [4100], "over_voltage"),  # 410.0 V against a 403.2 V BMS limit
    ],
)
async def test_electrical_limits_are_debounced_trips(
    tmp_path: Path,
    broker: Mosquitto,
    transport: Transport,
    register: str,
    words: list[int],
    code: str,
) -> None:
    async with running(tmp_path, broker, [_rack(transport)], sections=FAST_RISE) as rig:
        await _charging(rig)
        rack = rig.sim.racks["a"]
        rack.set_garbage(1, register, words)
        started = time.monotonic()
        await until(lambda: code in rig.alarm_codes("slot:1"), what="alarm")
        assert time.monotonic() - started >= 0.3  # debounce_s
        await _stopped(rig)
        assert 1 in rig.station.control.trips
        rack.set_garbage(1, register, None)
        await until(lambda: code not in rig.alarm_codes("slot:1"), what="cleared")
        assert 1 in rig.station.control.trips  # the trip waits for an operator


async def test_rack_offline_goes_stale_within_two_polls_and_recovers(
    tmp_path: Path, broker: Mosquitto, transport: Transport
) -> None:
    async with running(tmp_path, broker, [_rack(transport)]) as rig:
        period = rig.daemon.config.racks[0].poll_period_s
        book = rig.station.book
        await until(lambda: not any(book.view(s, time.monotonic()).stale for s in book.slots))
        await rig.sim.racks["a"].go_offline()
        took = await until(
            lambda: all(book.view(s, time.monotonic()).stale for s in book.slots), what="stale"
        )
        assert took <= 2 * period + 0.05, f"stale after {took:.3f} s (poll period {period} s)"
        await until(lambda: "rack_offline" in rig.alarm_codes("rack:a"), what="offline alarm")
        view = book.view(1, time.monotonic())
        assert view.age_s is not None and view.age_s > 0
        await rig.sim.racks["a"].come_back()
        await until(
            lambda: not any(book.view(s, time.monotonic()).stale for s in book.slots),
            timeout=15,
            what="fresh again",
        )
        await until(lambda: "rack_offline" not in rig.alarm_codes("rack:a"), what="alarm cleared")
        await _charging(rig)


async def test_no_answer_is_detected_as_offline(tmp_path: Path, broker: Mosquitto) -> None:
    async with running(tmp_path, broker, [_rack()]) as rig:
        rig.sim.racks["a"].silent = True
        await until(lambda: "rack_offline" in rig.alarm_codes("rack:a"), what="offline alarm")
        # Offline, the rack is re-probed with a growing backoff, not every poll period.
        poller = rig.station.pollers["a"]
        before = poller.stats.cycles
        await asyncio.sleep(2.0)  # a window to count attempts in, not a synchronisation
        attempts = poller.stats.cycles - before
        assert attempts <= 6, f"{attempts} attempts in 2 s at a 0.2 s poll period"
        with pytest.raises(RefusedError, match="stale"):
            await rig.station.control.operator.set_charging(1, enable=True)
        rig.sim.racks["a"].silent = False
        await until(lambda: "rack_offline" not in rig.alarm_codes("rack:a"), timeout=15)


async def test_commands_are_verified_by_read_back(tmp_path: Path, broker: Mosquitto) -> None:
    async with running(tmp_path, broker, [_rack()]) as rig:
        control = rig.station.control
        await _charging(rig)
        with pytest.raises(RefusedError, match="at most 150 A"):
            await control.operator.set_charging(1, enable=True, limit_a=200.0)
        with pytest.raises(RefusedError, match="no pack"):
            await control.operator.set_charging(3, enable=True)
        rig.sim.racks["a"].set_fault(2, 9)
        await until(lambda: "charger_fault" in rig.alarm_codes("slot:2"))
        with pytest.raises(RefusedError, match="charger fault code 9"):
            await control.operator.set_charging(2, enable=True)
        await control.operator.set_charging(2, enable=False)  # stopping is always allowed


async def test_a_setpoint_the_charger_will_not_take_is_reported_not_hammered(
    tmp_path: Path, broker: Mosquitto
) -> None:
    spec = _rack()
    spec.charger_max_a = 100.0  # the charger clamps the controller's 150 A to 100 A
    async with running(tmp_path, broker, [spec]) as rig:
        control = rig.station.control
        await until(lambda: "setpoint_not_applied" in rig.alarm_codes("slot:1"), what="alarm")
        alarm = next(a for a in control.alarms.active("slot:1") if a.code == "setpoint_not_applied")
        assert "read back" in alarm.message
        with pytest.raises(RefusedError, match="read back"):
            await control.operator.set_charging(1, enable=True, limit_a=120.0)
        # Retried with a growing pause, not every step.
        requests = rig.sim.racks["a"].requests
        await asyncio.sleep(1.0)  # a window to count writes in, not a synchronisation
        writes = control.setpoints.writes[1]
        assert writes.failures <= 2
        assert rig.sim.racks["a"].requests - requests < 40
