"""What a hostile review of the safety layer found (issue 12), each kept as a regression.

Each test is a scenario a reviewer wrote against the stepped station (tests/stepped.py: the
real slot control, supervisor and journal against the independent peer rack, on a virtual
clock) and that failed before its fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from controller.charging.power import PowerModel
from controller.errors import RefusedError, SafetyRefusedError
from controller.plant.slots import RackInfo, SlotBook, SlotView
from controller.runtime.daemon import SAFE_STATE_TIMEOUT_S
from controller.safety.actuators import Actuators
from controller.safety.commands import ChargerEnable
from controller.safety.supervisor import Plant, SafetySupervisor
from drivers.rack import SlotReading
from drivers.robot.protocol import MsgType, SlotArgs
from drivers.stationio import IoReading, IoSnapshot, StationIoDriver
from tests.stepped import SteppedStation, station_config

V_BMS = 403.2  # the peer's packs' BMS voltage limit: the allocator counts amps x this


@pytest.fixture
def st() -> Any:
    station = SteppedStation(3)
    yield station
    station.close()


def _charging(st: SteppedStation, *slots: int, soc: float = 40.0) -> None:
    for i in slots:
        st.rack.set_pack(i, f"PK-{i}", soc=soc)
    for _ in range(10):  # past the start-up's minimum off-time
        st.step()
    assert all(st.on(i) for i in slots)


def test_limits_in_force_stay_within_the_budget_while_a_lowering_has_not_taken() -> None:
    st = SteppedStation(3, station_config(grid_kw=100.0))
    try:
        st.rack.set_pack(0, "PK-A", soc=60.0)
        st.rack.set_pack(1, "PK-B", soc=50.0)
        for _ in range(12):
            st.step()
        # A pack nearer to ready comes: slot 1 is to be lowered, slot 2 stopped; the rack
        # refuses writes for two steps, then takes them again.
        st.rack.set_pack(2, "PK-C", soc=80.0)
        st.rack.refuse_writes = 4
        st.step()
        st.step()
        st.rack.refuse_writes = None
        for _ in range(6):
            st.step()
            in_force = sum(st.rack.limit_a(i) * V_BMS for i in range(3) if st.on(i)) / 1000
            assert in_force <= 100.0, f"limits in force {in_force:.1f} kW, budget 100 kW"
    finally:
        st.close()


def test_a_stop_for_a_cause_is_retried_every_second_not_on_the_back_off(
    st: SteppedStation,
) -> None:
    _charging(st, 0)
    st.rack.set_value(0, "temp_max", 60.0)  # over temperature: trip, stop now
    st.rack.refuse_writes = 6  # the rack is busy for a while
    for _ in range(32):
        st.step(0.5)
    st.rack.refuse_writes = None
    back = st.clock.t
    while st.on(0):
        st.step(0.5)
        assert st.clock.t - back <= 1.0, "the stop waited for its back-off"


def test_a_charger_is_not_switched_on_while_the_swap_claims_its_slot(st: SteppedStation) -> None:
    """The slot control's start is two writes; the swap may claim the slot in between."""
    st.rack.set_pack(0, "PK-A", soc=95.0)
    st.slot_control.manual_off.add(1)
    for _ in range(10):
        st.step()
    st.slot_control.manual_off.discard(1)  # it may charge: the next step starts it
    seen: dict[str, Any] = {}
    original = st.actuators.charger_limit

    async def limit_then_the_swap_runs(slot: int, amps: float) -> float:
        back = await original(slot, amps)
        st.handover.add(1)  # during the limit's read-back, the swap claims the slot ...
        st.slot_control.hold_for_swap(1, "a pack is being handed over")
        seen["fetch"] = st.actuators.judge_robot(MsgType.FETCH, SlotArgs(slot=1))
        return back

    st.actuators.charger_limit = limit_then_the_swap_runs  # type: ignore[method-assign]
    st.step()
    assert not st.on(0), "switched on in a slot the swap had claimed"
    st.actuators.charger_limit = original  # type: ignore[method-assign]
    with pytest.raises(SafetyRefusedError, match="no_charging_during_handover"):
        st.run(st.actuators.charger_enable(1, on=True))


def test_the_safe_state_switches_a_slow_rack_off_within_its_budget() -> None:
    st = SteppedStation(8, timeout_max_s=1.0, timeout_min_s=0.5)
    try:
        _charging(st, *range(8))
        st.rack.delay_s = 0.15  # answers, slowly: a write and its read-back take 0.3 s

        async def safe_state() -> None:  # as the daemon runs the hook
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SAFE_STATE_TIMEOUT_S):
                    await st.slot_control.stop_all()

        st.run(safe_state())
        assert [i + 1 for i in range(8) if st.on(i)] == []
    finally:
        st.rack.delay_s = 0.0
        st.close()


