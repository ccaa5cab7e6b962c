"""The chargers' setpoints: written through the safety supervisor, verified, retried with a pause.

On: the limit is written and read back before the enable (a charger that did not take its
limit is never switched on). Off: only the enable. A setpoint the charger will not take is
retried with a growing pause and reported (`setpoint_not_applied`), never hammered; a stop or a
lower limit is retried every second however often it failed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from controller.errors import DriverError, NoLongerWantedError, SafetyRefusedError
from controller.plant.slots import SlotBook, SlotView
from controller.safety.actuators import Actuators
from drivers.rack import RackDriver, RackPoller

_log = logging.getLogger(__name__)

WRITE_RETRY_S = 1.0
WRITE_RETRY_MAX_S = 60.0
WRITE_TIMEOUT_S = 2.0
LIMIT_TOLERANCE_A = 0.05
Setpoint = tuple[bool, float]  # (enable, current limit in A)


@dataclass(frozen=True, slots=True)
class Rack:
    """A rack's driver and poller, as the slot control uses them."""

    driver: RackDriver
    poller: RackPoller


@dataclass
class Writing:
    """What was last asked of a charger, and how that went."""

    want: Setpoint
    at: float
    failures: int = 0
    error: str | None = None

    def due(self, now: float, *, steady: bool = False) -> bool:
        """A retry is due: 1 s after the first try and the first failure, then 2, 4 ... 60 s.

        `steady`: every 1 s however often it failed (a stop, a lower limit: never delayed).
        """
        return now >= self.due_at(steady=steady)

    def due_at(self, *, steady: bool = False) -> float:
        """When a retry is due (see `due`)."""
        backoff = 0 if steady else min(max(self.failures - 1, 0), 6)
        return self.at + min(WRITE_RETRY_MAX_S, WRITE_RETRY_S * 2.0**backoff)


class Setpoints:
    """Writes setpoints (racks in parallel) and remembers what was asked and verified."""

    def __init__(
        self,
        racks: Mapping[str, Rack],
        book: SlotBook,
        actuators: Actuators,
        *,
        clock: Callable[[], float],
        blocked: Callable[[int], list[str]],
    ) -> None:
        self.racks = dict(racks)
        self.book = book
        self.actuators = actuators
        self.clock = clock
        self.blocked = blocked  # why a slot must not be switched on now (empty: it may)
        self.writes: dict[int, Writing] = {}
        # The setpoints last written and verified per slot (enable, limit or None when only
        # the enable was written), with the clock's time of the read-back.
        self.applied: dict[int, tuple[bool, float | None, float]] = {}

    async def write_all(self, plans: Iterable[tuple[SlotView, Setpoint]]) -> set[int]:
        """Write setpoints, racks in parallel (a slow rack delays only itself); return failures."""
        by_rack: dict[str, list[tuple[SlotView, Setpoint]]] = {}
        for view, want in plans:
            by_rack.setdefault(view.rack, []).append((view, want))

        failed: set[int] = set()

        async def rack_writes(items: list[tuple[SlotView, Setpoint]]) -> None:
            for view, (enable, limit) in items:
                if not await self._write(view, enable=enable, limit=limit):
                    failed.add(view.slot)

        await asyncio.gather(*(rack_writes(items) for items in by_rack.values()))
        return failed

    async def _write(self, view: SlotView, *, enable: bool, limit: float) -> bool:
        rack = self.racks[view.rack]
        writing = self.writes.get(view.slot)
        already_on = view.reading is not None and view.reading.charge_enable is True
        try:
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                await self.send(view.slot, enable=enable, limit=limit, already_on=already_on)
        except NoLongerWantedError as exc:
            _log.info("%s", exc)
            self.writes.pop(view.slot, None)
            return True  # nothing failed: the next step decides again
        except SafetyRefusedError as exc:
            # The supervisor named it (alarm, event, motion log): retried with the same pause.
            _log.warning("slot %d: %s", view.slot, exc)
            if writing is not None:
                writing.failures += 1
            return False
        except (DriverError, TimeoutError) as exc:
            message = str(exc) or f"no answer within {WRITE_TIMEOUT_S:g} s"
            on_off = "on" if enable else "off"
            _log.warning("slot %d: setting charge %s failed: %s", view.slot, on_off, message)
            if writing is not None:
                writing.failures += 1
                writing.error = f"charge {on_off} not applied: {message}"
            return False
        if writing is not None:
            writing.error = None
        _log.info(
            "slot %d: charging %s%s",
            view.slot,
            "on" if enable else "off",
            f" at {limit:g} A" if enable else "",
        )
        if enable != already_on:
            # Switched on or off: the charger's state is read at once. A new limit for a
            # charger already on was read back when written; the next poll shows its effect.
            rack.poller.poll_soon()
        return True

    async def send(self, slot: int, *, enable: bool, limit: float, already_on: bool) -> None:
        """Setpoints through the safety supervisor: a limit is read back before the enable.

        On: the limit is written and verified first, then the enable (a charger that did not
        take its limit is never switched on). Off: only the enable.
        """
        if enable:
            back = await self.actuators.charger_limit(slot, limit)
            self.applied[slot] = (already_on, back, self.clock())
            if not already_on:
                # The limit's round trip took time: the swap may have claimed the slot, an
                # operator switched it off, a cause appeared. Looked at again, at once.
                blocked = self.blocked(slot)
                if blocked:
                    raise NoLongerWantedError(f"slot {slot}: not switched on: {blocked[0]}")
                await self.actuators.charger_enable(slot, on=True)
            self.applied[slot] = (True, back, self.clock())
        else:
            await self.actuators.charger_enable(slot, on=False)
            self.applied[slot] = (False, None, self.clock())

    def as_commanded(self, view: SlotView) -> SlotView:
        """The view with the setpoints last written, when its reading is older than the write.

        A poll whose reads were sent before a write landed (the link serialises them, so such
        a poll can complete just after the write) shows the setpoints from before it. Taken
        for the truth, it would make the controller believe a charger still at a limit it has
        just raised, "already there" at the old one, and give the difference to another slot:
        over the budget. The verified write is the truth until a poll sent after it.
        """
        applied = self.applied.get(view.slot)
        r = view.reading
        if applied is None or r is None:
            return view
        enable, limit, at = applied
        if r.at >= at:
            del self.applied[view.slot]  # the reading is newer: it tells
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
        """Switch every reachable charger off, racks in parallel.

        Those that may be on first (on, or not known to be off); one known to be off, or
        whose rack is offline, is not asked (the safe state has a budget of 2 s).
        """
        now = self.clock()
        safety = self.actuators.safety

        def may_be_on(slot: int) -> bool:
            r = self.as_commanded(self.book.view(slot, now)).reading
            known_off = r is not None and r.charge_enable is False
            return not known_off or safety.on_since(slot) is not None

        async def rack_off(name: str, rack: Rack) -> None:
            # Every one off first (one request each), then verified while the budget lasts.
            slots = [s for s in rack.driver.slots if may_be_on(s)]
            for verify in (False, True):
                for slot in slots:
                    try:
                        async with asyncio.timeout(WRITE_TIMEOUT_S):
                            await self.actuators.charger_enable(slot, on=False, verify=verify)
                        self.applied[slot] = (False, None, self.clock())
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


def raises(view: SlotView, want: Setpoint) -> bool:
    """The setpoint switches a charger on or raises its limit (may draw more than now)."""
    enable, limit = want
    r = view.reading
    if not enable:
        return False
    if r is None or not r.charge_enable or r.current_limit is None:
        return True
    return limit > r.current_limit + LIMIT_TOLERANCE_A
