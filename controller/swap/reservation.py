"""The swap's reservation: the charged pack it will install, and the free slot for the old one.

Chosen when the swap is authorised, and checked again before anything moves: data that went
unknown (a rack offline) is waited for, the reservation stands; a pack or slot known unfit now
is replaced by another, in the open (event `swap_reserved`, with what it replaces and why).
"""

from __future__ import annotations

import logging

from controller.charging.control import SlotControl
from controller.charging.forecast import ready_text
from controller.config.model import StationConfig
from controller.errors import NoPackError, RefusedError
from controller.store.events import JournalBatch
from controller.swap.current import CurrentSwap
from controller.swap.dispense import Choice, choose, slot_free, still_dispensable
from controller.swap.handover import Handovers
from drivers import clock

_log = logging.getLogger(__name__)


class Reservation:
    """Chooses the swap's pack and slot, and confirms them before the vehicle is lifted."""

    def __init__(
        self, config: StationConfig, swap: CurrentSwap, control: SlotControl, handovers: Handovers
    ) -> None:
        self.config = config
        self.swap = swap
        self.control = control
        self.handovers = handovers

    def choose(self, pack_type: str) -> Choice:
        """The best charged pack of `pack_type` and a free slot; `RefusedError` if none."""
        try:
            return choose(
                self.config,
                self.control,
                pack_type,
                exclude=self.handovers.not_to_dispense(),
                busy=self.handovers.held(),
            )
        except NoPackError as exc:
            text = str(exc)
            if text.startswith("no free slot"):
                raise RefusedError(text) from None
            when = ready_text(self.control.forecast, pack_type)
            text += f"; {when}" if when else ""
            raise NoPackError(text) from None

    def problem(self) -> tuple[str, bool] | None:
        """Why the reserved pack (or the free slot) cannot be used now; and whether only unknown.

        Unknown (stale data): wait. Known (the pack unfit): reserve anew. A check: it changes
        nothing.
        """
        ctx = self.swap.ctx
        now = clock.monotonic()
        why = still_dispensable(
            self.config, self.control, ctx.reserved_slot, ctx.reserved_serial, ctx.pack_type
        )
        if why is not None:
            return f"reserved pack {ctx.reserved_serial} in slot {ctx.reserved_slot}: {why}", (
                self.control.book.view(ctx.reserved_slot, now).stale
            )
        if not slot_free(self.control, ctx.free_slot):
            stale = self.control.book.view(ctx.free_slot, now).stale
            return f"slot {ctx.free_slot} for the returned pack is not free", stale
        return None

    async def confirm(self) -> list[str]:
        """Before anything moves, the reservation is checked again: what blocks it, if any.

        Changes the reservation (journalled, event `swap_reserved`) when the reserved pack or
        slot is known unfit and another can take its place.
        """
        problem = self.problem()
        if problem is None:
            return []
        why, unknown = problem
        if unknown:
            return [f"{why}: waiting for its data (the reservation stands)"]
        ctx = self.swap.ctx
        try:
            pick = choose(
                self.config,
                self.control,
                ctx.pack_type,
                exclude=self.handovers.not_to_dispense() - {ctx.reserved_slot},
                busy=self.handovers.held(),
            )
        except NoPackError as exc:
            return [f"{why}; {exc}"]
        before = {"slot": ctx.reserved_slot, "serial": ctx.reserved_serial,
                  "free_slot": ctx.free_slot}  # fmt: skip
        ctx.reserved_slot, ctx.reserved_serial = pick.slot, pick.serial
        ctx.reserved_soc, ctx.free_slot = pick.soc, pick.free_slot
        batch = JournalBatch()
        batch.event(
            "swap_reserved",
            {"swap_id": ctx.swap_id, "why": why, "instead_of": before,
             "reserved": {"slot": pick.slot, "serial": pick.serial, "soc": pick.soc},
             "free_slot": pick.free_slot},
        )  # fmt: skip
        await self.swap.persist(batch)
        _log.warning(
            "swap %s: %s; reserved %s in slot %d instead", ctx.swap_id[:8], why, pick.serial,
            pick.slot,
        )  # fmt: skip
        return []