def test_an_override_is_an_alarm_and_a_motion_log_entry_and_a_stop_does_not_clear_it(
    st: SteppedStation,
) -> None:
    _charging(st, 0)
    own = st.slot_control._own_target
    st.slot_control._own_target = lambda view, now: (  # type: ignore[method-assign]
        (True, 50.0) if view.slot == 1 else own(view, now)  # the first line misses ...
    )
    st.rack.set_value(0, "bms_current_max", 0.0)  # ... a BMS that allows 0 A
    codes: set[tuple[str, str]] = set()
    for _ in range(3):
        st.step()
        codes |= {(a.scope, a.code) for a in st.slot_control.alarms.active()}
    assert not st.on(0)
    assert ("slot:1", "current_within_limits") in codes
    refused = [e for e in st.motion_log() if e.verdict == "refused"]
    assert refused and refused[0].refused[0].invariant == "current_within_limits"


def test_an_operators_off_survives_a_restart(tmp_path: Path) -> None:
    st = SteppedStation(3, state=tmp_path)
    try:
        _charging(st, 0)
        st.run(st.slot_control.operator.set_charging(1, enable=False))
        st.step()
        assert not st.on(0)
    finally:
        st.close()
    again = SteppedStation(3, state=tmp_path)
    try:
        again.rack.set_pack(0, "PK-0", soc=40.0)
        for _ in range(12):
            again.step()
        assert not again.on(0), "the policy switched an operator's off back on"
        assert "charging switched off by an operator" in again.slot_control.blockers(1)
    finally:
        again.close()


def test_the_first_line_sees_a_drop_out_the_ledger_has_not_seen_yet(st: SteppedStation) -> None:
    _charging(st, 0)
    st.rack.set_setpoint(0, "charge_enable", 0)  # drops out; polled, not yet stepped
    st.run(st.poller.poll_once())
    blockers = st.slot_control.blockers(1)
    assert any("minimum off-time" in b for b in blockers), blockers
    with pytest.raises(RefusedError, match="minimum off-time"):
        st.run(st.slot_control.operator.set_charging(1, enable=True))


def test_an_operators_switch_on_is_bounded_by_the_bms(st: SteppedStation) -> None:
    st.rack.set_pack(0, "PK-A", soc=40.0, bms_current_max=80.0)
    st.run(st.slot_control.operator.set_charging(1, enable=False))
    for _ in range(10):
        st.step()
    with pytest.raises(RefusedError, match="above the pack's BMS limit 80 A"):
        st.run(st.slot_control.operator.set_charging(1, enable=True, limit_a=120.0))
    st.step()
    assert not st.on(0), "a refused switch-on went ahead anyway"
    st.run(st.slot_control.operator.set_charging(1, enable=True))  # no limit: the BMS's
    assert st.on(0) and st.rack.limit_a(0) == 80.0


def test_a_full_pack_is_not_charged_again_when_its_charger_reports_idle(
    st: SteppedStation,
) -> None:
    _charging(st, 0, soc=99.0)
    st.rack.set_status(0, "full")
    st.step()
    st.step()
    assert not st.on(0)
    st.rack.set_status(0, None)  # the rack says idle once it is off
    for _ in range(10):
        st.step()
    assert not st.on(0)
    assert [on for _, on in st.rack.enable_transitions(0)] == [True, False]


def test_the_starts_of_a_step_are_bounded_in_time() -> None:
    st = SteppedStation(6, timeout_max_s=1.0)
    try:
        for i in range(6):
            st.rack.set_pack(i, f"PK-{i}", soc=40.0)
        for _ in range(6):  # within the start-up's off-time: nothing switched on yet
            st.step()
        st.rack.delay_s = 0.25  # every start: write, read-back, write, read-back
        started = time.monotonic()
        st.step()
        took = time.monotonic() - started
        assert took < 3.0, f"one step took {took:.1f} s with a slow rack"
    finally:
        st.rack.delay_s = 0.0
        st.close()


# --- the supervisor and the actuators alone ---------------------------------------------------

NOW = 100.0


