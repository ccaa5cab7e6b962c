"""A sceptical review of the event-driven slot control (commit 5ca17c3): missed wake-ups, spins.

The six defects it found (three busy loops on a deadline left in the past, a refused motion's
alarm waiting for a poll, the forecast's skip blind to the packs ready now, a waiting reason lost
in `_merged`) were fixed; their tests stay. The rest are what held under attack.

Harnesses: tests/stepped.py (one peer rack) and `TwoRacks` below (two peer racks, one slot
control, one supervisor; each rack polled on its own, as the daemon's pollers do).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.charging.circuits import Tree
from controller.charging.control import SlotControl
from controller.charging.limits import PowerLimits
from controller.charging.power import allocate
from controller.charging.setpoints import Rack
from controller.config.model import StationConfig
from controller.mqtt.slotpub import significant_change, slot_state
from controller.plant.alarms import slot_scope
from controller.plant.slots import RackInfo, SlotBook
from controller.safety.actuators import Actuators
from controller.safety.supervisor import STATION, Plant, SafetySupervisor
from controller.store.events import EventLog
from controller.store.journal import Journal
from controller.swap import dispense
from drivers.modbus.link import LinkParams, ModbusLink, TcpParams
from drivers.modbus.profile import load_profile
from drivers.rack import RackDriver, RackPoller, RackSnapshot
from drivers.robot.protocol import MsgType, SlotArgs
from tests.peers.rack import PeerRack
from tests.stepped import (
    CHARGER_MAX_A,
    HEARTBEAT_TIMEOUT_S,
    POLL_S,
    SteppedStation,
    VirtualClock,
    station_config,
)
from tests.support import REPO

T = TypeVar("T")
EXAMPLES = int(os.environ.get("REVIEW_EXAMPLES", "12"))
V_BMS = 403.2  # the peer's packs' BMS voltage limit: the allocator counts amps x this


# --- harness ---------------------------------------------------------------------------------


def steps_of_run(control: SlotControl, loop: asyncio.AbstractEventLoop, secs: float = 0.3) -> int:
    """How many steps `run()` makes in `secs` of real time while the (virtual) clock stands.

    Nothing is polled and the clock does not move: a control task that waits for its next
    deadline makes at most one step (the deadline due now); one that busy-loops makes thousands.
    """
    count = [0]
    original = control.step

    async def counting(now: float, slots: Any = None) -> None:
        count[0] += 1
        await original(now, slots)

    control.step = counting  # type: ignore[method-assign]

    async def go() -> None:
        task = asyncio.ensure_future(control.run())
        await asyncio.sleep(secs)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        loop.run_until_complete(go())
    finally:
        control.step = original  # type: ignore[method-assign]
    return count[0]


class TwoRacks:
    """Two peer racks ("a": slots 1..n, "b": slots n+1..2n), one slot control, one supervisor."""

    def __init__(self, n: int = 2, config: Any = None) -> None:
        self.loop = asyncio.new_event_loop()
        base = "/dev/shm" if Path("/dev/shm").is_dir() else None
        self.state = Path(tempfile.mkdtemp(prefix="tworacks-", dir=base))
        self.clock = VirtualClock()
        self.config = config or station_config()
        profile = load_profile(REPO / "config" / "profiles" / "simrack.toml")
        self.peers: dict[str, PeerRack] = {}
        self.drivers: dict[str, RackDriver] = {}
        self.pollers: dict[str, RackPoller] = {}
        infos = []
        self.slots: dict[str, list[int]] = {}
        for k, name in enumerate(("a", "b")):
            peer = PeerRack(n, charger_max_a=CHARGER_MAX_A)
            port = peer.start()
            link = ModbusLink(
                LinkParams(
                    name, tcp=TcpParams("127.0.0.1", port),
                    timeout_min_s=0.5, timeout_max_s=2.0, retries=0,  # never late on loopback
                )
            )  # fmt: skip
            slots = list(range(1 + k * n, 1 + (k + 1) * n))
            self.slots[name] = slots
            self.peers[name] = peer
            self.drivers[name] = RackDriver(name, profile, link, slots, unit_id=1, clock=self.clock)
            infos.append(RackInfo(name, tuple(slots), 2 * POLL_S + 0.5, HEARTBEAT_TIMEOUT_S))
        self.book = SlotBook(infos)
        self.journal: Journal = self.run(Journal.open(self.state))
        self.events = EventLog(self.journal, "tworacks")
        self.control: SlotControl | None = None
        self.safety = SafetySupervisor(
            Plant(
                self.book, CHARGER_MAX_A, self.config.charging.min_off_s,
                allocation=lambda s: self.control.allocation_of(s) if self.control else 0.0,
            ),
            clock=self.clock,
        )  # fmt: skip
        self.actuators = Actuators(self.safety, dict(self.drivers), self.book.rack_of)
        for name, driver in self.drivers.items():
            self.pollers[name] = RackPoller(
                driver, poll_period_s=POLL_S, offline_after=3, on_snapshot=self._on_snapshot
            )
        self.control = SlotControl(
            self.config, self.book,
            {name: Rack(self.drivers[name], self.pollers[name]) for name in self.drivers},
            self.journal, self.events, actuators=self.actuators, clock=self.clock,
        )  # fmt: skip
        self.run(self.control.load())

    def _on_snapshot(self, snapshot: RackSnapshot) -> None:
        assert self.control is not None
        self.control.on_snapshot(snapshot)

    @property
    def c(self) -> SlotControl:
        assert self.control is not None
        return self.control

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def advance(self, dt: float) -> None:
        self.clock.t += dt
        for peer in self.peers.values():
            peer.tick(dt)

    def poll(self, *racks: str) -> None:
        for name in racks:
            self.run(self.pollers[name].poll_once())

    def step(self, dt: float = POLL_S, racks: tuple[str, ...] = ("a", "b")) -> None:
        """Time passes; the named racks are polled; one event-driven step."""
        self.advance(dt)
        self.poll(*racks)
        self.run(self.c.step_pending(self.clock.t))

    def full_step(self, dt: float = POLL_S, racks: tuple[str, ...] = ("a", "b")) -> None:
        """Time passes; the named racks are polled; every slot looked at."""
        self.advance(dt)
        self.poll(*racks)
        self.c._pending.clear()
        self.run(self.c.step(self.clock.t))

    def charger(self, slot: int) -> tuple[bool, float]:
        for name, slots in self.slots.items():
            if slot in slots:
                i = slots.index(slot)
                peer = self.peers[name]
                return peer.charger_on(i), peer.limit_a(i)
        raise KeyError(slot)

    def set_pack(self, slot: int, serial: str | None, **kw: Any) -> None:
        for name, slots in self.slots.items():
            if slot in slots:
                self.peers[name].set_pack(slots.index(slot), serial, **kw)

    def in_force_kw(self) -> float:
        total = 0.0
        for slot in self.book.slots:
            on, limit = self.charger(slot)
            if on:
                total += limit * V_BMS
        return total / 1000.0

    def close(self) -> None:
        try:
            for driver in self.drivers.values():
                self.run(driver.link.close())
            self.run(self.journal.close())
        finally:
            for peer in self.peers.values():
                peer.stop()
            self.loop.close()
            shutil.rmtree(self.state, ignore_errors=True)


# --- defects: run() busy-loops on a deadline that stays in the past ---------------------------


def assert_no_spin(s: SteppedStation) -> None:
    """Every deadline ahead of the clock, and `run()` does not step back to back."""
    c = s.slot_control
    assert all(t > s.clock.t for t in c._due.values()), f"a deadline in the past: {c._due}"
    assert steps_of_run(c, s.loop) <= 2


@pytest.mark.timeout(60)
def test_no_busy_loop_while_a_stopped_charger_waits_for_its_minimum_off_time() -> None:
    """A stop for a passing cause (the BMS allowed 0 A for one poll), then the cause clears.

    The stop's `Writing((False, 0.0), t)` stays in `setpoints.writes`: `_wanted` returns at its
    min-off check before the "already there" branch that pops it. `_due_next` adds
    `writing.at + WRITE_RETRY_S` (= t + 1, in the past) on every step: `run()` computes a wait
    of 0 and steps again at once, for the rest of the minimum off-time (30 s by default).
    """
    s = SteppedStation(1, station_config(min_on_s=0.5, min_off_s=5.0))
    try:
        s.rack.set_pack(0, "PK-0", soc=40.0)
        for _ in range(8):
            s.step()
        assert s.on(0)
        s.rack.set_value(0, "bms_current_max", 0.0)
        s.step()
        assert not s.on(0)
        s.rack.set_value(0, "bms_current_max", 200.0)
        s.step()  # the stop is seen taken; the charger waits for its minimum off-time
        assert not s.on(0)
        assert_no_spin(s)
    finally:
        s.close()


@pytest.mark.timeout(60)
def test_no_busy_loop_while_a_rack_is_down_after_a_write() -> None:
    """A charger switched on; the rack stops answering before a poll confirms the write.

    The slot is stale and its charger unreachable (`_own_target` is None), so `_wanted`
    returns before it can pop or refresh `writes[slot]`; `_due_next` keeps `at + 1 s`, in the
    past, for as long as the rack is down (the poller's backoff: up to 30 s between polls).
    """
    s = SteppedStation(1, station_config(min_on_s=0.5, min_off_s=0.5))
    try:
        c = s.slot_control
        s.rack.set_pack(0, "PK-0", soc=40.0)
        s.step()
        assert s.on(0)
        s.rack.refuse_reads = 4  # the rack answers no read any more
        for _ in range(4):
            s.step()
        assert c.book.rack_offline("p")
        assert_no_spin(s)
    finally:
        s.close()


@pytest.mark.timeout(60)
def test_no_busy_loop_while_a_refused_switch_on_backs_off() -> None:
    """The supervisor refuses the enable (the swap claimed the slot): retried on the back-off.

    After two failures the pause is 2 s (then 4, 8 ... 60 s) but the deadline stays
    `at + 1 s`: for (pause - 1 s) of each round `run()` steps the slot without pause.
    """
    s = SteppedStation(1, station_config(min_on_s=0.5, min_off_s=0.5))
    try:
        c = s.slot_control
        s.handover.add(1)
        s.rack.set_pack(0, "PK-0", soc=40.0)
        for _ in range(5):
            s.step()
        writing = c.setpoints.writes[1]
        assert writing.failures >= 3 and not writing.due(s.clock.t)
        assert_no_spin(s)
    finally:
        s.close()


# --- defects: something changed and nothing wakes the slot control -------------------------


@pytest.mark.timeout(60)
def test_a_refused_robot_motion_is_an_alarm_without_waiting_for_a_poll() -> None:
    """The old control reconciled the station's refusals every 100 ms; now only a step does.

    A step comes with a rack's poll (1 s), or never while every rack is offline (the pollers'
    backoff, up to 30 s) or none is configured: the refusal alarm is raised, and its
    `command_refused` event journalled, that much later.
    """
    s = SteppedStation(1, station_config())
    try:
        c = s.slot_control
        s.rack.set_pack(0, "PK-0", soc=40.0)
        s.handover.clear()
        s.step()
        s.step()
        # A FETCH at slot 1 while its charger may be on: refused by the supervisor.
        s.rack.set_pack(0, "PK-0", soc=40.0)
        verdict = s.actuators.judge_robot(MsgType.FETCH, SlotArgs(slot=1))
        assert not verdict.allowed
        assert c.safety.causes(s.clock.t).get(STATION)
        # Half a poll period later, no poll yet: the control task would step what is due.
        s.clock.t += 0.5
        s.run(c.step_pending(s.clock.t))
        assert c.alarms.codes(STATION), "the refusal is not an alarm yet"
    finally:
        s.close()


@pytest.mark.timeout(60)
def test_the_forecast_follows_the_packs_ready_now(monkeypatch: pytest.MonkeyPatch) -> None:
    """A full pack, not charging (its demand never moves), is taken out of service.

    `ready_counts` drops to 0 (a disabled slot's pack cannot be dispensed) but the demand of
    the slot is the same `Demand` as before, so `demands_changed` does not move and
    `run_forecast` never recomputes: the published forecast keeps `ready_now = 1`.
    """
    raw = station_config().model_dump(mode="json")
    raw["power"]["forecast_every_s"] = 0.02
    cfg = StationConfig.model_validate(raw)
    s = SteppedStation(1, cfg)
    try:
        c = s.slot_control
        monkeypatch.setattr(dispense, "clock", SimpleNamespace(monotonic=s.clock))
        c.ready_counts = lambda: dispense.ready_counts(cfg, c)
        s.rack.set_pack(0, "PK-0", soc=100.0)
        s.rack.set_status(0, "full")
        for _ in range(3):
            s.step()

        async def forecast_for(secs: float) -> None:
            task = asyncio.ensure_future(c.run_forecast())
            await asyncio.sleep(secs)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        s.run(forecast_for(0.1))
        assert c.forecast is not None and c.forecast.types["STD75"].ready_now == 1

        async def both() -> None:
            task = asyncio.ensure_future(c.run_forecast())
            await asyncio.sleep(0.05)
            await c.operator.set_slot_enabled(1, enabled=False)  # out of service
            await c.step_pending(s.clock.t)
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        s.run(both())
        assert c.ready_counts() == {"STD75": 0}
        assert c.forecast.types["STD75"].ready_now == 0, "the forecast still counts the pack"
    finally:
        s.close()


@pytest.mark.timeout(60)
def test_a_waiting_reason_survives_the_switch_from_a_budget_to_none() -> None:
    """Slot 4 (rack b) takes under 1 A: waiting, 'the pack takes no current now'.

    The grid limit goes (a time window ends): the shared allocation (budget None) keeps the
    reason; the next poll, of rack a only, merges (`_committed_w` empty: every slot again),
    pops every slot's `waiting` and puts back only rack a's. Slot 4's blocker disappears
    from `blockers()` (the published `charging_blocked_by`, the status) until rack b polls.
    """
    budget: list[float | None] = [100_000.0]
    cfg = station_config(grid_kw=100.0)
    s = TwoRacks(2, cfg)
    original = PowerLimits.__dict__["budget_w"]
    PowerLimits.budget_w = lambda _self, _at: budget[0]  # type: ignore[method-assign, assignment]
    try:
        s.set_pack(1, "PK-1", soc=40.0)
        s.set_pack(4, "PK-4", soc=40.0, bms_current_max=0.5)  # takes < 1 A: waits
        for _ in range(8):  # past the start-up's minimum off-time
            s.step()
        budget[0] = None  # the window ends
        s.step()
        assert s.c.allocation.budget_w is None
        want = s.c.blockers(4)
        assert want == ["the pack takes no current now (too hot or cold)"], want
        s.step(racks=("a",))  # only rack a answers this period
        assert s.c.blockers(4) == want
    finally:
        PowerLimits.budget_w = original  # type: ignore[method-assign]
        s.close()


# --- what held ----------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_budget_reshare_on_rack_a_lowers_a_charger_on_rack_b_at_once() -> None:
    """A pack nearer to ready arrives on rack a: rack b's charger is lowered in that step."""
    s = TwoRacks(2, station_config(grid_kw=100.0))
    try:
        s.set_pack(3, "PK-3", soc=40.0)  # rack b
        for _ in range(10):
            s.step()
        assert s.charger(3) == (True, 150.0)
        s.set_pack(1, "PK-1", soc=80.0)  # rack a: nearer to ready, served first
        s.step(racks=("a",))  # only rack a polled: rack b is not
        on3, limit3 = s.charger(3)
        share3 = s.c.allocation.limits_a[3]
        assert share3 < 150.0
        assert limit3 <= share3 + 0.05 or not on3
        assert s.in_force_kw() <= 100.0
        assert s.charger(1)[0], "the nearer pack charges at once (the other was lowered first)"
        for _ in range(10):  # rack b silent meanwhile: counted at its worst case
            s.step(racks=("a",))
            assert s.in_force_kw() <= 100.0
    finally:
        s.close()


moves = st.lists(
    st.one_of(
        st.tuples(st.just("insert"), st.integers(1, 4), st.sampled_from([20.0, 60.0, 95.0]),
                  st.sampled_from([0.0, 30.0, 200.0])),
        st.tuples(st.just("remove"), st.integers(1, 4)),
        st.tuples(st.just("poll"), st.sampled_from([("a",), ("b",), ("a", "b"), ()]),
                  st.sampled_from([0.3, 1.0, 3.0, 6.0])),
        st.tuples(st.just("budget"), st.sampled_from([None, 40_000.0, 100_000.0])),
        st.tuples(st.just("disable"), st.integers(1, 4), st.booleans()),
        st.tuples(st.just("off"), st.integers(1, 4), st.booleans()),
        st.tuples(st.just("fail"), st.sampled_from(["a", "b"]),
                  st.sampled_from(["refuse_reads", "refuse_writes"]), st.sampled_from([None, 4])),
    ),
    min_size=1, max_size=14,
)  # fmt: skip


def _published_or_unchanged(s: TwoRacks, published: dict[int, Any], script: Any) -> None:
    """As the slot publisher: dirty slots are built and sent; every other slot must not have
    moved beyond a deadband since its last publish (else the publisher never sends it)."""
    now = s.clock.t

    def state(slot: int) -> Any:
        got = slot_state(s.c, slot, now)
        # The minimum off-time's "on again at" mixes wall time with the virtual clock.
        blocked = [b.split(": on again")[0] for b in got.charging_blocked_by]
        return got.model_copy(update={"charging_blocked_by": blocked})

    dirty, s.c.dirty = s.c.dirty, set()
    for slot in s.book.slots:
        if slot in dirty or slot not in published:
            published[slot] = state(slot)
            continue
        new = state(slot)
        assert not significant_change(published[slot], new, s.config.publish.deadbands), (
            f"slot {slot} changed but is not dirty: {published[slot]} -> {new} after {script}"
        )


@pytest.mark.timeout(600)
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=moves)
def test_two_racks_event_driven_equals_full_steps(script: list[tuple[Any, ...]]) -> None:
    """Two racks polled apart, budget switched on and off, operators: same chargers as full."""
    budget: list[float | None] = [None]
    original = PowerLimits.__dict__["budget_w"]
    PowerLimits.budget_w = lambda _self, _at: budget[0]  # type: ignore[method-assign, assignment]
    cfg = station_config(grid_kw=100.0, min_on_s=5.0, min_off_s=5.0)
    ev, full = TwoRacks(2, cfg), TwoRacks(2, cfg)
    try:
        for st_ in (ev, full):
            st_.set_pack(1, "PK-1", soc=50.0)
            st_.set_pack(3, "PK-3", soc=70.0)
        ev.step()
        full.full_step()
        published: dict[int, Any] = {}
        _published_or_unchanged(ev, published, [])
        for n, move in enumerate(script):
            kind, racks, dt = move[0], ("a", "b"), 1.0
            for st_ in (ev, full):
                if kind == "insert":
                    st_.set_pack(move[1], f"PK-{move[1]}-{n}", soc=move[2],
                                 bms_current_max=move[3])  # fmt: skip
                elif kind == "remove":
                    st_.set_pack(move[1], None)
                elif kind == "disable":
                    st_.run(st_.c.operator.set_slot_enabled(move[1], enabled=move[2]))
                elif kind == "off":
                    st_.run(st_.c.operator._set_manual_off(move[1], off=move[2]))
                elif kind == "fail":
                    setattr(st_.peers[move[1]], move[2], move[3])
            if kind == "budget":
                budget[0] = move[1]
            if kind == "poll":
                racks, dt = move[1], move[2]
            ev.step(dt, racks)
            full.full_step(dt, racks)
            for slot in ev.book.slots:
                assert ev.charger(slot) == full.charger(slot), f"after {script[: n + 1]}: {slot}"
            _published_or_unchanged(ev, published, script[: n + 1])
            alarms = {(a.scope, a.code) for a in ev.c.alarms.active()}
            assert alarms == {(a.scope, a.code) for a in full.c.alarms.active()}, script[: n + 1]
    finally:
        PowerLimits.budget_w = original  # type: ignore[method-assign]
        ev.close()
        full.close()


