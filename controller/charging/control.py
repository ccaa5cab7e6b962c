"""Slot control: supervision, alarms, trips and quarantine, and the chargers' setpoints.

One task consumes the racks' poll results (and a timer, so staleness is noticed between
polls). Each step evaluates the supervision rules for every slot, reconciles the alarms and
latches trips and quarantines, then acts in a fixed order:

1. stop every charger that must stop (all racks at once, each bounded in time);
2. commit alarms, latches and events to the journal in one transaction;
3. start the chargers that may charge, each re-checked on the freshest data just before its
   write (the step may have waited on writes and disk meanwhile).

Every write is verified by read-back. A setpoint the charger will not take is retried with a
growing pause and reported (`setpoint_not_applied`), never hammered.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from datetime import datetime

from controller.charging.forecast import Forecast, forecast
from controller.charging.latches import Latch, latch, report, restore
from controller.charging.operator import OperatorCommands
from controller.charging.power import Allocation, Demand, PowerModel, allocate, budget_w
from controller.charging.setpoints import (
    LIMIT_TOLERANCE_A,
    Rack,
    Setpoints,
    Writing,
    raises,
)
from controller.charging.supervision import SlotCheck, SlotRules
from controller.config.model import StationConfig
from controller.plant.alarms import AlarmBook, Cause, Severity, rack_scope, slot_scope
from controller.plant.slots import SlotBook, SlotView
from controller.safety.actuators import Actuators
from controller.safety.supervisor import STATION, SafetySupervisor
from controller.store.events import EventLog, JournalBatch
from controller.store.journal import Journal
from drivers.modbus.profile import SlotStatus
from drivers.rack import RackSnapshot, SlotReading

_log = logging.getLogger(__name__)

TICK_S = 0.1
STARTS_BUDGET_S = 1.0  # the starts of one step, all racks in parallel: at most this long
NOT_APPLIED = "setpoint_not_applied"


class SlotControl:
    """Owns the slots' safety state and their chargers' setpoints."""

    def __init__(
        self,
        config: StationConfig,
        book: SlotBook,
        racks: Mapping[str, Rack],
        journal: Journal,
        events: EventLog,
        *,
        actuators: Actuators,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.book = book
        self.actuators = actuators
        self.safety: SafetySupervisor = actuators.safety
        self.clock = clock
        self.journal = journal
        self.events = events
        self.alarms = AlarmBook()
        self.rules = SlotRules(config.supervision)
        self.trips: dict[int, Latch] = {}
        self.quarantine: dict[str, Latch] = {}
        self.disabled_slots: set[int] = set()
        self.manual_off: set[int] = set()
        self.swap_held: dict[int, str] = {}  # slot -> why the swap sequence holds it off
        self.checks: dict[int, SlotCheck] = {}
        self.changed = asyncio.Event()  # set whenever something publishable changed
        self.stopping = False  # once set, nothing is switched on again
        self.last_step = time.monotonic()  # wall time: the watchdog's
        self.power = PowerModel(config)
        self.allocation = Allocation({}, None, 0.0, 0.0)
        self.demands: list[Demand] = []
        self.forecast: Forecast | None = None
        self.on_forecast: Callable[[], None] = lambda: None
        # Packs dispensable now per type (set by the station: the dispense policy decides).
        self.ready_counts: Callable[[], dict[str, int]] = dict
        self._queue: asyncio.Queue[RackSnapshot] = asyncio.Queue(maxsize=1000)
        # slot -> the serial its charger reported full: not charged again until another pack
        self._complete: dict[int, str] = {}
        self.setpoints = Setpoints(
            racks, book, actuators, clock=clock, blocked=lambda s: self.blockers(s, power=False)
        )
        self.operator = OperatorCommands(self)

    def allocation_of(self, slot: int) -> float | None:
        """The power allocation of a slot in A (None: no grid limit bounds it)."""
        if self.allocation.budget_w is None:
            return None
        return self.allocation.limits_a.get(slot, 0.0)

    # --- inputs ------------------------------------------------------------------------------

    def on_snapshot(self, snapshot: RackSnapshot) -> None:
        """Pollers call this after every poll (never blocks)."""
        try:
            self._queue.put_nowait(snapshot)
        except asyncio.QueueFull:
            _log.error("slot control is not keeping up; dropping a poll of rack %s", snapshot.rack)

    def _drain(self) -> None:
        while not self._queue.empty():
            self.book.update(self._queue.get_nowait())

    async def load(self) -> None:
        """Restore trips, quarantines and active alarms from the journal."""
        kept = await restore(self.journal)
        self.trips, self.quarantine = kept.trips, kept.quarantine
        self.disabled_slots, self.manual_off = kept.disabled, kept.manual_off
        # Alarms active before a restart stay active until fresh data says otherwise: their
        # causes are held like those of a slot whose data is stale.
        self.alarms.restore(kept.alarms)
        for alarm in kept.alarms:
            if alarm.slot is not None and alarm.scope == slot_scope(alarm.slot):
                self.rules.hold(alarm.slot, alarm.code, Cause(alarm.severity, alarm.message))

    async def run(self) -> None:
        """Consume poll results and the timer, forever."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TICK_S):
                    snapshot = await self._queue.get()
                self.book.update(snapshot)
            self._drain()
            await self.step(self.clock())

    # --- the control step ----------------------------------------------------------------------

    async def step(self, now: float) -> None:
        """Evaluate every slot, stop what must stop, record, then start what may start."""
        batch = JournalBatch()
        views, measured = self._evaluate(now, batch)
        self._allocate(views, measured, now)
        stops: list[tuple[SlotView, tuple[bool, float]]] = []
        starts: list[tuple[SlotView, tuple[bool, float]]] = []
        for view in views:
            want = self._wanted(view, now)
            if want is not None:
                (starts if raises(view, want) else stops).append((view, want))
        # Safety first: stop every charger that must stop, and lower every limit that must
        # come down, before anything else, recording included; then commit alarms, latches
        # and events in one transaction; then start and raise (within the power budget, which
        # the lowered limits made room for: while one of them has not taken, nothing is raised).
        failed: set[int] = set()
        try:
            failed = await self.setpoints.write_all(stops)
        finally:
            # Recorded even when the daemon stops during the writes: a trip or a quarantine
            # decided here must survive the restart (the commit runs on the journal's thread).
            self.actuators.take_journal(batch)  # the motion log of these writes, refusals
            if batch:
                await asyncio.shield(self.events.commit(batch))
                self.changed.set()
        if starts and not self.stopping:
            await self._start(starts, failed)
        self.last_step = time.monotonic()

    def _evaluate(self, now: float, batch: JournalBatch) -> tuple[list[SlotView], list[SlotView]]:
        """Supervision and alarms of every rack and slot; (views as commanded, as measured).

        Supervision judges what the chargers reported; the setpoint decisions take the
        setpoints last written where the reading is older (`_as_commanded`).
        """
        for rack in self.book.racks:
            if self.book.snapshot(rack) is None:
                continue  # not polled yet: nothing known, a restored alarm stays as it was
            causes = (
                {"rack_offline": Cause(Severity.CRITICAL, self._offline_message(rack))}
                if self.book.rack_offline(rack)
                else {}
            )
            report(*self.alarms.reconcile(rack_scope(rack), causes, rack=rack), batch)
        measured = self.book.views(now)
        refusals = self.safety.causes(now)
        for view in measured:
            self.safety.observe(view.slot, now)
            r = view.fresh
            if r is not None and r.status == SlotStatus.FULL and r.pack_serial:
                self._complete[view.slot] = r.pack_serial
            check = self.rules.check(view)
            self.checks[view.slot] = check
            causes = dict(check.causes)
            writing = self.setpoints.writes.get(view.slot)
            if writing is not None and writing.error is not None:
                causes[NOT_APPLIED] = Cause(Severity.WARNING, writing.error)
            causes.update(refusals.get(slot_scope(view.slot), {}))
            raised, cleared = self.alarms.reconcile(
                slot_scope(view.slot), causes, slot=view.slot, rack=view.rack
            )
            report(raised, cleared, batch)
            if check.trips:
                latch(self.trips, self.quarantine, view, check, batch)
        report(*self.alarms.reconcile(STATION, refusals.get(STATION, {})), batch)
        return [self.setpoints.as_commanded(v) for v in measured], measured

    async def _start(
        self, starts: list[tuple[SlotView, tuple[bool, float]]], failed: set[int]
    ) -> None:
        """Switch on and raise, unless a charger is still above its share (under a budget)."""
        above = self._above_allocation(self.clock()) | failed
        if above and self.allocation.budget_w is not None:
            # A lower limit or a stop not taken yet, now or in an earlier step: nothing is
            # raised until it is down, or the budget could be exceeded.
            _log.warning("not raising charge limits: slot(s) %s above their share",
                         sorted(above))  # fmt: skip
            return
        self._drain()  # the writes and the disk took time: act on the freshest data
        wanted = [(v, w) for v, w in starts if self._still_wanted(v.slot, w)]
        try:
            # A slow rack must not hold the next step's stops back for long.
            async with asyncio.timeout(STARTS_BUDGET_S):
                await self.setpoints.write_all(wanted)
        except TimeoutError:
            _log.warning("starting chargers took over %g s: the rest next step",
                         STARTS_BUDGET_S)  # fmt: skip

    def _above_allocation(self, now: float) -> set[int]:
        """Slots with fresh data whose charger may be on above its power share (under a budget).

        A stale slot is counted at its worst case by the allocator already.
        """
        if self.allocation.budget_w is None:
            return set()
        out: set[int] = set()
        for measured in self.book.views(now):
            r = self.setpoints.as_commanded(measured).fresh
            if r is None or r.charge_enable is False:
                continue
            share = self.allocation.limits_a.get(measured.slot, 0.0)
            if r.current_limit is None or r.current_limit > share + LIMIT_TOLERANCE_A:
                out.add(measured.slot)
        return out

    def _allocate(self, views: list[SlotView], measured: list[SlotView], now: float) -> None:
        """Share the power budget among the slots that may charge (controller/charging/power.py).

        `views` carry the setpoints as commanded, `measured` what the chargers reported (the
        taper is learnt from measurements only).
        """
        cfg = self.config.power
        budget = budget_w(cfg, datetime.now().astimezone())
        self.power.learn(measured)
        self.demands = demands = [
            self._held_on(
                self.power.demand(v, wants=self._may_charge(v, now), taper=budget is not None),
                now,
            )
            for v in views
        ]
        before = self.allocation.waiting
        self.allocation = allocate(
            demands,
            budget,
            policy=cfg.policy,
            min_current_a=cfg.min_current_a,
            ready_soc=self.config.swap.min_dispense_soc,
            ready_now=self.ready_counts(),
            min_ready=cfg.min_ready,
        )
        if self.allocation.waiting != before:
            self.changed.set()

    async def run_forecast(self) -> None:
        """Recompute the ready-pack forecast periodically, off the event loop."""
        while True:
            await self.update_forecast()
            await asyncio.sleep(self.config.power.forecast_every_s)

    async def update_forecast(self) -> Forecast:
        """The forecast from the latest allocation (computed on a worker thread)."""
        demands, budget, ready = list(self.demands), self.allocation.budget_w, self.ready_counts()
        self.forecast = await asyncio.to_thread(forecast, self.power, demands, budget, ready)
        self.on_forecast()
        return self.forecast

    def _held_on(self, demand: Demand, now: float) -> Demand:
        """A charger switched on less than `min_on_s` ago keeps at least the minimum current.

        Its contactor is not opened to share power before then (a cause stops it at once; a
        budget too small even for the held chargers stops them too: the grid limit comes
        first).
        """
        since = self.safety.on_since(demand.slot)
        if not demand.wants or since is None or now - since >= self.config.charging.min_on_s:
            return demand
        return dataclasses.replace(demand, floor_a=self.config.power.min_current_a)

    def _may_charge(self, view: SlotView, now: float) -> bool:
        r = view.fresh
        return (
            r is not None
            and bool(r.pack_present)
            and not self.blockers(view.slot, now, power=False)
        )

    def _offline_message(self, rack: str) -> str:
        snap = self.book.snapshot(rack)
        return f"rack {rack} offline: {(snap.error if snap else None) or 'no answer'}"

    # --- charger setpoints -----------------------------------------------------------------------

    def blockers(self, slot: int, now: float | None = None, *, power: bool = True) -> list[str]:
        """Every reason charging must be off in `slot` now (empty: it may charge).

        `power`: include waiting for the power budget and for the charger's minimum off-time
        (not safety reasons: the slot charges once they pass).
        """
        now = self.clock() if now is None else now
        view = self.book.view(slot, now)
        reasons: list[str] = []
        if self.stopping:
            reasons.append("the controller is stopping")
        if view.stale:
            reasons.append(f"data stale: {view.stale_reason}")
        check = self.checks.get(slot)
        if check is not None:
            reasons += [c.message for c in check.causes.values()]
        if slot in self.trips:
            reasons.append(f"tripped: {self.trips[slot].reason} (needs an operator reset)")
        if slot in self.disabled_slots:
            reasons.append("slot disabled by an operator")
        if slot in self.manual_off:
            reasons.append("charging switched off by an operator")
        if slot in self.swap_held:
            reasons.append(f"held by the swap: {self.swap_held[slot]}")
        r = view.reading
        if r is not None and r.pack_serial in self.quarantine:
            reasons.append(
                f"pack {r.pack_serial} quarantined: {self.quarantine[r.pack_serial].reason}"
            )
        if r is not None and r.status in {SlotStatus.FAULT, SlotStatus.DISABLED}:
            reasons.append(f"charger status {r.status}")
        if r is not None and r.pack_present:
            reasons += _bms_reasons(r)
            done = self._complete.get(slot)
            if r.status != SlotStatus.FULL and r.pack_serial and done == r.pack_serial:
                reasons.append("charge complete (the charger reported the pack full)")
        if power and not reasons:
            reasons += self._waiting(slot, now)
        return reasons

    def _waiting(self, slot: int, now: float) -> list[str]:
        """What charging waits for that is not a safety reason: the contactor, the power."""
        wait = self.safety.on_allowed_in(slot, now)
        if wait > 0:
            return [f"the charger's minimum off-time: on again in {wait:.0f} s"]
        if slot in self.allocation.waiting:
            return [self.allocation.waiting[slot]]
        return []

    def _target(self, view: SlotView, now: float) -> tuple[bool, float] | None:
        """The setpoint the charger should have, or None when nothing can be written."""
        target = self._own_target(view, now)
        required = self.safety.must_be_off(view.slot, now)
        if required is not None and target != (False, 0.0):
            # The second line caught what the first missed: off, and said so.
            if target is not None and target[0]:
                self.actuators.overrule(view.slot, *required)
            return False, 0.0
        return target

    def _own_target(self, view: SlotView, now: float) -> tuple[bool, float] | None:
        r = view.fresh
        if r is None:
            # Unknown beyond its timeout (a heartbeat that stopped) while its rack and the
            # charger still answer: off. Where they do not answer (a failed poll, a rack
            # offline), nothing can be written: the charger's own communication watchdog is
            # the guard until the data is back.
            return (False, 0.0) if view.answers else None
        if not r.pack_present or self.blockers(view.slot, now, power=False):
            return False, 0.0
        limit = self.allocation.limits_a.get(view.slot, 0.0)
        return (True, limit) if limit > 0 else (False, 0.0)

    def _wanted(self, view: SlotView, now: float) -> tuple[bool, float] | None:
        """The setpoint to write now, or None (already there, unknowable, or paused)."""
        target = self._target(view, now)
        r = view.reading
        if target is None or r is None:
            return None
        want_on, want_limit = target
        if want_on and not r.charge_enable and self.safety.on_allowed_in(view.slot, now) > 0:
            return None  # the contactor's minimum off-time first (shown in `blockers`)
        if r.charge_enable == want_on and (
            not want_on or abs((r.current_limit or 0.0) - want_limit) <= LIMIT_TOLERANCE_A
        ):
            if self.setpoints.writes.pop(view.slot, None) is not None:
                self.changed.set()
            return None
        writing = self.setpoints.writes.get(view.slot)
        if writing is not None and writing.want == target:
            if not writing.due(now, steady=not raises(view, target)):
                return None  # written a moment ago (or refused): the next poll tells
            writing.at = now
        else:
            self.setpoints.writes[view.slot] = Writing(target, now)
        return target

    def _still_wanted(self, slot: int, want: tuple[bool, float]) -> bool:
        """Re-check an enable just before writing it: the data may have moved on."""
        now = self.clock()
        measured = self.book.view(slot, now)
        check = self.rules.check(measured)
        self.checks[slot] = check
        return not check.causes and self._target(self.setpoints.as_commanded(measured), now) == want

    async def stop_all(self) -> None:
        """Switch every reachable charger off, racks in parallel; nothing switches on again."""
        self.stopping = True
        await self.setpoints.stop_all()

    # --- the swap's hold --------------------------------------------------------------------

    def hold_for_swap(self, slot: int, why: str) -> None:
        """The swap sequence needs the slot's charger off (a pack is about to move)."""
        if self.swap_held.get(slot) != why:
            self.swap_held[slot] = why
            self.changed.set()

    def release_from_swap(self, slot: int) -> None:
        """The swap sequence is done with the slot: it may charge again."""
        if self.swap_held.pop(slot, None) is not None:
            self.changed.set()


def _bms_reasons(r: SlotReading) -> list[str]:
    """What the pack's BMS and the charger say against charging (0 means 0; unknown: no)."""
    reasons = []
    if r.bms_current_max is None or r.bms_current_max <= 0:
        shown = "unknown" if r.bms_current_max is None else f"{r.bms_current_max:g} A"
        reasons.append(f"the BMS allows no charge current (limit {shown})")
    if r.bms_voltage_max is None or r.bms_voltage_max <= 0:
        shown = "unknown" if r.bms_voltage_max is None else f"{r.bms_voltage_max:g} V"
        reasons.append(f"the BMS gives no charge voltage limit ({shown})")
    if r.status == SlotStatus.FULL:
        reasons.append("charge complete (the charger reports the pack full)")
    return reasons
