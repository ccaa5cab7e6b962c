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
import math
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from controller.charging.alarms import Alarm, AlarmBook, Cause, Severity, rack_scope, slot_scope
from controller.charging.power import (
    Allocation,
    Demand,
    Forecast,
    PowerModel,
    allocate,
    budget_w,
    forecast,
)
from controller.charging.slots import SlotBook, SlotView
from controller.charging.supervision import SlotCheck, SlotRules
from controller.config.model import StationConfig
from controller.errors import NoLongerWantedError, RefusedError, SafetyRefusedError
from controller.safety.actuators import Actuators
from controller.safety.supervisor import STATION, SafetySupervisor
from controller.store.events import EventLog, JournalBatch
from controller.store.journal import Journal, transaction
from drivers.errors import DriverError
from drivers.rack import RackDriver, RackPoller, RackSnapshot, SlotReading

_log = logging.getLogger(__name__)

TICK_S = 0.1
WRITE_RETRY_S = 1.0
WRITE_RETRY_MAX_S = 60.0
WRITE_TIMEOUT_S = 2.0
STARTS_BUDGET_S = 1.0  # the starts of one step, all racks in parallel: at most this long
LIMIT_TOLERANCE_A = 0.05
NOT_APPLIED = "setpoint_not_applied"


@dataclass(frozen=True, slots=True)
class Latch:
    """A trip (per slot) or a quarantine (per pack)."""

    reason: str
    since: float
    slot: int | None = None


@dataclass(frozen=True, slots=True)
class Rack:
    """A rack's driver and poller, as the slot control uses them."""

    driver: RackDriver
    poller: RackPoller