def _reading(**change: Any) -> SlotReading:
    base = SlotReading(
        slot=1, at=NOW, wall=0.0, status="charging", pack_present=True, pack_serial="P",
        pack_type="T", soc=50.0, soh=95.0, voltage=380.0, current=100.0, power_w=0.0,
        temp_max=25.0, temp_min=23.0, fault_code=0, energy_wh=0.0, charge_enable=True,
        current_limit=100.0, bms_voltage_max=403.2, bms_current_max=200.0, heartbeat=1,
        heartbeat_since=NOW,
    )  # fmt: skip
    return SlotReading(**{**{f: getattr(base, f) for f in base.__slots__}, **change})


def _supervisor(reading: SlotReading, **plant: Any) -> SafetySupervisor:
    from drivers.rack import RackSnapshot

    book = SlotBook([RackInfo("r", (1,), 2.0, 5.0)])
    book.update(RackSnapshot("r", NOW, True, {1: reading}, 0))
    return SafetySupervisor(Plant(book, 150.0, 30.0, **plant), clock=lambda: NOW)


@pytest.mark.parametrize("volts", [None, 0.0])
def test_the_second_line_knows_the_bms_voltage_limit(volts: float | None) -> None:
    safety = _supervisor(_reading(bms_voltage_max=volts))
    assert safety.must_be_off(1, NOW) is not None
    assert not safety.judge(ChargerEnable(1, on=True)).allowed


def test_a_stop_does_not_clear_a_refusal() -> None:
    safety = _supervisor(_reading())
    safety.overrule("slot:1", "current_within_limits", "the BMS allows no current", now=NOW)
    safety.permit(ChargerEnable(1, on=False))
    assert "current_within_limits" in safety.causes(NOW).get("slot:1", {})


def test_a_charger_whose_enable_is_unknown_counts_at_its_worst_case() -> None:
    model = PowerModel(station_config(grid_kw=100.0))

    def view(enable: bool | None) -> SlotView:
        return SlotView(1, "r", _reading(charge_enable=enable, current=0.0), True, 0.0, None)

    on = model.demand(view(True), wants=False).committed_w
    assert model.demand(view(None), wants=False).committed_w >= on > 0


class _Coils:
    """A PLC's coils as a test double: only what the actuators write is looked at."""

    def __init__(self) -> None:
        self.sent: list[dict[str, bool]] = []

    async def set_coils(self, **values: bool) -> None:
        self.sent.append(values)


def _io(inputs: dict[str, bool], clock: list[float]) -> IoSnapshot:
    r = IoReading(clock[0], 0.0, MappingProxyType(inputs), MappingProxyType({}), None, 1, clock[0])
    return IoSnapshot(clock[0], True, r, 0)


def test_an_output_is_judged_again_just_before_it_is_written() -> None:
    clock = [NOW]
    inputs = {"estop_ok": True, "light_curtain_clear": True, "plc_ok": True, "lift_down": True}
    safety = SafetySupervisor(
        Plant(SlotBook([]), 150.0, 30.0, io=lambda: _io(inputs, clock)), clock=lambda: clock[0]
    )
    coils = _Coils()
    act = Actuators(safety, {}, {}, io=coils)  # type: ignore[arg-type]
    verdict = act.judge_outputs({"gate_open": True})  # before the write-ahead commit
    assert verdict.allowed
    clock[0] += 1.5  # the commit took a while; meanwhile the E-stop opened
    inputs["estop_ok"] = False
    with pytest.raises(SafetyRefusedError, match="people_safe"):
        asyncio.run(act.outputs({"gate_open": True}, verdict=verdict))
    assert coils.sent == []


def test_what_a_refused_outputs_command_clears_is_still_cleared() -> None:
    inputs = {"estop_ok": True, "light_curtain_clear": True, "plc_ok": True, "lift_up": True}
    clock = [NOW]
    safety = SafetySupervisor(
        Plant(SlotBook([]), 150.0, 30.0, io=lambda: _io(inputs, clock),
              robot_clear=lambda: True, pack_locked=lambda: False),
        clock=lambda: clock[0],
    )  # fmt: skip
    coils = _Coils()
    act = Actuators(safety, {}, {}, io=coils)  # type: ignore[arg-type]
    with pytest.raises(SafetyRefusedError, match="locked_pack_before_lowering"):
        asyncio.run(act.outputs({"lift_raise": False, "lift_lower": True}))
    assert coils.sent == [{"lift_raise": False}]


def test_the_io_double_matches_the_driver() -> None:
    """The double above writes what the real driver's `set_coils` takes (keyword coils)."""
    assert "values" in StationIoDriver.set_coils.__code__.co_varnames
