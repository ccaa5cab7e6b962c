"""Random interleavings of commands, vehicle behaviour and faults against the real stack.

Hypothesis drives a running station (the daemon in-process; rack, robot, PLC and vehicle
simulated over their real transports) with operator commands, a vehicle that comes, misbehaves
and leaves, and injected faults. After every step:

- no motion command went out while one of its interlocks was false;
- the car was never lowered without a locked pack;
- every pack is in exactly one place (none lost, none doubled);
- the swap records verify and no swap is recorded twice.

At the end an operator brings the station back to idle from wherever it is (reset, recover,
abort, the vehicle leaves), and then the inventory matches where the packs are and every
swap that was started has exactly one record.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from controller.errors import RefusedError
from controller.store.journal import FILENAME
from controller.swap.inventory import Place
from controller.swap.requests import Outcome
from controller.swap.sequencer import Sequencer
from drivers.robot.protocol import FaultCode, MsgType
from simstation.charger import SimPack
from simstation.station import SimRackSpec
from tests.rig import Rig, running
from tests.support import assert_motion_within_interlocks, motion_log

SPEED = 300.0
SECTIONS = "[swap]\nmin_dispense_soc = 80\n"
ROBOT_COMMANDS = [MsgType.MOVE, MsgType.UNLOCK, MsgType.REMOVE, MsgType.STORE, MsgType.FETCH,
                  MsgType.INSTALL, MsgType.LOCK, MsgType.HOME]  # fmt: skip


class SwapStation(RuleBasedStateMachine):
    """One running station per example."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.tmp = Path(tempfile.mkdtemp(prefix="swap-stateful-"))
        packs = {
            1: SimPack("PK-A", soc=95.0),
            2: SimPack("PK-B", soc=92.0),
            3: SimPack("PK-C", soc=40.0),
        }
        spec = SimRackSpec("r1", [1, 2, 3, 4, 5, 6], packs=packs, poll_period_s=0.05)
        self.cm = running(
            self.tmp, None, [spec], speed=SPEED, sections=SECTIONS, robot=True, plc=True
        )
        self.rig: Rig = self.run(self.cm.__aenter__())
        seq = self.rig.station.sequencer
        assert seq is not None
        self.seq: Sequencer = seq
        self.serials = {"PK-A", "PK-B", "PK-C"}
        self.started: set[str] = set()
        self.vehicles = 0
        self.rack_down = False
        self.phases: set[str] = set()
        self.seq.swap.on_phase.append(lambda _before, after: self.phases.add(after))
        self.run(self.wait_for(lambda: not self.seq.blocking, 10))

    # --- plumbing ------------------------------------------------------------------------------

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def _run_step(self) -> None:
        """Between two of hypothesis' steps the station runs on for a moment."""
        self.run(asyncio.sleep(0.03))

    async def wait_for(self, predicate: Any, timeout: float) -> bool:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    def request(self, name: str, **args: str) -> Outcome | None:
        try:
            outcome = self.run(self.seq.request(name, by="hypothesis", **args))
        except RefusedError:
            return None
        assert isinstance(outcome, Outcome)
        return outcome

    @property
    def plc(self) -> Any:
        assert self.rig.sim.plc is not None
        return self.rig.sim.plc

    # --- the operator and the back end ------------------------------------------------------

    @rule()
    def start_swap(self) -> None:
        vehicle = self.plc.vehicle
        vid = vehicle.vehicle_id if vehicle is not None else f"EV-{self.vehicles + 1}"
        started = self.request("start_swap", vehicle_id=vid, pack_type="STD75")
        if started is not None:
            assert started.result is not None
            self.started.add(str(started.result["swap_id"]))

    @rule(reason=st.sampled_from(["operator", "vehicle problem"]))
    def abort(self, reason: str) -> None:
        self.request("abort", reason=reason)

    @rule()
    def reset_fault(self) -> None:
        self.request("reset_fault")

    @rule(decision=st.sampled_from(["resume", "abort", "clear"]))
    def recover(self, decision: str) -> None:
        self.request("recover", decision=decision)

    # --- the vehicle ------------------------------------------------------------------------

    @precondition(lambda self: self.plc.vehicle is None)
    @rule(positioning=st.sampled_from([1.0, 10.0, 30.0]))
    def vehicle_arrives(self, positioning: float) -> None:
        self.vehicles += 1
        serial = f"OLD-{self.vehicles}"
        self.serials.add(serial)
        expected = self.seq.ctx.vehicle_id if self.seq.ctx.active else ""
        vid = expected or f"EV-{self.vehicles}"
        self.rig.sim.arrive(vid, serial=serial, soc=20.0, positioning_s=positioning, leave_s=5.0)

    @precondition(lambda self: self.plc.vehicle is not None)
    @rule(what=st.sampled_from(["open_door", "close_door", "press_brake", "release_brake",
                                "power_up", "power_down"]))  # fmt: skip
    def vehicle_misbehaves(self, what: str) -> None:
        getattr(self.plc, what)()

    @precondition(lambda self: self.plc.vehicle is not None and self.plc.lift.down)
    @rule()
    def vehicle_leaves_early(self) -> None:
        self.plc.leave_early()

    # --- faults ---------------------------------------------------------------------------------

    @rule(pressed=st.booleans())
    def estop(self, pressed: bool) -> None:
        self.plc.estop_ok = not pressed

    @rule(clear=st.booleans())
    def light_curtain(self, clear: bool) -> None:
        self.plc.light_curtain_clear = clear

    @rule(kind=st.sampled_from(ROBOT_COMMANDS))
    def robot_jams(self, kind: MsgType) -> None:
        robot = self.rig.sim.robot
        assert robot is not None
        robot.faults.jam_on = kind

    @rule()
    def robot_faults_when_idle(self) -> None:
        robot = self.rig.sim.robot
        assert robot is not None
        with contextlib.suppress(RuntimeError):  # busy: not now
            robot.inject_fault(FaultCode.INTERNAL)

    @rule()
    def rack_flaps(self) -> None:
        rack = self.rig.sim.racks["r1"]
        self.run(rack.come_back() if self.rack_down else rack.go_offline())
        self.rack_down = not self.rack_down

    @rule(seconds=st.sampled_from([0.1, 0.3, 0.6]))
    def time_passes(self, seconds: float) -> None:
        self.run(asyncio.sleep(seconds))

    # Swaps must get somewhere for the faults to strike them at every step: the rules that
    # move a swap on are drawn more often (hypothesis picks among rules evenly).
    @rule()
    def a_swap_goes_on(self) -> None:
        if not self.seq.ctx.active:
            self.start_swap()
        if self.plc.vehicle is None:
            self.vehicle_arrives(1.0)
        self.run(asyncio.sleep(0.2))

    @rule()
    def another_swap_goes_on(self) -> None:
        self.a_swap_goes_on()

    @rule(seconds=st.sampled_from([0.1, 0.3]))
    def more_time_passes(self, seconds: float) -> None:
        self.time_passes(seconds)

    # --- invariants -------------------------------------------------------------------------------

    @invariant()
    def station_runs_on(self) -> None:
        self._run_step()

    @invariant()
    def no_motion_against_interlocks(self) -> None:
        assert_motion_within_interlocks(motion_log(self.rig.station.config.storage.dir))

    @invariant()
    def never_lowered_without_a_locked_pack(self) -> None:
        assert self.plc.unsafe_lowerings == 0

    @invariant()
    def packs_are_conserved(self) -> None:
        places = self.rig.sim.pack_places()
        serials = [s for s, _ in places]
        assert len(serials) == len(set(serials)), f"a pack in two places: {places}"
        assert set(serials) == self.serials, f"packs lost: {self.serials - set(serials)}"

    @invariant()
    def records_are_consistent(self) -> None:
        path = self.rig.station.config.storage.dir / FILENAME
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
        try:
            ids = [r[0] for r in conn.execute("SELECT swap_id FROM swap_records")]
        finally:
            conn.close()
        assert len(ids) == len(set(ids))
        assert set(ids) <= self.started

    # --- the end: an operator path back to idle, then everything adds up -------------------------

    def teardown(self) -> None:
        for phase in ("removing", "installing", "releasing", "fault", "estop", "aborting",
                      "recovery_required"):  # fmt: skip
            if phase in self.phases:
                event(f"reached {phase}")
        try:
            self.run(self.back_to_idle())
            self.check_settled()
        finally:
            try:
                self.run(self.cm.__aexit__(None, None, None))
            finally:
                self.loop.close()

    async def back_to_idle(self) -> None:
        plc, seq = self.plc, self.seq
        plc.estop_ok = True
        plc.light_curtain_clear = True
        if self.rack_down:
            await self.rig.sim.racks["r1"].come_back()
            self.rack_down = False
        deadline = time.monotonic() + 40
        while seq.ctx.active or seq.recovering:
            assert time.monotonic() < deadline, f"stuck in {seq.ctx.state}: {seq.blocking}"
            if plc.vehicle is not None:
                plc.close_door()
                plc.release_brake()
                if not plc.vehicle.hv_off and seq.ctx.state != "releasing":
                    plc.power_down()
            state = seq.ctx.state
            with contextlib.suppress(RefusedError):
                if state in {"fault", "estop"}:
                    await seq.request("reset_fault", by="teardown")
                elif state == "recovery_required":
                    try:
                        await seq.request("recover", decision="abort", by="teardown")
                    except RefusedError:
                        await seq.request("recover", decision="clear", by="teardown")
                elif state in {"authorised", "waiting_for_vehicle", "positioned"}:
                    await seq.request("abort", reason="teardown", by="teardown")
            await asyncio.sleep(0.05)

    def check_settled(self) -> None:
        seq = self.seq
        ok = self.run(
            self.wait_for(
                lambda: all(
                    v.fresh is not None for v in self.rig.station.book.views(time.monotonic())
                ),
                10,
            )
        )
        assert ok, "slot data never came back"
        self.run(asyncio.sleep(2.5))  # past the handover settle time: the inventory follows
        path = self.rig.station.config.storage.dir / FILENAME
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
        try:
            ids = {r[0] for r in conn.execute("SELECT swap_id FROM swap_records")}
        finally:
            conn.close()
        assert ids == self.started, "every started swap has exactly one record"
        in_slots = {s: p for s, p in self.rig.sim.pack_places() if p.startswith("slot ")}
        known = {
            e.serial: f"slot {e.slot}"
            for e in seq.swap.inventory.packs.values()
            if e.place is Place.SLOT
        }
        assert known == in_slots
        robot = self.rig.sim.robot
        assert robot is not None
        on_robot = seq.swap.inventory.on_robot()
        assert (on_robot.serial if on_robot else None) == (
            robot.holding.serial if robot.holding else None
        )


TestSwapStation = SwapStation.TestCase
TestSwapStation.settings = settings(
    max_examples=8,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
TestSwapStation = pytest.mark.timeout(480)(TestSwapStation)
