"""The inventory follows the racks: packs placed where their chargers report them.

Outside the swap's own handovers (a person put a pack in by hand, took one out, a charger
read a serial for the first time), and once after an operator's `recover clear`, when what
the robot and the vehicle hold is learnt again from what the devices report.
"""

from __future__ import annotations

import logging

from controller.charging.control import SlotControl
from controller.plant.slots import SlotView
from controller.store.events import JournalBatch
from controller.swap.current import CurrentSwap
from controller.swap.handover import HANDOVER_SETTLE_S, Handovers, polled_after
from controller.swap.inventory import Place
from drivers.rack import RackSnapshot
from drivers.robot.link import RobotLink

_log = logging.getLogger(__name__)


class RackReconciler:
    """Places packs where the racks report them; remembers which readings it has seen."""

    def __init__(self, swap: CurrentSwap, control: SlotControl, handovers: Handovers) -> None:
        self.swap = swap
        self.control = control
        self.handovers = handovers
        self._seen: dict[int, float] = {}  # slot -> time of the reading reconciled
        self._polls: dict[str, RackSnapshot] = {}  # rack -> the poll last looked at

    def forget_readings(self) -> None:
        """Reconcile every slot again from its next reading (after an operator's clear)."""
        self._seen.clear()
        self._polls.clear()

    def reconcile(self, now: float) -> JournalBatch:
        """Place packs where the chargers report them (outside the swap's own handovers).

        Only racks polled since the last look are looked at (a slot left for later, in a
        handover's settling time, is looked at again with its rack's next poll).
        """
        batch = JournalBatch()
        busy = set(self.control.swap_held)
        book = self.control.book
        for rack, info in book.racks.items():
            snapshot = book.snapshot(rack)
            if snapshot is None or self._polls.get(rack) is snapshot:
                continue
            self._polls[rack] = snapshot
            self._reconcile([book.view(slot, now) for slot in info.slots], busy, batch)
        return batch

    def _reconcile(self, views: list[SlotView], busy: set[int], batch: JournalBatch) -> None:
        for view in views:
            r = view.fresh
            if r is None or view.slot in busy:
                continue
            # A charger takes a moment to notice a pack come or go: after a handover, its
            # slot is left to the swap for a while.
            since = self.handovers.at.get(view.slot, -1e9) + HANDOVER_SETTLE_S
            if not polled_after(view, since) or self._seen.get(view.slot) == r.at:
                continue
            self._seen[view.slot] = r.at
            if r.pack_present and r.pack_serial is not None:
                self._present(view.slot, r.pack_serial, r.pack_type, batch)
            elif r.pack_present is False:
                here = self.swap.inventory.in_slot(view.slot)
                if here is not None:
                    self.swap.inventory.forget(
                        here.serial, batch, why=f"slot {view.slot} reports no pack"
                    )

    def _present(self, slot: int, serial: str, pack_type: str | None, batch: JournalBatch) -> None:
        inventory = self.swap.inventory
        here = inventory.in_slot(slot)
        if here is not None and here.serial == serial:
            if pack_type and here.pack_type != pack_type:
                inventory.put(
                    here.serial, Place.SLOT, batch, slot=slot, pack_type=pack_type,
                    why="type reported",
                )  # fmt: skip
            return
        entry = inventory.get(serial)
        if entry is not None and entry.place is not Place.SLOT and self.swap.ctx.active:
            _log.warning("slot %d reports pack %s, which the swap has in %s",
                         slot, serial, entry.where())  # fmt: skip
            return
        if here is not None:
            inventory.forget(here.serial, batch, why=f"slot {slot} reports {serial}")
        inventory.put(
            serial, Place.SLOT, batch, slot=slot, pack_type=pack_type,
            why=f"reported by slot {slot}",
        )  # fmt: skip

    def forget_swap_packs(self, robot: RobotLink) -> JournalBatch:
        """After an operator's clear: the packs on the robot or in the vehicle are unknown."""
        batch = JournalBatch()
        inventory = self.swap.inventory
        for entry in list(inventory.packs.values()):
            if entry.place in {Place.ROBOT, Place.VEHICLE}:
                inventory.forget(entry.serial, batch, why="cleared by an operator")
        status = robot.status
        if status is not None and status.pack_serial is not None:
            inventory.put(status.pack_serial, Place.ROBOT, batch, why="the robot holds it")
        return batch