@pytest.mark.timeout(60)
def test_stale_data_with_no_poll_switches_the_charger_off_on_its_deadline() -> None:
    """The poller hangs (no snapshot at all): the stale deadline alone steps the slot."""
    s = SteppedStation(1, station_config(min_on_s=0.5, min_off_s=0.5))
    try:
        c = s.slot_control
        s.rack.set_pack(0, "PK-0", soc=40.0)
        for _ in range(3):
            s.step()
        assert s.on(0)
        for _ in range(6):  # 3 s, no poll
            s.clock.t += 0.5
            s.rack.tick(0.5)
            s.run(c.step_pending(s.clock.t))
        assert not s.on(0)
        assert "data stale" in " ".join(c.blockers(1))
        assert 1 in c.dirty
    finally:
        s.close()


@pytest.mark.timeout(60)
def test_a_slot_refusal_lapses_on_its_deadline_without_a_poll() -> None:
    s = SteppedStation(1, station_config(min_on_s=0.5, min_off_s=0.5))
    try:
        c = s.slot_control
        s.handover.add(1)
        s.rack.set_pack(0, "PK-0", soc=40.0)
        for _ in range(3):
            s.step()
        assert "no_charging_during_handover" in c.alarms.codes(slot_scope(1))
        c.manual_off.add(1)  # nobody asks for it again
        c.touch(1)
        s.step()
        t0 = s.clock.t
        while s.clock.t < t0 + 70:  # quiet: no poll, deadlines only
            s.clock.t += 0.5
            s.run(c.step_pending(s.clock.t))
        assert "no_charging_during_handover" not in c.alarms.codes(slot_scope(1))
    finally:
        s.close()


