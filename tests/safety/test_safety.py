"""The safety supervisor: its rules restated from the docs, and its refusals where people see them.

The properties here restate docs/architecture.md's safety rules in their own words (not by
calling controller/safety/supervisor.py's checks) and throw arbitrary facts at the supervisor:
whatever
it allows must keep them. The end-to-end test checks that a refusal is an alarm named after
the invariant, on `events`, in `state` and in the motion log, and that it clears.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
from pathlib import Path
from types import MappingProxyType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.errors import SafetyRefusedError
from controller.plant.slots import RackInfo, SlotBook
from controller.safety.commands import ChargerEnable, ChargerLimit, Outputs, RobotMotion
from controller.safety.motionlog import select_sync, verify_sync
from controller.safety.supervisor import Plant, SafetySupervisor
from drivers.rack import RackSnapshot, SlotReading
from drivers.robot.protocol import MsgType, Target
from drivers.stationio import IoReading, IoSnapshot
from simstation.broker import Mosquitto
from simstation.charger import SimPack
from simstation.station import SimRackSpec
from tests.rig import running, until
from tests.support import Subscriber

NOW = 10_000.0
INPUTS = ("vehicle_present", "vehicle_in_position", "vehicle_hv_off", "doors_closed",
          "brake_gear_ok", "lift_up", "lift_down", "estop_ok", "light_curtain_clear",
          "gate_open", "plc_ok")  # fmt: skip
COILS = ("lift_raise", "lift_lower", "gate_open", "signal_go")


class Clock:
    def __init__(self) -> None:
        self.t = NOW

    def __call__(self) -> float:
        return self.t


# --- chargers ------------------------------------------------------------------------------------

maybe_amps = st.none() | st.sampled_from([0.0, 0.05, 1.0, 80.0, 150.0, 600.0]) | st.floats(0, 1000)


@st.composite
def readings(draw: st.DrawFn) -> SlotReading:
    age = draw(st.sampled_from([0.0, 0.5, 1.9, 2.1, 50.0]))
    frozen = draw(st.sampled_from([0.0, 4.0, 6.0]))
    return SlotReading(
        slot=1, at=NOW - age, wall=0.0, status=draw(st.sampled_from(["idle", "full", "fault"])),
        pack_present=draw(st.none() | st.booleans()), pack_serial="PK-1", pack_type="STD75",
        soc=50.0, soh=95.0, voltage=380.0, current=0.0, power_w=0.0, temp_max=25.0,
        temp_min=23.0, fault_code=0, energy_wh=0.0, charge_enable=draw(st.none() | st.booleans()),
        current_limit=draw(maybe_amps), bms_voltage_max=403.2, bms_current_max=draw(maybe_amps),
        heartbeat=1, heartbeat_since=NOW - age - frozen,
    )  # fmt: skip


def supervisor(reading: SlotReading, *, online: bool = True, alloc: float | None = None,
               min_off: float = 30.0) -> tuple[SafetySupervisor, Clock]:  # fmt: skip
    clock = Clock()
    book = SlotBook([RackInfo("r", (1,), 2.0, 5.0)])
    book.update(RackSnapshot("r", NOW, online, {1: reading}, 0 if online else 3))
    plant = Plant(book, 150.0, min_off, allocation=lambda _slot: alloc)
    clock.t = NOW - 100.0  # started a while ago
    safety = SafetySupervisor(plant, clock=clock)
    clock.t = NOW
    return safety, clock


@given(
    reading=readings(),
    amps=st.floats(allow_nan=True, allow_infinity=True),
    alloc=st.none() | st.floats(0, 200),
)
def test_a_limit_above_min_of_bms_charger_and_allocation_is_never_allowed(
    reading: SlotReading, amps: float, alloc: float | None
) -> None:
    safety, _ = supervisor(reading, alloc=alloc)
    verdict = safety.permit(ChargerLimit(1, amps))
    if verdict.allowed:
        fresh = reading.at >= NOW - 2.0 and reading.at - reading.heartbeat_since <= 5.0
        bms = reading.bms_current_max or 0.0  # unknown is 0, and 0 means 0
        assert fresh and math.isfinite(amps) and amps >= 0
        assert amps <= min(bms, 150.0, math.inf if alloc is None else alloc) + 0.05


@given(
    reading=readings(),
    verified=st.none() | st.floats(0, 300),
    verified_ago=st.sampled_from([0.0, 4.9, 5.1, 60.0]),
    off_for=st.sampled_from([0.0, 29.9, 30.0, 31.0]),
    alloc=st.none() | st.floats(0, 200),
)
def test_a_charger_is_switched_on_only_when_every_rule_holds(
    reading: SlotReading,
    verified: float | None,
    verified_ago: float,
    off_for: float,
    alloc: float | None,
) -> None:
    safety, clock = supervisor(reading, alloc=alloc)
    clock.t = NOW - off_for
    safety.applied(ChargerEnable(1, on=False), read_back=False)  # off since then
    if verified is not None:
        clock.t = NOW - verified_ago
        safety.applied(ChargerLimit(1, verified), read_back=verified)
    clock.t = NOW
    verdict = safety.permit(ChargerEnable(1, on=True))
    if verdict.allowed:
        bms = reading.bms_current_max
        assert reading.at >= NOW - 2.0 and reading.at - reading.heartbeat_since <= 5.0
        assert reading.pack_present is True
        assert bms is not None and bms > 0
        assert verified is not None and verified_ago <= 5.0
        assert verified <= min(bms, 150.0, math.inf if alloc is None else alloc) + 0.05
        # A charger that reports itself on since the off (a reading after it) is not switched
        # on again: the enable does not cycle its contactor.
        assert off_for >= 30.0 or (reading.charge_enable and reading.at > NOW - off_for)
    assert safety.permit(ChargerEnable(1, on=False)).allowed  # stopping: always


def test_a_command_that_keeps_the_invariant_clears_its_refusal() -> None:
    reading = SlotReading(
        slot=1, at=NOW, wall=0.0, status="idle", pack_present=True, pack_serial="P",
        pack_type="T", soc=50.0, soh=95.0, voltage=380.0, current=0.0, power_w=0.0,
        temp_max=25.0, temp_min=23.0, fault_code=0, energy_wh=0.0, charge_enable=False,
        current_limit=0.0, bms_voltage_max=403.2, bms_current_max=80.0, heartbeat=1,
        heartbeat_since=NOW,
    )  # fmt: skip
    safety, _ = supervisor(reading)
    assert not safety.permit(ChargerLimit(1, 100.0)).allowed  # above the BMS's 80 A
    assert "current_within_limits" in safety.causes(NOW)["slot:1"]
    assert safety.permit(ChargerLimit(1, 80.0)).allowed
    assert safety.causes(NOW) == {}


def test_the_min_off_time_counts_from_the_charger_s_own_report() -> None:
    """Off 29.9 s ago by our write: on again is refused, unless the charger reports itself on
    since (then the enable cycles nothing); the off-time counts from the latest report of off."""
    reading = SlotReading(
        slot=1, at=NOW, wall=0.0, status="idle", pack_present=True, pack_serial="P",
        pack_type="T", soc=50.0, soh=95.0, voltage=380.0, current=0.0, power_w=0.0,
        temp_max=25.0, temp_min=23.0, fault_code=0, energy_wh=0.0, charge_enable=False,
        current_limit=None, bms_voltage_max=403.2, bms_current_max=80.0, heartbeat=1,
        heartbeat_since=NOW,
    )  # fmt: skip
    for reports_on, allowed in ((False, False), (True, True)):
        safety, clock = supervisor(dataclasses.replace(reading, charge_enable=reports_on))
        clock.t = NOW - 29.9
        safety.applied(ChargerEnable(1, on=False), read_back=False)
        clock.t = NOW - 1.0
        safety.applied(ChargerLimit(1, 80.0), read_back=80.0)
        clock.t = NOW
        verdict = safety.permit(ChargerEnable(1, on=True))
        assert verdict.allowed is allowed, verdict.why
        if not allowed:
            assert "min_off_time" in verdict.why
            assert safety.on_allowed_in(1, NOW) == pytest.approx(0.1)


def test_unknown_or_zero_bms_and_stale_data_while_answering_switch_off() -> None:
    base = SlotReading(
        slot=1, at=NOW, wall=0.0, status="charging", pack_present=True, pack_serial="P",
        pack_type="T", soc=50.0, soh=95.0, voltage=380.0, current=100.0, power_w=0.0,
        temp_max=25.0, temp_min=23.0, fault_code=0, energy_wh=0.0, charge_enable=True,
        current_limit=100.0, bms_voltage_max=403.2, bms_current_max=200.0, heartbeat=1,
        heartbeat_since=NOW,
    )  # fmt: skip
    changes: list[tuple[dict[str, object], str | None]] = [
        ({}, None),
        ({"bms_current_max": 0.0}, "current_within_limits"),
        ({"bms_current_max": None}, "current_within_limits"),
        ({"pack_present": False}, "pack_present"),
        ({"heartbeat_since": NOW - 6.0}, "charger_data_fresh"),  # frozen, still answering
        ({"charge_enable": False, "bms_current_max": 0.0}, None),  # off already
    ]
    for change, expect in changes:
        safety, _ = supervisor(dataclasses.replace(base, **change))  # type: ignore[arg-type]
        found = safety.must_be_off(1, NOW)
        assert (found[0] if found else None) == expect, change
    # Stale because the rack does not answer: nothing can be written, nothing is asked.
    safety, _ = supervisor(dataclasses.replace(base, at=NOW - 10), online=False)
    assert safety.must_be_off(1, NOW) is None


# --- motion -------------------------------------------------------------------------------------


def plant_with_io(inputs: dict[str, bool], coils: dict[str, bool], *, age: float = 0.0,
                  robot_clear: bool | None = True, pack_locked: bool | None = True,
                  charger_off: bool | None = True) -> SafetySupervisor:  # fmt: skip
    reading = IoReading(NOW - age, 0.0, MappingProxyType(inputs), MappingProxyType(coils), None,
                        1, NOW - age)  # fmt: skip
    snap = IoSnapshot(NOW, True, reading, 0)
    book = SlotBook([RackInfo("r", (3,), 2.0, 5.0)])
    if charger_off is not None:
        slot = SlotReading(
            slot=3, at=NOW, wall=0.0, status="idle", pack_present=True, pack_serial="P",
            pack_type="T", soc=95.0, soh=95.0, voltage=380.0, current=0.0, power_w=0.0,
            temp_max=25.0, temp_min=23.0, fault_code=0, energy_wh=0.0,
            charge_enable=not charger_off, current_limit=0.0, bms_voltage_max=403.2,
            bms_current_max=200.0, heartbeat=1, heartbeat_since=NOW,
        )  # fmt: skip
        book.update(RackSnapshot("r", NOW, True, {3: slot}, 0))
    clock = Clock()
    return SafetySupervisor(
        Plant(book, 150.0, 30.0, io_stale_after_s=0.3, io_heartbeat_timeout_s=1.0,
              io=lambda: snap, robot_clear=lambda: robot_clear, pack_locked=lambda: pack_locked),
        clock=clock,
    )  # fmt: skip


def _on(facts: dict[str, bool], *names: str) -> bool:
    return all(facts.get(n) is True for n in names)


@given(
    inputs=st.fixed_dictionaries({n: st.booleans() for n in INPUTS}),
    coils=st.fixed_dictionaries({n: st.booleans() for n in COILS}),
    wanted=st.sets(st.sampled_from(COILS), min_size=1),
    age=st.sampled_from([0.0, 0.2, 0.4]),
    robot_clear=st.none() | st.booleans(),
    pack_locked=st.none() | st.booleans(),
)
def test_outputs_are_set_only_when_the_station_is_safe_for_them(
    inputs: dict[str, bool],
    coils: dict[str, bool],
    wanted: set[str],
    age: float,
    robot_clear: bool | None,
    pack_locked: bool | None,
) -> None:
    safety = plant_with_io(inputs, coils, age=age, robot_clear=robot_clear,
                           pack_locked=pack_locked)  # fmt: skip
    verdict = safety.permit(Outputs(frozenset(wanted)))
    if not verdict.allowed:
        return
    # Allowed: the I/O was fresh and people were safe ...
    assert age <= 0.3 and _on(inputs, "estop_ok", "light_curtain_clear", "plc_ok")
    if "lift_raise" in wanted:  # ... a secured vehicle, gate shut, robot away, not lowering
        assert _on(inputs, "vehicle_present", "vehicle_in_position", "vehicle_hv_off",
                   "doors_closed", "brake_gear_ok")  # fmt: skip
        assert inputs["gate_open"] is False and robot_clear is True
        assert "lift_lower" not in wanted and not coils["lift_lower"]
    if "lift_lower" in wanted:  # ... never lowered without a locked pack
        assert pack_locked is True and robot_clear is True
        assert "lift_raise" not in wanted and not coils["lift_raise"]
    if "signal_go" in wanted:  # ... never released without a locked pack, on the ground
        assert pack_locked is True and inputs["lift_down"] is True
    if "gate_open" in wanted:
        assert inputs["lift_down"] is True


@given(
    inputs=st.fixed_dictionaries({n: st.booleans() for n in INPUTS}),
    kind=st.sampled_from(list(MsgType)[:12]),
    target=st.sampled_from(list(Target)),
    charger_off=st.none() | st.booleans(),
)
def test_the_robot_moves_only_when_the_station_is_safe_for_it(
    inputs: dict[str, bool], kind: MsgType, target: Target, charger_off: bool | None
) -> None:
    safety = plant_with_io(inputs, dict.fromkeys(COILS, False), charger_off=charger_off)
    slot = 3 if kind in {MsgType.STORE, MsgType.FETCH} else None
    verdict = safety.permit(RobotMotion(kind, target if kind is MsgType.MOVE else None, slot))
    moves = kind not in {MsgType.STOP, MsgType.RESET, MsgType.STATUS, MsgType.SYNC}
    if not verdict.allowed or not moves:
        assert verdict.allowed or moves, "a command that moves nothing was refused"
        return
    assert _on(inputs, "estop_ok", "light_curtain_clear", "plc_ok")
    under = kind in {MsgType.UNLOCK, MsgType.REMOVE, MsgType.INSTALL, MsgType.LOCK} or (
        kind is MsgType.MOVE and target is Target.BAY
    )
    if under:  # under the bay only with the vehicle secured up on the lift
        assert _on(inputs, "lift_up", "vehicle_present", "vehicle_in_position",
                   "vehicle_hv_off", "doors_closed", "brake_gear_ok")  # fmt: skip
    if slot is not None:  # no handover at a live charger
        assert charger_off is True


# --- a refusal, where people see it ---------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_a_refusal_is_an_alarm_named_after_its_invariant_and_clears(
    tmp_path: Path, broker: Mosquitto
) -> None:
    spec = SimRackSpec("r1", [1, 2, 3], packs={1: SimPack("PK-A", soc=50.0)}, poll_period_s=0.05)
    async with running(tmp_path, broker, [spec], robot=True, plc=True) as rig:
        station = rig.station
        topic = f"swapstation/{station.config.station_id}"
        with Subscriber(broker, f"{topic}/#") as sub:
            # A charger switched on in an empty slot, by a command that skipped the first line.
            with pytest.raises(SafetyRefusedError, match="pack_present") as refused:
                await station.actuators.charger_enable(3, on=True)
            assert "limit_verified_before_enable" in str(refused.value)
            await until(lambda: "pack_present" in rig.alarm_codes("slot:3"), what="slot alarm")
            # The lift raised with no vehicle in the bay.
            with pytest.raises(SafetyRefusedError, match="vehicle_secured_before_lift"):
                await station.actuators.outputs({"lift_raise": True})
            await until(
                lambda: "vehicle_secured_before_lift" in rig.alarm_codes("station"),
                what="station alarm",
            )
            assert station.safety.counts["pack_present"] == 1
            # On MQTT: the events, and the state's alarms, name the invariant.
            await asyncio.to_thread(
                sub.wait_for,
                lambda line: (
                    line.startswith(f"{topic}/events ")
                    and '"command_refused"' in line
                    and '"invariant":"vehicle_secured_before_lift"' in line.replace(" ", "")
                ),
            )
            state = await asyncio.to_thread(
                sub.wait_for,
                lambda line: (
                    line.startswith(f"{topic}/state ")
                    and "vehicle_secured_before_lift" in line
                    and "pack_present" in line
                ),
            )
            alarms = {a["code"]: a for a in json.loads(state.split(" ", 1)[1])["alarms"]}
            assert alarms["vehicle_secured_before_lift"]["scope"] == "station"
            assert alarms["pack_present"]["slot"] == 3
            # A stop is no proof the cause is gone: the alarms stay ...
            await station.actuators.outputs({"lift_raise": False})
            await asyncio.sleep(0.3)  # a few control steps, a window to watch
            assert "vehicle_secured_before_lift" in rig.alarm_codes("station")
            # ... until the refusals stop for the hold time (shortened here from 60 s).
            station.safety.hold_s = 0.5
            await until(lambda: not rig.alarm_codes("station"), what="station alarm cleared")
        # The motion log has both, refused, with the facts they were judged on; its chain holds.
        entries = await station.journal.call(select_sync)
        refusals = [e for e in entries if e.verdict == "refused"]
        assert {r.invariant for e in refusals for r in e.refused} >= {
            "pack_present",
            "vehicle_secured_before_lift",
        }
        lift = next(e for e in refusals if e.device == "outputs")
        assert lift.facts["vehicle_present"] is False and lift.motions == ["lift_raise"]
        assert (await station.journal.call(verify_sync))[1] is None
