"""Slot control and the safety supervisor against adversarial chargers, step by step.

Hypothesis drives the independent peer rack (tests/peers/rack.py, pyModbusTCP, over real
Modbus TCP) with what our own simulator never sends: readings in and out of range, BMS limits
of 0 and garbage, status flips, packs that come and go, heartbeats that freeze, limits that are
clamped or ignored, refused writes, replies that slow down after a fast start, silence, and a
charger that drops out by itself. The real link, driver, slot book, slot control, supervisor,
actuators and journal (a real SQLite file) run on a virtual clock: each step advances it,
ticks the rack's physics, polls once and runs one control step.

After every step, every write the rack received is judged against the rules of
docs/architecture.md (written here again, independently of
controller/safety/supervisor.py), with the
rack's state as the test set it:

- a limit never above min(BMS limit, the charger's 150 A, the allocation), an implausible or
  missing BMS limit counting as 0;
- a charger switched on only with a pack present, a BMS limit above 0, fresh data (its
  heartbeat moving), after a limit that the charger took, and at least `MIN_OFF_S` after it
  was last off (so at most one switch-on per slot per `MIN_OFF_S`);
- a charger whose heartbeat froze while the rack answers is switched off.

`SWAPSTATION_LONG=1` runs the long version (>= 10,000 steps; see docs/operations.md).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from tests.peers.rack import Write
from tests.stepped import CHARGER_MAX_A, HEARTBEAT_TIMEOUT_S, POLL_S, SteppedStation, station_config

LONG = os.environ.get("SWAPSTATION_LONG") == "1"
TOTALS: Counter[str] = Counter()  # over every example of the module, for the long run's figures
N = 3  # slots
MIN_OFF_S = 5.0
MIN_ON_S = 5.0
PLAUSIBLE_BMS_A = 600.0  # the profile's plausible range of bms_current_max (docs/register-map.md)
CLAMP_A = 100.0


@dataclass
class SlotTruth:
    """What the test made of one charger, in its own terms (not the controller's)."""

    present: bool = False
    bms_a: float | None = None  # None: implausible, garbage or absent
    frozen_since: float | None = None  # virtual time the heartbeat froze
    last_off: float = 1000.0  # virtual time it was last off (start: off)
    on: bool = False  # as the rack had it at the end of the last step
    register_a: float = 0.0  # the rack's current_limit register, from its write log
    ons: list[float] = field(default_factory=list)  # virtual times we switched it on


class ChargingControl(RuleBasedStateMachine):
    """One station (a peer rack of three chargers) per example."""

    grid_kw: float | None = None

    def __init__(self) -> None:
        super().__init__()
        self.st = SteppedStation(
            N,
            station_config(self.grid_kw, min_on_s=MIN_ON_S, min_off_s=MIN_OFF_S),
            timeout_max_s=0.03,
        )
        self.rack, self.clock, self.control = self.st.rack, self.st.clock, self.st.slot_control
        self.actuators = self.st.actuators
        self.truth = [SlotTruth() for _ in range(N)]
        self.steps = 0
        self.breaks: list[str] = []

    def teardown(self) -> None:
        TOTALS["examples"] += 1
        TOTALS["control steps"] += self.steps
        TOTALS["switch-ons"] += sum(len(t.ons) for t in self.truth)
        TOTALS["supervisor refusals"] += sum(self.actuators.safety.counts.values())
        TOTALS["invariant breaks"] += len(self.breaks)
        event(f"control steps: {self.steps // 10 * 10}+")
        event(f"switch-ons: {min(5, sum(len(t.ons) for t in self.truth))}")
        refused = sum(self.actuators.safety.counts.values())
        event(f"supervisor refusals: {'some' if refused else 'none'}")
        self.st.close()

    # --- the adversary (each move, then a poll period passes) ---------------------------------

    @initialize()
    def healthy_packs(self) -> None:
        for i in range(N):
            self.rack.set_pack(i, f"PK-{i}", soc=30.0 + 20 * i)
            self.truth[i].present, self.truth[i].bms_a = True, 200.0
        self._step(POLL_S)

    @rule(
        i=st.integers(0, N - 1),
        soc=st.floats(0, 100),
        bms=st.sampled_from([0.0, 0.1, 5.0, 80.0, 200.0, 600.0]),
        status=st.sampled_from([None, "idle", "full"]),
    )
    def insert_pack(self, i: int, soc: float, bms: float, status: str | None) -> None:
        self.rack.set_pack(i, f"PK-{i}-{self.steps}", soc=round(soc, 1), bms_current_max=bms)
        self.rack.set_status(i, status)
        t = self.truth[i]
        t.present, t.bms_a = True, bms
        self._step(POLL_S)

    @rule(i=st.integers(0, N - 1))
    def remove_pack(self, i: int) -> None:
        self.rack.set_pack(i, None)
        self.truth[i].present, self.truth[i].bms_a = False, None
        self._step(POLL_S)

    @rule(i=st.integers(0, N - 1), bms=st.floats(0, 6553.5) | st.sampled_from([0.0, 0.05]))
    def bms_limit_changes(self, i: int, bms: float) -> None:
        if self.truth[i].present:
            bms = round(bms, 1)
            self.rack.set_value(i, "bms_current_max", bms)
            self.truth[i].bms_a = bms if bms <= PLAUSIBLE_BMS_A else None
        self._step(POLL_S)

    @rule(
        i=st.integers(0, N - 1),
        name=st.sampled_from(["soc", "voltage", "temp_max", "temp_min", "current", "soh"]),
        words=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=2),
    )
    def garbage(self, i: int, name: str, words: list[int]) -> None:
        width = 2 if name == "current" else 1
        self.rack.set_raw(i, name, (words * 2)[:width])
        self._step(POLL_S)

    @rule(i=st.integers(0, N - 1), words=st.sampled_from([[0xFFFF], [6001], [0]]))
    def bms_garbage(self, i: int, words: list[int]) -> None:
        if self.truth[i].present:
            self.rack.set_raw(i, "bms_current_max", words)
            value = words[0] / 10
            self.truth[i].bms_a = value if value <= PLAUSIBLE_BMS_A else None
        self._step(POLL_S)

    @rule(i=st.integers(0, N - 1), status=st.sampled_from([None, "full", "fault", "disabled"]))
    def status_flips(self, i: int, status: str | None) -> None:
        self.rack.set_status(i, status)
        self._step(POLL_S)

    @rule(i=st.integers(0, N - 1), code=st.sampled_from([0, 7, 0xFFFF]))
    def charger_fault(self, i: int, code: int) -> None:
        self.rack.set_fault(i, code)
        self._step(POLL_S)

    @rule(i=st.integers(0, N - 1), frozen=st.booleans())
    def heartbeat(self, i: int, frozen: bool) -> None:
        t = self.truth[i]
        if frozen and t.frozen_since is None:
            t.frozen_since = self.clock.t
        elif not frozen:
            t.frozen_since = None
        self.rack.freeze_heartbeat(i, frozen)
        self._step(POLL_S)

    @rule(i=st.integers(0, N - 1))
    def charger_drops_out(self, i: int) -> None:
        self.rack.set_setpoint(i, "charge_enable", 0)
        self._step(POLL_S)

    @rule(
        what=st.sampled_from(["clamp", "ignore", "refuse", "slow", "silent", "well"]),
    )
    def rack_behaves(self, what: str) -> None:
        rack = self.rack
        rack.clamp_limit_a = CLAMP_A if what == "clamp" else None
        rack.ignore_limit_writes = what == "ignore"
        rack.refuse_writes = 4 if what == "refuse" else None
        rack.delay_s = 0.02 if what == "slow" else 0.0  # under the 30 ms timeout ... or over:
        rack.silent = what == "silent"
        self._step(POLL_S)

    @rule(dt=st.sampled_from([0.1, 1.0, 2.0, 5.0, 31.0]))
    def time_passes(self, dt: float) -> None:
        self._step(dt)

    @rule()
    def a_poll_period(self) -> None:
        self._step(POLL_S)

    # --- one step and what must hold after it -------------------------------------------------

    def _step(self, dt: float) -> None:
        now = self.clock.t + dt
        for i, t in enumerate(self.truth):
            # Off since the last step without our writing it (it dropped out): the step's
            # poll is the first to see it, and its off-time counts from there.
            if t.on and not self.rack.charger_on(i):
                t.on, t.last_off = False, now
        before = len(self.rack.writes)
        self.st.step(dt)
        self.steps += 1
        self._judge(self.rack.writes[before:], now)
        for i, t in enumerate(self.truth):
            t.on = self.rack.charger_on(i)

    def _judge(self, writes: list[Write], now: float) -> None:
        assert self.control is not None
        limits: dict[int, float | None] = {}
        for w in writes:
            t = self.truth[w.slot]
            slot = w.slot + 1
            if w.name == "current_limit":
                cap = min(t.bms_a or 0.0, CHARGER_MAX_A)
                alloc = self.control.allocation_of(slot)
                if alloc is not None:
                    cap = min(cap, alloc)
                if w.value > cap + 0.05:
                    self.breaks.append(f"slot {slot}: limit {w.value} A above {cap} A at {now}")
                if w.outcome == "stored":
                    t.register_a = w.value
                elif w.outcome == "clamped":
                    t.register_a = CLAMP_A
                # Taken: the register holds what was written (an ignored write of the value
                # it already held leaves it right).
                limits[w.slot] = w.value if abs(t.register_a - w.value) < 0.05 else None
            elif w.name == "charge_enable" and w.value == 1:
                why = self._why_not_on(w.slot, now, limits)
                if why:
                    self.breaks.append(f"slot {slot}: switched on at {now} although {why}")
                if w.outcome == "stored":
                    t.ons.append(now)
            elif w.name == "charge_enable" and w.value == 0 and w.outcome == "stored":
                t.last_off, t.on = now, False

    def _why_not_on(self, i: int, now: float, limits: dict[int, float | None]) -> str | None:
        t = self.truth[i]
        if not t.present:
            return "no pack"
        if t.bms_a is None or t.bms_a <= 0:
            return f"the BMS allows {t.bms_a} A"
        if t.frozen_since is not None and now - t.frozen_since > HEARTBEAT_TIMEOUT_S + POLL_S:
            return "its heartbeat is frozen"
        if i not in limits:
            return "no limit was written before it"
        if limits[i] is None:
            return "the charger did not take its limit"
        if now - t.last_off < MIN_OFF_S:
            return f"it was off only {now - t.last_off:.1f} s"
        return None

    @invariant()
    def no_invariant_broken(self) -> None:
        assert not self.breaks, self.breaks[:5]

    @invariant()
    def at_most_one_switch_on_per_min_off_time(self) -> None:
        for i, t in enumerate(self.truth):
            for a, b in zip(t.ons, t.ons[1:], strict=False):
                assert b - a >= MIN_OFF_S, f"slot {i + 1} switched on at {a} and {b}"

    @invariant()
    def a_frozen_charger_is_switched_off(self) -> None:
        rack = self.rack
        answers = not (rack.silent or rack.delay_s or rack.refuse_writes)
        for i, t in enumerate(self.truth):
            frozen = t.frozen_since is not None and self.clock.t - t.frozen_since
            if answers and frozen and frozen > HEARTBEAT_TIMEOUT_S + 90.0:
                assert not rack.charger_on(i), f"slot {i + 1}: on, its heartbeat frozen {frozen} s"


class ChargingUnderAGridLimit(ChargingControl):
    """The same, the power shared under a 100 kW budget (three 60 kW chargers)."""

    grid_kw = 100.0


SETTINGS = settings(
    max_examples=200 if LONG else 12,
    stateful_step_count=60 if LONG else 40,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=not LONG,
)
TestChargingControl = ChargingControl.TestCase
TestChargingControl.settings = SETTINGS
TestChargingControl = pytest.mark.timeout(3600 if LONG else 240)(TestChargingControl)
TestChargingUnderAGridLimit = ChargingUnderAGridLimit.TestCase
TestChargingUnderAGridLimit.settings = SETTINGS
TestChargingUnderAGridLimit = pytest.mark.timeout(3600 if LONG else 240)(
    TestChargingUnderAGridLimit
)


@pytest.mark.skipif(not LONG, reason="the long run only (SWAPSTATION_LONG=1)")
def test_the_long_run_took_10000_steps_without_a_break() -> None:
    """Runs after the two machines (same module, no xdist): their totals."""
    print(dict(TOTALS))
    assert TOTALS["control steps"] >= 10_000
    assert TOTALS["invariant breaks"] == 0
