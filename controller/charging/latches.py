"""What slot control keeps across restarts: trips, quarantines, alarms, the operator's offs.

Trips (per slot) and quarantines (per pack) latch: they hold until an operator releases them
(`controller/charging/operator.py`). Alarms are raised and cleared as their causes come and
go; each change is an event and a row, written in the control step's one transaction.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass

from controller.charging.supervision import SlotCheck
from controller.plant.alarms import Alarm, Severity
from controller.plant.slots import SlotView
from controller.store.events import JournalBatch
from controller.store.journal import Journal
from drivers import clock

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Latch:
    """A trip (per slot) or a quarantine (per pack)."""

    reason: str
    since: float
    slot: int | None = None


@dataclass(frozen=True, slots=True)
class Restored:
    """Slot control's state as the journal kept it."""

    trips: dict[int, Latch]
    quarantine: dict[str, Latch]
    alarms: list[Alarm]
    disabled: set[int]
    manual_off: set[int]


async def restore(journal: Journal) -> Restored:
    """Read trips, quarantines, active alarms, disabled slots and operator offs."""

    def read(conn: sqlite3.Connection) -> Restored:
        trips = {
            int(slot): Latch(str(reason), float(since), int(slot))
            for slot, reason, since in conn.execute("SELECT slot, reason, since FROM slot_trips")
        }
        quarantine = {
            str(serial): Latch(str(reason), float(since), None if slot is None else int(slot))
            for serial, reason, slot, since in conn.execute(
                "SELECT serial, reason, slot, since FROM pack_quarantine"
            )
        }
        alarms = [
            Alarm(
                scope=scope, code=code, severity=sev, message=msg, since=since, slot=slot, rack=rack
            )
            for scope, code, sev, msg, since, slot, rack in conn.execute(
                "SELECT scope, code, severity, message, since, slot, rack FROM alarms"
            )
        ]
        disabled = {int(r[0]) for r in conn.execute("SELECT slot FROM slots_disabled")}
        off = {int(r[0]) for r in conn.execute("SELECT slot FROM charging_off")}
        return Restored(trips, quarantine, alarms, disabled, off)

    return await journal.call(read)


def report(raised: list[Alarm], cleared: list[Alarm], batch: JournalBatch) -> None:
    """Alarms raised and cleared: logged, an event each, and their rows."""
    for alarm in raised:
        log = _log.error if alarm.severity is Severity.CRITICAL else _log.warning
        log("alarm raised: %s %s: %s", alarm.scope, alarm.code, alarm.message)
        batch.event("alarm_raised", alarm)
        batch.execute(
            "INSERT OR REPLACE INTO alarms(scope, code, severity, message, since, slot, rack)"
            " VALUES (?,?,?,?,?,?,?)",
            (alarm.scope, alarm.code, alarm.severity.value, alarm.message, alarm.since,
             alarm.slot, alarm.rack),
        )  # fmt: skip
    for alarm in cleared:
        _log.info("alarm cleared: %s %s", alarm.scope, alarm.code)
        batch.event("alarm_cleared", alarm)
        batch.execute("DELETE FROM alarms WHERE scope = ? AND code = ?", (alarm.scope, alarm.code))


def latch(
    trips: dict[int, Latch],
    quarantine: dict[str, Latch],
    view: SlotView,
    check: SlotCheck,
    batch: JournalBatch,
) -> None:
    """A trip of `check` latches the slot, and quarantines the pack in it."""
    reason = ", ".join(check.causes[c].message for c in check.trips)
    wall = clock.wall()
    serial = view.reading.pack_serial if view.reading else None
    if view.slot not in trips:
        trips[view.slot] = Latch(reason, wall, view.slot)
        batch.execute(
            "INSERT OR REPLACE INTO slot_trips(slot, reason, since) VALUES (?,?,?)",
            (view.slot, reason, wall),
        )
        batch.event("slot_tripped", {"slot": view.slot, "reason": reason})
    if serial and serial not in quarantine:
        quarantine[serial] = Latch(reason, wall, view.slot)
        batch.execute(
            "INSERT OR REPLACE INTO pack_quarantine(serial, reason, slot, since) VALUES (?,?,?,?)",
            (serial, reason, view.slot, wall),
        )
        batch.event("pack_quarantined", {"serial": serial, "slot": view.slot, "reason": reason})
        _log.error("pack %s quarantined (do not dispense): %s", serial, reason)
