"""What an operator may do to the chargers: switch one, release a trip or a pack, take a slot out.

Each is refused with the reason when unsafe (`RefusedError`), and whatever it changes is kept
across restarts (the journal) before it takes effect.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
from typing import TYPE_CHECKING

from controller.charging.setpoints import WRITE_TIMEOUT_S
from controller.errors import DriverError, RefusedError, SafetyRefusedError
from controller.plant.slots import SlotView
from controller.store.events import JournalBatch
from controller.store.journal import transaction
from drivers import clock as clocks

if TYPE_CHECKING:
    from controller.charging.control import SlotControl

MANUAL_OFF = "charging switched off by an operator"


class OperatorCommands:
    """The operator's commands on the slots of one `SlotControl`."""

    def __init__(self, control: SlotControl) -> None:
        self.control = control

    async def set_charging(self, slot: int, *, enable: bool, limit_a: float | None = None) -> None:
        """Command a charger directly (commissioning); refused with the reason when unsafe.

        Switching off is always attempted and stays off (until switched on again); switching
        on is refused while anything blocks it. Under a grid limit, switching on hands the slot
        back to the power allocator (which sets its limit) rather than writing at once.
        """
        c = self.control
        if slot not in c.book.rack_of:
            raise RefusedError(f"no slot {slot}")
        view = c.book.view(slot, c.clock())
        maximum = c.config.charging.max_current_a
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
            if c.allocation.shared:
                # Under a grid limit (or circuits) the allocator starts it, within them, next step.
                await self._set_manual_off(slot, off=False)
                return
        else:
            await self._set_manual_off(slot, off=True)
        on = view.reading is not None and view.reading.charge_enable is True
        was_off = enable and slot in c.manual_off
        if was_off:
            c.manual_off.discard(slot)  # so that the control step does not undo the write
        try:
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                await c.setpoints.send(slot, enable=enable, limit=limit, already_on=on and enable)
        except (SafetyRefusedError, RefusedError, DriverError, TimeoutError) as exc:
            if was_off:
                c.manual_off.add(slot)  # refused or failed: the operator's off stands
            c.touch(slot)  # a refusal is an alarm of the slot's: raised by its next step
            if isinstance(exc, RefusedError):
                raise
            raise RefusedError(f"slot {slot}: {exc or 'no answer'}") from exc
        if was_off:
            await self._store("DELETE FROM charging_off WHERE slot = ?", (slot,))
        c.touch(slot)

    def _refusing_on(self, slot: int, view: SlotView, limit: float, bms: float | None) -> list[str]:
        """Why an operator's switch-on is refused (empty: it may go)."""
        reasons = [r for r in self.control.blockers(slot) if r != MANUAL_OFF]
        if view.reading is not None and not view.reading.pack_present:
            reasons.append("no pack in the slot")
        if bms is not None and limit > bms:
            reasons.append(f"{limit:g} A is above the pack's BMS limit {bms:g} A")
        return reasons

    async def _set_manual_off(self, slot: int, *, off: bool) -> None:
        """An operator's off (kept across restarts) or its end."""
        c = self.control
        if off == (slot in c.manual_off):
            return
        if off:
            sql = "INSERT OR REPLACE INTO charging_off(slot, since) VALUES (?, ?)"
            await self._store(sql, (slot, clocks.wall()))
            c.manual_off.add(slot)
        else:
            await self._store("DELETE FROM charging_off WHERE slot = ?", (slot,))
            c.manual_off.discard(slot)
        c.touch(slot)

    async def reset_trip(self, slot: int) -> None:
        """An operator releases a slot's trip (its causes must be gone, on fresh data)."""
        c = self.control
        view = c.book.view(slot, c.clock())
        if view.stale:
            raise RefusedError(
                f"slot {slot}: data stale ({view.stale_reason}): cannot"
                " tell whether the cause is gone"
            )
        check = c.rules.check(view)
        if check.trips:
            raise RefusedError(f"slot {slot}: still {', '.join(check.trips)}")
        if c.trips.pop(slot, None) is not None:
            await self._store("DELETE FROM slot_trips WHERE slot = ?", (slot,))
            await c.events.append("slot_trip_reset", {"slot": slot})
            c.touch(slot)

    async def release_pack(self, serial: str) -> None:
        """An operator releases a quarantined pack."""
        c = self.control
        if c.quarantine.pop(serial, None) is not None:
            await self._store("DELETE FROM pack_quarantine WHERE serial = ?", (serial,))
            await c.events.append("pack_released", {"serial": serial})
            c.touch(*c.book.slots)  # wherever the pack is now

    async def set_slot_enabled(self, slot: int, *, enabled: bool) -> None:
        """An operator takes a slot out of service or back (kept across restarts)."""
        c = self.control
        if slot not in c.book.rack_of:
            raise RefusedError(f"no slot {slot}")
        if enabled == (slot not in c.disabled_slots):
            return
        batch = JournalBatch()
        if enabled:
            batch.execute("DELETE FROM slots_disabled WHERE slot = ?", (slot,))
        else:
            batch.execute(
                "INSERT OR REPLACE INTO slots_disabled(slot, since) VALUES (?, ?)",
                (slot, clocks.wall()),
            )
        batch.event("slot_enabled" if enabled else "slot_disabled", {"slot": slot})
        await c.events.commit(batch)
        if enabled:
            c.disabled_slots.discard(slot)
        else:
            c.disabled_slots.add(slot)
        c.touch(slot)

    async def _store(self, sql: str, args: tuple[object, ...]) -> None:
        def write(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.execute(sql, args)

        await self.control.journal.call(write)