@pytest.mark.timeout(60)
def test_operator_commands_between_polls_act_without_a_poll() -> None:
    s = SteppedStation(2, station_config(min_on_s=0.5, min_off_s=0.5))
    try:
        c = s.slot_control
        s.rack.set_pack(0, "PK-0", soc=40.0)
        s.rack.set_pack(1, "PK-1", soc=40.0)
        for _ in range(3):
            s.step()
        assert s.on(0) and s.on(1)
        s.run(c.operator.set_slot_enabled(1, enabled=False))
        c.hold_for_swap(2, "a pack is being handed over")
        s.clock.t += 0.1
        s.run(c.step_pending(s.clock.t))  # no poll
        assert not s.on(0) and not s.on(1)
        assert {1, 2} <= c.dirty
    finally:
        s.close()


@pytest.mark.timeout(60)
def test_merged_totals_equal_a_full_allocation_after_budget_switches() -> None:
    budget: list[float | None] = [None]
    original = PowerLimits.__dict__["budget_w"]
    PowerLimits.budget_w = lambda _self, _at: budget[0]  # type: ignore[method-assign, assignment]
    s = TwoRacks(2, station_config(grid_kw=100.0))
    try:
        for slot, soc in ((1, 30.0), (2, 60.0), (3, 80.0)):
            s.set_pack(slot, f"PK-{slot}", soc=soc)
        for plan in ([None] * 4, [80_000.0] * 3, [None] * 3, [50_000.0, None, None]):
            for b in plan:
                budget[0] = b
                for racks in (("a",), ("b",)):
                    s.step(0.5, racks)
                    a = s.c.allocation
                    if a.budget_w is None:
                        ref = allocate(
                            s.c.demands, None, policy=s.config.power.policy,
                            min_current_a=s.config.power.min_current_a,
                            ready_soc=s.config.swap.min_dispense_soc, ready_now={}, min_ready={},
                        )  # fmt: skip
                        assert a.limits_a == ref.limits_a
                        assert abs(a.bound_w - ref.bound_w) < 1e-6
    finally:
        PowerLimits.budget_w = original  # type: ignore[method-assign]
        s.close()


