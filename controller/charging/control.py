"""Slot control: supervision, alarms, trips and quarantine, and the chargers' setpoints.

One task, driven by events: a rack's poll result wakes it for that rack's slots only, an
operator's command or the swap for the slot they touch, and a deadline for a slot whose
decision changes with time alone (its data going stale, a write's retry, a contactor's
minimum off-time ending, a refusal alarm expiring). Nothing is looked at on a fixed period.
Each step evaluates the supervision rules of the slots it was woken for, reconciles their
alarms and latches trips and quarantines, shares the power again when a demand changed, then
acts in a fixed order:

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
import math
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime

from controller.charging.circuits import tree_of
from controller.charging.forecast import Forecast, forecast
from controller.charging.foresight import Foresight
from controller.charging.gridcmds import GridCommands
from controller.charging.latches import Latch, latch, report, restore
from controller.charging.limits import PowerLimits, PowerState
from controller.charging.operator import OperatorCommands
from controller.charging.power import Allocation, Demand, PowerModel, allocate
from controller.charging.setpoints import (
    LIMIT_TOLERANCE_A,
    Rack,
    Setpoints,
    Writing,
    raises,
)
from controller.charging.supervision import SlotCheck, SlotRules
from controller.charging.tariff import Tariff
from controller.config.model import StationConfig
from controller.plant.alarms import AlarmBook, Cause, Severity, rack_scope, slot_scope
from controller.plant.slots import SlotBook, SlotView
from controller.safety.actuators import Actuators
from controller.safety.supervisor import STATION, SafetySupervisor
from controller.store.events import EventLog, JournalBatch
from controller.store.journal import Journal
from drivers import clock as clocks
from drivers.modbus.profile import SlotStatus
from drivers.rack import RackSnapshot, SlotReading

_log = logging.getLogger(__name__)

MIN_RESTEP_S = 0.1  # a slot's next deadline is at least this far ahead

PLAN_EVERY_S = 60.0  # the forecast (and the cost plan) at least this often, changed or not
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
        clock: Callable[[], float] = clocks.monotonic,
    ) -> None:
        self.config = config
        self.book = book
        self.actuators = actuators
        self.safety: SafetySupervisor = actuators.safety
        self.safety.on_booked = self._on_refusal
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
        self._followers: list[tuple[set[int], asyncio.Event]] = []
        self.stopping = False  # once set, nothing is switched on again
        self.last_step = clocks.monotonic()  # wall time: the watchdog's
        self.power = PowerModel(config)
        self.limits = PowerLimits(config.power)
        self.tariff = Tariff(config.power.tariff)
        self.tree = tree_of(config)
        self._ended: list[tuple[str, float]] = []  # run-time limits that ended, to journal
        self.allocation = Allocation({}, None, 0.0, 0.0)
        self._demands: dict[int, Demand] = {}
        # Per slot, the watts committed and allocated without a grid limit (`_merged`).
        self._committed_w: dict[int, float] = {}
        self._allocated_w: dict[int, float] = {}
        self.demands_changed = 0  # counts changes of any slot's demand (the forecast's input)
        self.forecast: Forecast | None = None
        self.on_forecast: Callable[[], None] = lambda: None
        # Packs dispensable now per type (set by the station: the dispense policy decides).
        self.ready_counts: Callable[[], dict[str, int]] = dict
        self._pending: set[int] = set()  # slots whose inputs changed since their last step
        self._due: dict[int, float] = {}  # slot -> when its decision may change with time alone
        self._wake = asyncio.Event()
        self._learned: dict[int, float] = {}  # slot -> stamp of the reading the taper learnt
        self.dirty: set[int] = set()  # slots whose published view may have changed
        self.stepped = asyncio.Event()  # set after every step (packs ready may have changed)
        self.on_station_change: Callable[[], None] = lambda: None  # alarms, ready packs
        self._busy_since: float | None = None  # when the step in progress began
        # slot -> the serial its charger reported full: not charged again until another pack
        self._complete: dict[int, str] = {}
        self.setpoints = Setpoints(
            racks, book, actuators, clock=clock, blocked=lambda s: self.blockers(s, power=False)
        )
        self.operator = OperatorCommands(self)
        self.grid = GridCommands(self)
        self.foresight = Foresight(self)

    @property
    def demands(self) -> list[Demand]:
        """Every slot's demand as last evaluated, in slot order (for the forecast)."""
        return [self._demands[s] for s in sorted(self._demands)]

    def allocation_of(self, slot: int) -> float | None:
        """The power allocation of a slot in A (None: no grid limit bounds it)."""
        if not self.allocation.shared:
            return None
        return self.allocation.limits_a.get(slot, 0.0)

    def follow(self, wake: asyncio.Event | None = None) -> set[int]:
        """Another reader of the stepped slots (besides `dirty`): its own set, and `wake` set."""
        follower: tuple[set[int], asyncio.Event] = (set(), wake or asyncio.Event())
        self._followers.append(follower)
        return follower[0]

    def limits_changed(self) -> None:
        """A power limit or a price changed: share the power again now, and say so."""
        self.touch(*self.book.slots)
        self.on_station_change()

    def power_state(self) -> PowerState:
        """The limits, what binds, the draw and the price now (for `state`)."""
        at = clocks.localnow()
        state = self.limits.state(at)
        price = self.tariff.price_at(at)
        return state if price is None else state.model_copy(update={"price": price[0]})

    # --- inputs ------------------------------------------------------------------------------

    def on_snapshot(self, snapshot: RackSnapshot) -> None:
        """Pollers call this after every poll (never blocks): the rack's slots are looked at.

        The book takes the result at once (whoever reads it sees the latest poll); the step
        that supervises it follows in the control task.
        """
        self.book.update(snapshot)
        self.touch(*self.book.racks[snapshot.rack].slots)

    def touch(self, *slots: int) -> None:
        """Something a slot's decision depends on changed (an operator, the swap): look again."""
        self._pending.update(slots)
        self._wake.set()

    def _on_refusal(self, scope: str) -> None:
        """A command was refused (a slot's, or the station's motion): its alarm, at once."""
        if scope == STATION:
            self._due[0] = 0.0  # due now: the station's refusals are reconciled in a step
            self._wake.set()
        elif scope.startswith("slot:") and self._busy_since is None:
            # Not from inside a step (a write it refused): that slot is stepped again by its
            # next poll, and a refusal repeated every step must not make steps back to back.
            self.touch(int(scope.removeprefix("slot:")))

    def liveness(self, now: float) -> float:
        """`now` while waiting for work; the start of the step in progress otherwise."""
        return now if self._busy_since is None else self._busy_since

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
        """Step whenever a poll result, a touch or a deadline asks for it, forever."""
        while True:
            self._busy_since = None
            due = min(self._due.values(), default=None)
            change = self.limits.next_change(clocks.localnow())
            if change is not None:
                # A limit or a time window ends: share again then (any slot re-shares all).
                at = self.clock() + max(0.0, change - clocks.wall()) + 1e-3
                if due is None or at < due:
                    self._due[0] = at
                    due = at
            wait = None if due is None else max(0.0, due - self.clock())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            self._wake.clear()
            self._busy_since = clocks.monotonic()
            await self.step_pending(self.clock())

    async def step_pending(self, now: float) -> None:
        """One step for what is pending: polled racks' slots, touched slots, deadlines due."""
        due = {slot for slot, at in self._due.items() if at <= now}
        slots, self._pending = self._pending | due, set()
        if slots:
            await self.step(now, slots)

    def _due_next(self, slot: int, now: float, expiries: Mapping[str, float]) -> None:
        """When `slot`'s decision may next change with time alone; nothing else wakes it then.

        Its data going stale, a write's retry (the earliest it can be due), the end of its
        contactor's minimum off-time or on-time, a refusal alarm of its lapsing (`expiries`: the
        supervisor's, per scope).
        """
        times: list[float] = []
        view = self.book.view(slot, now)
        if view.reading is not None and not view.stale:
            times.append(view.reading.at + self.book.racks[view.rack].stale_after_s + 1e-3)
        writing = self.setpoints.writes.get(slot)
        if writing is not None and view.answers:
            # Its retry, with its back-off (a charger that does not answer is written to when
            # it answers again: its next poll steps the slot).
            times.append(writing.due_at(steady=not raises(view, writing.want)))
        wait = self.safety.on_allowed_in(slot, now)
        if wait > 0:
            times.append(now + wait)
        since = self.safety.on_since(slot)
        if since is not None and now - since < self.config.charging.min_on_s:
            times.append(since + self.config.charging.min_on_s)
        lapse = expiries.get(slot_scope(slot))
        if lapse is not None:
            times.append(lapse + 1e-3)
        if times:
            # Never in the past: a deadline the step did not act on would be stepped again at
            # once, for ever (the safety net: at worst the old timer's pace).
            self._due[slot] = max(min(times), now + MIN_RESTEP_S)
        else:
            self._due.pop(slot, None)

    # --- the control step ----------------------------------------------------------------------

    async def step(self, now: float, slots: Collection[int] | None = None) -> None:
        """Evaluate slots (every one, or `slots`), stop what must stop, record, then start.

        Besides `slots`, every slot whose power share changed is looked at again.
        """
        batch = JournalBatch()
        targets = self.book.slots if slots is None else sorted(s for s in slots if s)
        views, measured = self._evaluate(now, batch, targets)
        reshared = self._allocate(views, measured, now)
        for source, set_at in self._ended:
            # This limit only: a renewal of the source committed meanwhile stays.
            batch.execute(
                "DELETE FROM power_limits WHERE source = ? AND set_at = ?", (source, set_at)
            )
            batch.event("power_limit_ended", {"source": source})
        self._ended.clear()
        for slot in reshared - views.keys():
            views[slot] = self.setpoints.as_commanded(self.book.view(slot, now))
        stops: list[tuple[SlotView, tuple[bool, float]]] = []
        starts: list[tuple[SlotView, tuple[bool, float]]] = []
        for view in views.values():
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
        now, expiries = self.clock(), self.safety.expiries()
        for slot in views:
            self._due_next(slot, now, expiries)
        station = expiries.get(STATION)  # the station's own refusal alarms: under slot 0
        if station is not None:
            self._due[0] = station + 1e-3
        else:
            self._due.pop(0, None)
        self.dirty.update(views)
        for followed, wake in self._followers:
            followed.update(views)
            wake.set()
        self.changed.set()
        self.stepped.set()
        self.last_step = clocks.monotonic()

    def _evaluate(
        self, now: float, batch: JournalBatch, slots: Collection[int]
    ) -> tuple[dict[int, SlotView], list[SlotView]]:
        """Supervision and alarms of `slots` and their racks; (views as commanded, as measured).

        Supervision judges what the chargers reported; the setpoint decisions take the
        setpoints last written where the reading is older (`_as_commanded`).
        """
        alarms_before = self.alarms.generation
        for rack in sorted({self.book.rack_of[s] for s in slots}):
            if self.book.snapshot(rack) is None:
                continue  # not polled yet: nothing known, a restored alarm stays as it was
            causes = (
                {"rack_offline": Cause(Severity.CRITICAL, self._offline_message(rack))}
                if self.book.rack_offline(rack)
                else {}
            )
            report(*self.alarms.reconcile(rack_scope(rack), causes, rack=rack), batch)
        measured = [self.book.view(slot, now) for slot in slots]
        refusals = self.safety.causes(now)
        for view in measured:
            self.safety.observe(view.slot, now)
            self.foresight.note_returned(view)
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
        if self.alarms.generation != alarms_before:
            self.on_station_change()
        return {v.slot: self.setpoints.as_commanded(v) for v in measured}, measured

    async def _start(
        self, starts: list[tuple[SlotView, tuple[bool, float]]], failed: set[int]
    ) -> None:
        """Switch on and raise, unless a charger is still above its share (under a budget)."""
        above = self._above_allocation(self.clock()) | failed
        if above and self.allocation.shared:
            # A lower limit or a stop not taken yet, now or in an earlier step: nothing is
            # raised until it is down, or the budget could be exceeded.
            _log.warning("not raising charge limits: slot(s) %s above their share",
                         sorted(above))  # fmt: skip
            return
        # The writes and the disk took time: each start is judged again on the freshest data
        # (the book has every poll at once; its slots are stepped again next).
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
        if not self.allocation.shared:
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

    def _allocate(
        self, views: Mapping[int, SlotView], measured: list[SlotView], now: float
    ) -> set[int]:
        """Share the power budget among the slots that may charge (controller/charging/power.py).

        `views` (the slots looked at: their setpoints as commanded) get new demands; `measured`
        is what their chargers reported (the taper is learnt from measurements only, once per
        reading). Without a grid limit every slot's share is its own, so only theirs change;
        under one, all of them are shared again. Returns the other slots whose share changed.
        """
        cfg = self.config.power
        at = clocks.localnow()
        for ended in self.limits.prune(at.timestamp()):
            self._ended.append((ended.source, ended.set_at))
        budget = self.limits.budget_w(at) if self.limits.limited else None
        self.power.learn(self._unlearnt(measured))
        fresh: list[int] = list(views)
        if len(self._demands) < len(self.book.rack_of):  # never looked at yet: the worst case
            for slot in self.book.slots:
                if slot not in self._demands and slot not in views:
                    unknown = self.book.view(slot, now)
                    self._demands[slot] = self.power.demand(unknown, wants=False)
                    self.demands_changed += 1
                    fresh.append(slot)
        for slot, view in views.items():
            wants = self._may_charge(view, now)
            shared = budget is not None or bool(self.tree)
            demand = self._held_on(self.power.demand(view, wants=wants, taper=shared), now)
            if self._demands.get(slot) != demand:
                self._demands[slot] = demand
                self.demands_changed += 1
        before = self.allocation
        if budget is None and not before.shared and not self.tree and cfg.policy != "cost":
            part = allocate(
                [self._demands[s] for s in views], None, policy=cfg.policy,
                min_current_a=cfg.min_current_a, ready_soc=self.config.swap.min_dispense_soc,
                ready_now={}, min_ready={},
            )  # fmt: skip
            self.allocation = self._merged(before, part, fresh)
            return set()
        self._committed_w.clear()  # shared again as a whole: the per-slot sums start over
        self._allocated_w.clear()
        self.allocation = allocate(
            self.demands,
            budget,
            policy=cfg.policy,
            min_current_a=cfg.min_current_a,
            ready_soc=self.config.swap.min_dispense_soc,
            ready_now=self.ready_counts() if budget is not None or self.tree else {},
            min_ready=cfg.min_ready,
            tree=self.tree,
            deferred=self.foresight.deferred if cfg.policy == "cost" else None,
        )
        after = self.allocation
        return {
            slot
            for slot in before.limits_a.keys() | after.limits_a.keys()
            if before.limits_a.get(slot) != after.limits_a.get(slot)
            or before.waiting.get(slot) != after.waiting.get(slot)
        } - views.keys()

    def _merged(self, before: Allocation, part: Allocation, slots: list[int]) -> Allocation:
        """`before` with the shares of `slots` taken from `part` (no grid limit: independent).

        The totals are kept per slot (`_committed_w`, `_allocated_w`), so that a step costs
        what it looked at, not the station's size.
        """
        limits, waiting = dict(before.limits_a), dict(before.waiting)
        if not self._committed_w:  # after a shared allocation: every slot once
            slots = list(self._demands)
            part_limits = {**before.limits_a, **part.limits_a}
            part_waiting = {**before.waiting, **part.waiting}
        else:
            part_limits, part_waiting = part.limits_a, part.waiting
        for slot in slots:
            limits.pop(slot, None)
            waiting.pop(slot, None)
            d = self._demands[slot]
            amps = part_limits.get(slot)
            if amps is not None:
                limits[slot] = amps
            self._committed_w[slot] = 0.0 if d.wants else d.committed_w
            self._allocated_w[slot] = 0.0 if amps is None else amps * d.volt_bound_v
        waiting.update({s: part_waiting[s] for s in slots if s in part_waiting})
        committed = math.fsum(self._committed_w.values())
        allocated = math.fsum(self._allocated_w.values())
        return Allocation(limits, None, committed, allocated, waiting)

    def _unlearnt(self, measured: list[SlotView]) -> list[SlotView]:
        """The views whose fresh reading the taper model has not learnt from yet."""
        out = []
        for view in measured:
            r = view.fresh
            if r is not None and self._learned.get(view.slot) != r.at:
                self._learned[view.slot] = r.at
                out.append(view)
        return out

    async def run_forecast(self) -> None:
        """Recompute the ready-pack forecast periodically, off the event loop.

        Only when an input moved since the last one (a demand, the budget): nothing changed,
        nothing to do.
        """
        last: tuple[int, float | None, dict[str, int]] | None = None
        last_at = self.clock()
        while True:
            # The packs ready now move without any demand moving (a reservation, an alarm,
            # a disabled slot on an idle pack): counted every period, O(slots).
            inputs = (self.demands_changed, self.allocation.budget_w, self.ready_counts())
            now = self.clock()
            if inputs != last or (self.foresight.active and now - last_at >= PLAN_EVERY_S):
                last, last_at = inputs, now
                await self.update_forecast()
            await asyncio.sleep(self.config.power.forecast_every_s)

    async def update_forecast(self) -> Forecast:
        """The forecast from the latest allocation (computed on a worker thread).

        With `power.demand`, the foresight follows it (the outlook, the plan, the offer).
        """
        demands, budget, ready = list(self.demands), self.allocation.budget_w, self.ready_counts()
        fc = await asyncio.to_thread(forecast, self.power, demands, budget, ready)
        self.forecast = fc
        await self.foresight.update(fc)
        self.on_forecast()
        return fc

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
            # When, not how long: a countdown would change the slot's published state every
            # second for nothing.
            at = datetime.fromtimestamp(round(clocks.wall() + wait), UTC).strftime("%H:%M:%S")
            return [f"the charger's minimum off-time: on again at {at} UTC"]
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
            writing = self.setpoints.writes.get(view.slot)
            if r.charge_enable is False and writing is not None and not writing.want[0]:
                self.setpoints.writes.pop(view.slot)  # the stop took: nothing to retry
                self.changed.set()
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
            self.touch(slot)

    def release_from_swap(self, slot: int) -> None:
        """The swap sequence is done with the slot: it may charge again."""
        if self.swap_held.pop(slot, None) is not None:
            self.touch(slot)


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
