"""Slot control: supervision, alarms, trips and quarantine, and the chargers' setpoints.

One task consumes the racks' poll results (and a timer, so staleness is noticed between
polls), evaluates the supervision rules for every slot, reconciles the alarms, latches trips
and quarantines in the journal, and then drives each charger: off whenever anything says so,
otherwise on at the limit the charge policy gives. Every write is verified by read-back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from controller.alarms import Alarm, AlarmBook, Cause, Severity, rack_scope, slot_scope
from controller.config import StationConfig
from controller.errors import SwapstationError
from controller.events import EventLog, JournalBatch
from controller.journal import Journal, transaction
from controller.slots import SlotBook, SlotView
from controller.supervision import SlotCheck, SlotRules
from drivers.errors import DriverError
from drivers.rack import RackDriver, RackPoller, RackSnapshot

_log = logging.getLogger(__name__)

TICK_S = 0.1
WRITE_RETRY_S = 1.0
LIMIT_TOLERANCE_A = 0.05


class CommandRefusedError(SwapstationError):
    """The command is not allowed now; the message says why."""


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


LimitPolicy = Callable[[SlotView], float]


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
        limit_policy: LimitPolicy | None = None,
    ) -> None:
        self.config = config
        self.book = book
        self.racks = dict(racks)
        self.journal = journal
        self.events = events
        self.alarms = AlarmBook()
        self.rules = SlotRules(config.supervision)
        self.trips: dict[int, Latch] = {}
        self.quarantine: dict[str, Latch] = {}
        self.disabled_slots: set[int] = set()
        self.checks: dict[int, SlotCheck] = {}
        self.changed = asyncio.Event()  # set whenever something publishable changed
        self._limit_policy = limit_policy or (lambda _v: config.charging.max_current_a)
        self._queue: asyncio.Queue[RackSnapshot] = asyncio.Queue(maxsize=1000)
        self._writes: dict[int, tuple[bool, float, float]] = {}  # slot -> (enable, limit, at)

    # --- inputs ------------------------------------------------------------------------------

    def on_snapshot(self, snapshot: RackSnapshot) -> None:
        """Pollers call this after every poll (never blocks)."""
        try:
            self._queue.put_nowait(snapshot)
        except asyncio.QueueFull:
            _log.error("slot control is not keeping up; dropping a poll of rack %s", snapshot.rack)

    async def load(self) -> None:
        """Restore trips and quarantines from the journal."""

        def read(conn: sqlite3.Connection) -> tuple[dict[int, Latch], dict[str, Latch]]:
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
            return trips, quarantine

        self.trips, self.quarantine = await self.journal.call(read)

    async def run(self) -> None:
        """Consume poll results and the timer, forever."""
        while True:
            with contextlib.suppress(TimeoutError):
                snapshot = await asyncio.wait_for(self._queue.get(), TICK_S)
                self.book.update(snapshot)
                while not self._queue.empty():
                    self.book.update(self._queue.get_nowait())
            await self.step(time.monotonic())

    # --- the control step ----------------------------------------------------------------------

    async def step(self, now: float) -> None:
        """Evaluate every slot, stop what must stop, record, then start what may start."""
        batch = JournalBatch()
        for rack in self.book.racks:
            causes = (
                {"rack_offline": Cause(Severity.CRITICAL, self._offline_message(rack))}
                if self.book.rack_offline(rack)
                else {}
            )
            self._report(*self.alarms.reconcile(rack_scope(rack), causes, rack=rack), batch)
        plans: list[tuple[SlotView, tuple[bool, float]]] = []
        for view in self.book.views(now):
            check = self.rules.check(view, now)
            self.checks[view.slot] = check
            raised, cleared = self.alarms.reconcile(
                slot_scope(view.slot), check.causes, slot=view.slot, rack=view.rack
            )
            self._report(raised, cleared, batch)
            if check.trips:
                self._latch(view, check, batch)
            want = self._wanted(view, now)
            if want is not None:
                plans.append((view, want))
        # Safety first: stop every charger that must stop before anything else, recording
        # included; then commit alarms, latches and events in one transaction; then start.
        for view, (enable, limit) in plans:
            if not enable:
                await self._write(view, enable=False, limit=limit)
        if batch:
            await self.events.commit(batch)
            self.changed.set()
        for view, (enable, limit) in plans:
            if enable:
                await self._write(view, enable=True, limit=limit)

    def _offline_message(self, rack: str) -> str:
        snap = self.book.snapshot(rack)
        if snap is None:
            return f"rack {rack}: no answer yet"
        return f"rack {rack} offline: {snap.error or 'no answer'}"

    @staticmethod
    def _report(raised: list[Alarm], cleared: list[Alarm], batch: JournalBatch) -> None:
        for alarm in raised:
            log = _log.error if alarm.severity is Severity.CRITICAL else _log.warning
            log("alarm raised: %s %s: %s", alarm.scope, alarm.code, alarm.message)
            batch.event("alarm_raised", alarm)
        for alarm in cleared:
            _log.info("alarm cleared: %s %s", alarm.scope, alarm.code)
            batch.event("alarm_cleared", alarm)

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

    def blockers(self, slot: int, now: float | None = None) -> list[str]:
        """Every reason charging must be off in `slot` now (empty: it may charge)."""
        view = self.book.view(slot, time.monotonic() if now is None else now)
        reasons: list[str] = []
        if view.stale:
            reasons.append(f"data stale: {view.stale_reason}")
        check = self.checks.get(slot)
        if check is not None:
            reasons += [c.message for c in check.causes.values()]
        if slot in self.trips:
            reasons.append(f"tripped: {self.trips[slot].reason} (needs an operator reset)")
        if slot in self.disabled_slots:
            reasons.append("slot disabled by an operator")
        r = view.reading
        if r is not None and r.pack_serial in self.quarantine:
            reasons.append(
                f"pack {r.pack_serial} quarantined: {self.quarantine[r.pack_serial].reason}"
            )
        if r is not None and r.status in {"fault", "disabled"}:
            reasons.append(f"charger status {r.status}")
        return reasons

    def _wanted(self, view: SlotView, now: float) -> tuple[bool, float] | None:
        """The setpoint a charger should get now, or None to leave it alone."""
        r = view.fresh
        if r is None:
            # Unreachable or stale: nothing can be known, nothing is written; the charger's
            # own communication watchdog is the guard until the data is back.
            return None
        want_on = bool(r.pack_present) and not self.blockers(view.slot, now)
        want_limit = self._limit_policy(view) if want_on else 0.0
        if r.charge_enable == want_on and (
            not want_on or abs((r.current_limit or 0.0) - want_limit) <= LIMIT_TOLERANCE_A
        ):
            self._writes.pop(view.slot, None)
            return None
        last = self._writes.get(view.slot)
        if last is not None and last[:2] == (want_on, want_limit) and now - last[2] < WRITE_RETRY_S:
            return None  # written a moment ago; the next poll shows it
        self._writes[view.slot] = (want_on, want_limit, now)
        return want_on, want_limit

    async def _write(self, view: SlotView, *, enable: bool, limit: float) -> None:
        rack = self.racks[view.rack]
        try:
            if enable:
                # Limit first, so the charger never runs at a stale, higher limit.
                await rack.driver.write_setpoints(
                    view.slot, current_limit=limit, charge_enable=True
                )
            else:
                await rack.driver.write_setpoints(view.slot, charge_enable=False)
        except DriverError as exc:
            _log.warning(
                "slot %d: setting charge %s failed: %s", view.slot, "on" if enable else "off", exc
            )
            return
        _log.info(
            "slot %d: charging %s%s",
            view.slot,
            "on" if enable else "off",
            f" at {limit:g} A" if enable else "",
        )
        rack.poller.poll_soon()

    # --- commands ------------------------------------------------------------------------

    async def set_charging(self, slot: int, *, enable: bool, limit_a: float | None = None) -> None:
        """Command a charger directly (commissioning); refused with the reason when unsafe."""
        if slot not in self.book.rack_of:
            raise CommandRefusedError(f"no slot {slot}")
        view = self.book.view(slot, time.monotonic())
        if enable:
            reasons = self.blockers(slot)
            if view.reading is not None and not view.reading.pack_present:
                reasons.append("no pack in the slot")
            if reasons:
                raise CommandRefusedError(f"slot {slot}: cannot charge: {'; '.join(reasons)}")
        elif not view.rack_online:
            raise CommandRefusedError(f"slot {slot}: rack {view.rack} is offline")
        limit = self.config.charging.max_current_a if limit_a is None else limit_a
        try:
            await self.racks[view.rack].driver.write_setpoints(
                slot, current_limit=limit if enable else None, charge_enable=enable
            )
        except DriverError as exc:
            raise CommandRefusedError(f"slot {slot}: {exc}") from exc

    async def reset_trip(self, slot: int) -> None:
        """An operator releases a slot's trip (its causes must be gone)."""
        check = self.checks.get(slot)
        if check is not None and check.trips:
            raise CommandRefusedError(f"slot {slot}: still {', '.join(check.trips)}")
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

    def set_slot_enabled(self, slot: int, *, enabled: bool) -> None:
        """An operator takes a slot out of service or back."""
        if enabled:
            self.disabled_slots.discard(slot)
        else:
            self.disabled_slots.add(slot)
        self.changed.set()