@pytest.mark.timeout(60)
def test_views_are_not_served_stale_after_an_update_at_the_same_instant() -> None:
    s = SteppedStation(1, station_config())
    try:
        c = s.slot_control
        s.rack.set_pack(0, "PK-0", soc=40.0)
        s.step()
        before = c.book.view(1, s.clock.t)
        s.rack.set_pack(0, None)
        s.run(s.poller.poll_once())  # same virtual instant
        after = c.book.view(1, s.clock.t)
        assert after is not before and after.reading is not None
        assert not after.reading.pack_present
    finally:
        s.close()


@pytest.mark.timeout(120)
def test_a_feeder_without_a_grid_limit_is_never_overloaded_by_the_limits_in_force() -> None:
    """A circuit tree and no grid limit: a 100 kW feeder over slot 1 (rack a) and slot 3 (rack
    b) bounds their chargers at every step, the limits in force included, even while slot 1's
    charger will not take a lower limit (nothing is raised until it does); slot 4, on no
    feeder, charges at full current throughout."""
    s = TwoRacks(2, station_config())
    s.c.tree = Tree({"fa": 100_000.0}, {1: ("fa",), 3: ("fa",)})
    try:
        s.set_pack(1, "PK-1", soc=30.0)
        s.set_pack(4, "PK-4", soc=30.0)

        def feeder() -> float:
            return sum(s.charger(n)[1] * V_BMS for n in (1, 3) if s.charger(n)[0])

        for _ in range(20):  # past the start-up's minimum off-time: slot 1 alone, at full
            s.step()
        assert s.charger(1) == (True, float(CHARGER_MAX_A))
        # Slot 3 gets a pack nearer to ready: it comes first and slot 1 must come down, but
        # slot 1's charger ignores the lower limit: slot 3 is not switched on over the feeder.
        s.peers["a"].ignore_limit_writes = True
        s.set_pack(3, "PK-3", soc=80.0)
        for _ in range(30):
            s.step()
            assert feeder() <= 100_000.0 + 1e-6, (feeder(), s.charger(1), s.charger(3))
        assert s.charger(1) == (True, float(CHARGER_MAX_A))  # still ignoring
        assert not s.charger(3)[0]
        s.peers["a"].ignore_limit_writes = False
        for _ in range(30):
            s.step()
            assert feeder() <= 100_000.0 + 1e-6, (feeder(), s.charger(1), s.charger(3))
        assert s.charger(3) == (True, float(CHARGER_MAX_A))
        assert s.c.allocation.shared and s.c.allocation.budget_w is None
        assert s.charger(4) == (True, float(CHARGER_MAX_A))
        assert s.c.allocation_of(1) is not None
    finally:
        s.close()