@dataclass
class _Writing:
    """What was last asked of a charger, and how that went."""

    want: tuple[bool, float]
    at: float
    failures: int = 0
    error: str | None = None

    def due(self, now: float, *, steady: bool = False) -> bool:
        """A retry is due: 1 s after the first try and the first failure, then 2, 4 ... 60 s.

        `steady`: every 1 s however often it failed (a stop, a lower limit: never delayed).
        """
        backoff = 0 if steady else min(max(self.failures - 1, 0), 6)
        pause = min(WRITE_RETRY_MAX_S, WRITE_RETRY_S * 2.0**backoff)
        return now - self.at >= pause


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
        self.racks = dict(racks)
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
        self._writes: dict[int, _Writing] = {}
        # The setpoints last written and verified per slot (enable, limit or None when only
        # the enable was written), with the clock's time of the read-back.
        self._applied: dict[int, tuple[bool, float | None, float]] = {}

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

        def read(
            conn: sqlite3.Connection,
        ) -> tuple[dict[int, Latch], dict[str, Latch], list[Alarm], set[int], set[int]]:
            trips = {
                int(slot): Latch(str(reason), float(since), int(slot))
                for slot, reason, since in conn.execute(
                    "SELECT slot, reason, since FROM slot_trips"
                )
            }
            quarantine = {
                str(serial): Latch(str(reason), float(since), None if slot is None else int(slot))
                for serial, reason, slot, since in conn.execute(
                    "SELECT serial, reason, slot, since FROM pack_quarantine"
                )
            }
            alarms = [
                Alarm(
                    scope=scope,
                    code=code,
                    severity=sev,
                    message=msg,
                    since=since,
                    slot=slot,
                    rack=rack,
                )
                for scope, code, sev, msg, since, slot, rack in conn.execute(
                    "SELECT scope, code, severity, message, since, slot, rack FROM alarms"
                )
            ]
            disabled = {int(r[0]) for r in conn.execute("SELECT slot FROM slots_disabled")}
            off = {int(r[0]) for r in conn.execute("SELECT slot FROM charging_off")}
            return trips, quarantine, alarms, disabled, off

        (
            self.trips,
            self.quarantine,
            alarms,
            self.disabled_slots,
            self.manual_off,
        ) = await self.journal.call(read)
        # Alarms active before a restart stay active until fresh data says otherwise: their
        # causes are held like those of a slot whose data is stale.
        self.alarms.restore(alarms)
        for alarm in alarms:
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
                (starts if _raises(view, want) else stops).append((view, want))
        # Safety first: stop every charger that must stop, and lower every limit that must
        # come down, before anything else, recording included; then commit alarms, latches
        # and events in one transaction; then start and raise (within the power budget, which
        # the lowered limits made room for: while one of them has not taken, nothing is raised).
        failed: set[int] = set()
        try:
            failed = await self._write_all(stops)
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
            self._report(*self.alarms.reconcile(rack_scope(rack), causes, rack=rack), batch)
        measured = self.book.views(now)
        refusals = self.safety.causes(now)
        for view in measured:
            self.safety.observe(view.slot, now)
            r = view.fresh
            if r is not None and r.status == "full" and r.pack_serial:
                self._complete[view.slot] = r.pack_serial
            check = self.rules.check(view)
            self.checks[view.slot] = check
            causes = dict(check.causes)
            writing = self._writes.get(view.slot)
            if writing is not None and writing.error is not None:
                causes[NOT_APPLIED] = Cause(Severity.WARNING, writing.error)
            causes.update(refusals.get(slot_scope(view.slot), {}))
            raised, cleared = self.alarms.reconcile(
                slot_scope(view.slot), causes, slot=view.slot, rack=view.rack
            )
            self._report(raised, cleared, batch)
            if check.trips:
                self._latch(view, check, batch)
        self._report(*self.alarms.reconcile(STATION, refusals.get(STATION, {})), batch)
        return [self._as_commanded(v) for v in measured], measured

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
                await self._write_all(wanted)
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
            r = self._as_commanded(measured).fresh
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

    def _report(self, raised: list[Alarm], cleared: list[Alarm], batch: JournalBatch) -> None:
        for alarm in raised:
            log = _log.error if alarm.severity is Severity.CRITICAL else _log.warning
            log("alarm raised: %s %s: %s", alarm.scope, alarm.code, alarm.message)
            batch.event("alarm_raised", alarm)
            batch.execute(
                "INSERT OR REPLACE INTO alarms(scope, code, severity, message, since, slot, rack)"
                " VALUES (?,?,?,?,?,?,?)",
                (
                    alarm.scope,
                    alarm.code,
                    alarm.severity.value,
                    alarm.message,
                    alarm.since,
                    alarm.slot,
                    alarm.rack,
                ),
            )
        for alarm in cleared:
            _log.info("alarm cleared: %s %s", alarm.scope, alarm.code)
            batch.event("alarm_cleared", alarm)
            batch.execute(
                "DELETE FROM alarms WHERE scope = ? AND code = ?", (alarm.scope, alarm.code)
            )

    def _latch(self, view: SlotView, check: SlotCheck, batch: JournalBatch) -> None:
        reason = ", ".join(check.causes[c].message for c in check.trips)
        wall = time.time()
        serial = view.reading.pack_serial if view.reading else None
        if view.slot not in self.trips:
            self.trips[view.slot] = Latch(reason, wall, view.slot)
            batch.execute(
                "INSERT OR REPLACE INTO slot_trips(slot, reason, since) VALUES (?,?,?)",
                (view.slot, reason, wall),
            )
            batch.event("slot_tripped", {"slot": view.slot, "reason": reason})
        if serial and serial not in self.quarantine:
            self.quarantine[serial] = Latch(reason, wall, view.slot)
            batch.execute(
                "INSERT OR REPLACE INTO pack_quarantine(serial, reason, slot, since)"
                " VALUES (?,?,?,?)",
                (serial, reason, view.slot, wall),
            )
            batch.event("pack_quarantined", {"serial": serial, "slot": view.slot, "reason": reason})
            _log.error("pack %s quarantined (do not dispense): %s", serial, reason)

    async def _store(self, sql: str, args: tuple[object, ...]) -> None:
        def write(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.execute(sql, args)

        await self.journal.call(write)

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
        if r is not None and r.status in {"fault", "disabled"}:
            reasons.append(f"charger status {r.status}")
        if r is not None and r.pack_present:
            reasons += _bms_reasons(r)
            if r.status != "full" and r.pack_serial and self._complete.get(slot) == r.pack_serial:
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
            if self._writes.pop(view.slot, None) is not None:
                self.changed.set()
            return None
        writing = self._writes.get(view.slot)
        if writing is not None and writing.want == target:
            if not writing.due(now, steady=not _raises(view, target)):
                return None  # written a moment ago (or refused): the next poll tells
            writing.at = now
        else:
            self._writes[view.slot] = _Writing(target, now)
        return target

    def _still_wanted(self, slot: int, want: tuple[bool, float]) -> bool:
        """Re-check an enable just before writing it: the data may have moved on."""
        now = self.clock()
        measured = self.book.view(slot, now)
        check = self.rules.check(measured)
        self.checks[slot] = check
        return not check.causes and self._target(self._as_commanded(measured), now) == want

    async def _write_all(self, plans: Iterable[tuple[SlotView, tuple[bool, float]]]) -> set[int]:
        """Write setpoints, racks in parallel (a slow rack delays only itself); return failures."""
        by_rack: dict[str, list[tuple[SlotView, tuple[bool, float]]]] = {}
        for view, want in plans:
            by_rack.setdefault(view.rack, []).append((view, want))

        failed: set[int] = set()

        async def rack_writes(items: list[tuple[SlotView, tuple[bool, float]]]) -> None:
            for view, (enable, limit) in items:
                if not await self._write(view, enable=enable, limit=limit):
                    failed.add(view.slot)

        await asyncio.gather(*(rack_writes(items) for items in by_rack.values()))
        return failed

    async def _write(self, view: SlotView, *, enable: bool, limit: float) -> bool:
        rack = self.racks[view.rack]
        writing = self._writes.get(view.slot)
        already_on = view.reading is not None and view.reading.charge_enable is True
        try:
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                await self._send(view.slot, enable=enable, limit=limit, already_on=already_on)
        except NoLongerWantedError as exc:
            _log.info("%s", exc)
            self._writes.pop(view.slot, None)
            return True  # nothing failed: the next step decides again
        except SafetyRefusedError as exc:
            # The supervisor named it (alarm, event, motion log): retried with the same pause.
            _log.warning("slot %d: %s", view.slot, exc)
            if writing is not None:
                writing.failures += 1
            return False
        except (DriverError, TimeoutError) as exc:
            message = str(exc) or f"no answer within {WRITE_TIMEOUT_S:g} s"
            _log.warning(
                "slot %d: setting charge %s failed: %s",
                view.slot,
                "on" if enable else "off",
                message,
            )
            if writing is not None:
                writing.failures += 1
                writing.error = f"charge {'on' if enable else 'off'} not applied: {message}"
            return False
        if writing is not None:
            writing.error = None
        _log.info(
            "slot %d: charging %s%s",
            view.slot,
            "on" if enable else "off",
            f" at {limit:g} A" if enable else "",
        )
        rack.poller.poll_soon()
        return True

    async def _send(self, slot: int, *, enable: bool, limit: float, already_on: bool) -> None:
        """Setpoints through the safety supervisor: a limit is read back before the enable.

        On: the limit is written and verified first, then the enable (a charger that did not
        take its limit is never switched on). Off: only the enable.
        """
        if enable:
            back = await self.actuators.charger_limit(slot, limit)
            self._applied[slot] = (already_on, back, self.clock())
            if not already_on:
                # The limit's round trip took time: the swap may have claimed the slot, an
                # operator switched it off, a cause appeared. Looked at again, at once.
                blocked = self.blockers(slot, power=False)
                if blocked:
                    raise NoLongerWantedError(f"slot {slot}: not switched on: {blocked[0]}")
                await self.actuators.charger_enable(slot, on=True)
            self._applied[slot] = (True, back, self.clock())
        else:
            await self.actuators.charger_enable(slot, on=False)
            self._applied[slot] = (False, None, self.clock())

    def _as_commanded(self, view: SlotView) -> SlotView:
        """The view with the setpoints last written, when its reading is older than the write.

        A poll whose reads were sent before a write landed (the link serialises them, so such
        a poll can complete just after the write) shows the setpoints from before it. Taken
        for the truth, it would make the controller believe a charger still at a limit it has
        just raised, "already there" at the old one, and give the difference to another slot:
        over the budget. The verified write is the truth until a poll sent after it.
        """
        applied = self._applied.get(view.slot)
        r = view.reading
        if applied is None or r is None:
            return view
        enable, limit, at = applied
        if r.at >= at:
            del self._applied[view.slot]  # the reading is newer: it tells
            return view
        # Its current was measured before the write: not a measure of the new setpoint (the
        # allocator's taper logic must not compare the two).
        commanded = dataclasses.replace(
            r,
            charge_enable=enable,
            current_limit=r.current_limit if limit is None else limit,
            current=None,
        )
        return dataclasses.replace(view, reading=commanded)

    async def stop_all(self) -> None:
        """Switch every reachable charger off, racks in parallel; nothing switches on again.

        Those that may be on first (on, or not known to be off); one known to be off, or
        whose rack is offline, is not asked (the safe state has a budget of 2 s).
        """
        self.stopping = True
        now = self.clock()

        def may_be_on(slot: int) -> bool:
            r = self._as_commanded(self.book.view(slot, now)).reading
            known_off = r is not None and r.charge_enable is False
            return not known_off or self.safety.on_since(slot) is not None

        async def rack_off(name: str, rack: Rack) -> None:
            # Every one off first (one request each), then verified while the budget lasts.
            slots = [s for s in rack.driver.slots if may_be_on(s)]
            for verify in (False, True):
                for slot in slots:
                    try:
                        async with asyncio.timeout(WRITE_TIMEOUT_S):
                            await self.actuators.charger_enable(slot, on=False, verify=verify)
                        self._applied[slot] = (False, None, self.clock())
                    except (DriverError, TimeoutError) as exc:
                        _log.warning(
                            "rack %s slot %d: could not stop charging: %s", name, slot, exc
                        )

        await asyncio.gather(
            *(
                rack_off(name, r)
                for name, r in self.racks.items()
                if not self.book.rack_offline(name)
            )
        )

    # --- commands ------------------------------------------------------------------------

    async def set_charging(self, slot: int, *, enable: bool, limit_a: float | None = None) -> None:
        """Command a charger directly (commissioning); refused with the reason when unsafe.

        Switching off is always attempted and stays off (until switched on again); switching
        on is refused while anything blocks it. Under a grid limit, switching on hands the slot
        back to the power allocator (which sets its limit) rather than writing at once.
        """
        if slot not in self.book.rack_of:
            raise RefusedError(f"no slot {slot}")
        view = self.book.view(slot, self.clock())
        maximum = self.config.charging.max_current_a
        r = view.fresh
        bms = r.bms_current_max if r is not None else None
        limit = min(maximum, bms or maximum) if limit_a is None else limit_a
        if enable:
            if not (math.isfinite(limit) and 0 < limit <= maximum):
                raise RefusedError(
                    f"slot {slot}: current limit must be above 0 and at most {maximum:g} A"
                    f" (got {limit_a})"
                )
            reasons = self._refusing_on(slot, view, limit, bms)
            if reasons:
                raise RefusedError(f"slot {slot}: cannot charge: {'; '.join(reasons)}")
            if self.allocation.budget_w is not None:
                # Under a grid limit the allocator starts it, within the budget, next step.
                await self._set_manual_off(slot, off=False)
                return
        else:
            await self._set_manual_off(slot, off=True)
        on = view.reading is not None and view.reading.charge_enable is True
        was_off = enable and slot in self.manual_off
        if was_off:
            self.manual_off.discard(slot)  # so that the control step does not undo the write
        try:
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                await self._send(slot, enable=enable, limit=limit, already_on=on and enable)
        except (SafetyRefusedError, RefusedError, DriverError, TimeoutError) as exc:
            if was_off:
                self.manual_off.add(slot)  # refused or failed: the operator's off stands
            if isinstance(exc, RefusedError):
                raise
            raise RefusedError(f"slot {slot}: {exc or 'no answer'}") from exc
        if was_off:
            await self._store("DELETE FROM charging_off WHERE slot = ?", (slot,))
            self.changed.set()

    def _refusing_on(self, slot: int, view: SlotView, limit: float, bms: float | None) -> list[str]:
        """Why an operator's switch-on is refused (empty: it may go)."""
        reasons = [r for r in self.blockers(slot) if r != "charging switched off by an operator"]
        if view.reading is not None and not view.reading.pack_present:
            reasons.append("no pack in the slot")
        if bms is not None and limit > bms:
            reasons.append(f"{limit:g} A is above the pack's BMS limit {bms:g} A")
        return reasons

    async def _set_manual_off(self, slot: int, *, off: bool) -> None:
        """An operator's off (kept across restarts) or its end."""
        if off == (slot in self.manual_off):
            return
        if off:
            sql = "INSERT OR REPLACE INTO charging_off(slot, since) VALUES (?, ?)"
            await self._store(sql, (slot, time.time()))
            self.manual_off.add(slot)
        else:
            await self._store("DELETE FROM charging_off WHERE slot = ?", (slot,))
            self.manual_off.discard(slot)
        self.changed.set()

    async def reset_trip(self, slot: int) -> None:
        """An operator releases a slot's trip (its causes must be gone, on fresh data)."""
        view = self.book.view(slot, self.clock())
        if view.stale:
            raise RefusedError(
                f"slot {slot}: data stale ({view.stale_reason}): cannot"
                " tell whether the cause is gone"
            )
        check = self.rules.check(view)
        if check.trips:
            raise RefusedError(f"slot {slot}: still {', '.join(check.trips)}")
        if self.trips.pop(slot, None) is not None:
            await self._store("DELETE FROM slot_trips WHERE slot = ?", (slot,))
            await self.events.append("slot_trip_reset", {"slot": slot})
            self.changed.set()

    async def release_pack(self, serial: str) -> None:
        """An operator releases a quarantined pack."""
        if self.quarantine.pop(serial, None) is not None:
            await self._store("DELETE FROM pack_quarantine WHERE serial = ?", (serial,))
            await self.events.append("pack_released", {"serial": serial})
            self.changed.set()

    def hold_for_swap(self, slot: int, why: str) -> None:
        """The swap sequence needs the slot's charger off (a pack is about to move)."""
        if self.swap_held.get(slot) != why:
            self.swap_held[slot] = why
            self.changed.set()

    def release_from_swap(self, slot: int) -> None:
        """The swap sequence is done with the slot: it may charge again."""
        if self.swap_held.pop(slot, None) is not None:
            self.changed.set()

    async def set_slot_enabled(self, slot: int, *, enabled: bool) -> None:
        """An operator takes a slot out of service or back (kept across restarts)."""
        if slot not in self.book.rack_of:
            raise RefusedError(f"no slot {slot}")
        if enabled == (slot not in self.disabled_slots):
            return
        batch = JournalBatch()
        if enabled:
            batch.execute("DELETE FROM slots_disabled WHERE slot = ?", (slot,))
        else:
            batch.execute(
                "INSERT OR REPLACE INTO slots_disabled(slot, since) VALUES (?, ?)",
                (slot, time.time()),
            )
        batch.event("slot_enabled" if enabled else "slot_disabled", {"slot": slot})
        await self.events.commit(batch)
        if enabled:
            self.disabled_slots.discard(slot)
        else:
            self.disabled_slots.add(slot)
        self.changed.set()


def _raises(view: SlotView, want: tuple[bool, float]) -> bool:
    """The setpoint switches a charger on or raises its limit (may draw more than now)."""
    enable, limit = want
    r = view.reading
    if not enable:
        return False
    if r is None or not r.charge_enable or r.current_limit is None:
        return True
    return limit > r.current_limit + LIMIT_TOLERANCE_A


def _bms_reasons(r: SlotReading) -> list[str]:
    """What the pack's BMS and the charger say against charging (0 means 0; unknown: no)."""
    reasons = []
    if r.bms_current_max is None or r.bms_current_max <= 0:
        shown = "unknown" if r.bms_current_max is None else f"{r.bms_current_max:g} A"
        reasons.append(f"the BMS allows no charge current (limit {shown})")
    if r.bms_voltage_max is None or r.bms_voltage_max <= 0:
        shown = "unknown" if r.bms_voltage_max is None else f"{r.bms_voltage_max:g} V"
        reasons.append(f"the BMS gives no charge voltage limit ({shown})")
    if r.status == "full":
        reasons.append("charge complete (the charger reports the pack full)")
    return reasons
