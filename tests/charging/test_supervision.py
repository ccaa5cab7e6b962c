"""Supervision under adversity: lossy lines, silent chargers, restarts, an orderly stop."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from controller.charging.supervision import SlotRules
from controller.config.model import SupervisionConfig
from controller.plant.alarms import Cause, Severity
from controller.plant.slots import SlotView
from drivers import clock
from drivers.rack import SlotReading
from simstation.broker import Mosquitto
from simstation.charger import SimPack
from simstation.station import SimRackSpec
from tests.rig import Rig, running, until

DEBOUNCE = "[supervision]\ndebounce_s = 0.3\n"


def _spec(transport: str = "tcp") -> SimRackSpec:
    return SimRackSpec(
        "a",
        [1, 2, 3],
        transport=transport,  # type: ignore[arg-type]
        profile="simrack" if transport == "tcp" else "simrack-unit",
        packs={1: SimPack("PK-1", soc=40.0), 2: SimPack("PK-2", soc=50.0)},
    )


async def _events(rig: Rig, kind: str, code: str) -> int:
    rows = await rig.station.journal.call(
        lambda c: c.execute(
            "SELECT count(*) FROM events WHERE kind = ? AND json_extract(body, '$.code') = ?",
            (kind, code),
        ).fetchone()
    )
    return int(rows[0])


async def test_orderly_stop_leaves_every_charger_off_even_with_a_stalled_broker(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async with running(tmp_path, broker, [_spec()]) as rig:
        rack = rig.sim.racks["a"]
        await until(lambda: rack.chargers[1].enabled and rack.chargers[2].enabled, what="charging")
        assert broker.proc is not None
        broker.proc.send_signal(signal.SIGSTOP)  # the goodbye on MQTT will hang
        try:
            started = time.monotonic()
            assert await rig.stop() == 0
            assert time.monotonic() - started < 5.0
            await until(
                lambda: not any(c.enabled for c in rack.chargers.values()),
                timeout=2,
                what="chargers off",
            )
            # Nothing switches them back on afterwards.
            await asyncio.sleep(0.3)  # a window to watch, not a synchronisation
            assert not any(c.enabled for c in rack.chargers.values())
        finally:
            broker.proc.send_signal(signal.SIGCONT)


async def test_an_operator_off_stays_off(tmp_path: Path, broker: Mosquitto) -> None:
    async with running(tmp_path, broker, [_spec()]) as rig:
        rack, control = rig.sim.racks["a"], rig.station.control
        await until(lambda: rack.chargers[1].enabled, what="charging")
        await control.operator.set_charging(1, enable=False)
        polls = rack.requests
        await until(lambda: rack.requests > polls + 10, what="a few polls")
        assert not rack.chargers[1].enabled
        assert "charging switched off by an operator" in control.blockers(1)
        # Ten polls are about the contactor's minimum off-time at this speed: wait it out, or
        # the operator's on is (rightly) refused.
        await until(
            lambda: control.safety.on_allowed_in(1, clock.monotonic()) <= 0,
            what="the minimum off-time",
        )
        await control.operator.set_charging(1, enable=True)
        await until(lambda: rack.chargers[1].enabled, what="on again")


async def test_alarms_are_held_not_cleared_while_data_is_stale(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async with running(tmp_path, broker, [_spec()]) as rig:
        rack = rig.sim.racks["a"]
        rack.set_fault(1, 6)
        await until(lambda: "charger_fault" in rig.alarm_codes("slot:1"))
        await rack.go_offline()
        await until(lambda: "rack_offline" in rig.alarm_codes("rack:a"))
        assert "charger_fault" in rig.alarm_codes("slot:1")  # unknown is not "cleared"
        await rack.come_back()
        await until(lambda: "rack_offline" not in rig.alarm_codes("rack:a"), timeout=15)
        assert "charger_fault" in rig.alarm_codes("slot:1")
        assert await _events(rig, "alarm_cleared", "charger_fault") == 0
        assert await _events(rig, "alarm_raised", "charger_fault") == 1


async def test_a_lossy_line_does_not_hide_an_over_voltage(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async with running(tmp_path, broker, [_spec()], sections=DEBOUNCE) as rig:
        rack = rig.sim.racks["a"]
        rack.drop_rate = 0.5  # every other answer lost: polls keep failing
        rack.set_garbage(1, "voltage", [4300])  # 430.0 V against 403.2 V
        await until(
            lambda: "over_voltage" in rig.alarm_codes("slot:1"),
            timeout=15,
            what="over-voltage despite the losses",
        )
        assert 1 in rig.station.control.trips


async def test_one_silent_charger_on_rs485_blinds_only_its_slot(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async with running(tmp_path, broker, [_spec("rtu")]) as rig:
        rack, book = rig.sim.racks["a"], rig.station.book
        rack.silent_units.add(2)  # slot 2's charger
        await until(lambda: "slot_data_stale" in rig.alarm_codes("slot:2"), what="slot alarm")
        view = book.view(2, time.monotonic())
        assert view.stale_reason == "charger not answering"

        # The others stay fresh (once a write that was on its way to unit 2 has timed out):
        # the silent unit rests out of the polls instead of slowing the line down.
        def others_fresh() -> bool:
            return not any(book.view(s, time.monotonic()).stale for s in (1, 3))

        await until(others_fresh, what="slots 1 and 3 fresh")
        polls = rack.requests
        while rack.requests < polls + 20:
            assert others_fresh(), [book.view(s, time.monotonic()).stale_reason for s in (1, 3)]
            await asyncio.sleep(0.02)
        assert "rack_offline" not in rig.alarm_codes("rack:a")
        rack.silent_units.clear()
        await until(lambda: "slot_data_stale" not in rig.alarm_codes("slot:2"), timeout=15)


async def test_alarms_survive_a_restart_without_repeats(tmp_path: Path, broker: Mosquitto) -> None:
    async with running(tmp_path, broker, [_spec()]) as rig:
        rig.sim.racks["a"].set_fault(1, 4)
        await until(lambda: "charger_fault" in rig.alarm_codes("slot:1"))
    # Restarted with the fault still there: still active, raised once in all.
    spec = _spec()
    spec.fault_codes = {1: 4}
    async with running(tmp_path, broker, [spec]) as rig:
        assert "charger_fault" in rig.alarm_codes("slot:1")
        await until(lambda: rig.station.book.view(1, time.monotonic()).fresh is not None)
        await asyncio.sleep(0.3)  # a few steps on fresh data
        assert await _events(rig, "alarm_raised", "charger_fault") == 1
    # Restarted after the fault went away: the clearing is reported.
    async with running(tmp_path, broker, [_spec()]) as rig:
        await until(lambda: "charger_fault" not in rig.alarm_codes("slot:1"))
        assert await _events(rig, "alarm_cleared", "charger_fault") == 1


async def test_current_while_switched_off_trips(tmp_path: Path, broker: Mosquitto) -> None:
    async with running(tmp_path, broker, [_spec()], sections=DEBOUNCE) as rig:
        rack, control = rig.sim.racks["a"], rig.station.control
        await until(lambda: rack.chargers[1].enabled, what="charging")
        await control.operator.set_charging(1, enable=False)
        rack.set_garbage(1, "current", [0x0000, 0xC350])  # 50 A flowing regardless
        await until(lambda: "charging_while_off" in rig.alarm_codes("slot:1"), what="alarm")
        assert 1 in control.trips and "PK-1" in control.quarantine


def _reading(at: float, temp: float, **kw: object) -> SlotReading:
    base: dict[str, object] = {
        "slot": 1,
        "at": at,
        "wall": at,
        "status": "charging",
        "pack_present": True,
        "pack_serial": "P",
        "pack_type": "T",
        "soc": 50.0,
        "soh": 95.0,
        "voltage": 380.0,
        "current": 100.0,
        "power_w": 38000.0,
        "temp_max": temp,
        "temp_min": temp - 3,
        "fault_code": 0,
        "energy_wh": 0.0,
        "charge_enable": True,
        "current_limit": 150.0,
        "bms_voltage_max": 403.2,
        "bms_current_max": 200.0,
        "heartbeat": 1,
        "heartbeat_since": at,
    }
    base.update(kw)
    return SlotReading(**base)  # type: ignore[arg-type]


def _view(r: SlotReading) -> SlotView:
    return SlotView(1, "a", r, True, 0.0, None)


def test_one_reading_never_satisfies_a_debounce() -> None:
    rules = SlotRules(SupervisionConfig(debounce_s=1.0))
    high = _reading(100.0, 30.0, voltage=420.0)
    for _ in range(50):  # the same reading, seen on every step
        assert "over_voltage" not in rules.check(_view(high)).causes
    later = _reading(101.5, 30.0, voltage=420.0)
    assert "over_voltage" in rules.check(_view(later)).causes


@pytest.mark.parametrize(("step_c", "expected"), [(1.0, False), (20.0, True)])
def test_fast_rise_needs_a_whole_window(step_c: float, expected: bool) -> None:
    rules = SlotRules(SupervisionConfig(fast_rise_c_per_min=2.0, fast_rise_window_s=30.0))
    found = False
    for t in range(0, 61, 2):  # one sample every 2 s; a single step at t = 30 s
        temp = 25.0 + (step_c if t >= 30 else 0.0)
        found |= "fast_temperature_rise" in rules.check(_view(_reading(float(t), temp))).causes
    assert found is expected


def test_restored_cause_is_held_until_fresh_data() -> None:
    rules = SlotRules(SupervisionConfig())
    rules.hold(1, "charger_fault", Cause(Severity.WARNING, "charger fault code 4"))
    stale = SlotView(1, "a", None, False, None, "rack offline")
    assert "charger_fault" in rules.check(stale).causes
    assert rules.check(_view(_reading(1.0, 25.0))).causes == {}


def test_a_setpoint_not_applied_is_retried_after_1_s_then_doubling_to_60_s() -> None:
    """docs/architecture.md: retried with a growing pause (1 s .. 60 s)."""
    from controller.charging.setpoints import Writing as _Writing

    writing = _Writing((True, 100.0), at=0.0)
    assert not writing.due(0.99) and writing.due(1.0)  # not yet confirmed: asked again at 1 s
    pauses = []
    for failures in range(1, 10):
        writing.failures = failures
        pauses.append(next(t for t in range(1, 200) if writing.due(float(t))))
    assert pauses == [1, 2, 4, 8, 16, 32, 60, 60, 60]
