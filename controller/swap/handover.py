"""Packs handed between the vehicle, the robot and the racks: checked, and booked in the inventory.

Before the robot stores or fetches, the slot's data must be fresh and its charger off; after,
the inventory follows what the robot reports, and a stored pack must be reported by its slot's
charger, from its own BMS, before the swap goes on. Anything that contradicts what the swap
knows is a `MismatchError`: a fault.
"""

from __future__ import annotations

from collections.abc import Callable

from controller.charging.control import SlotControl
from controller.config.model import StationConfig
from controller.errors import MismatchError
from controller.plant.slots import SlotView
from controller.store.events import JournalBatch
from controller.swap.current import CurrentSwap
from controller.swap.inventory import Place
from controller.swap.phase import Phase
from controller.swap.plan import RobotAction, Where
from drivers import clock
from drivers.robot.protocol import MsgType, RobotStatus

CHARGER_OFF_A = 2.0  # a charger below this current, disabled, is off: its pack may be taken
HANDOVER_SETTLE_S = 2.0  # after a pack was put in or taken out, its charger settles this long


class Handovers:
    """The slots the swap hands packs through, and what it knows of each handover."""

    def __init__(
        self,
        config: StationConfig,
        swap: CurrentSwap,
        control: SlotControl,
        *,
        poll_slot: Callable[[int], None],
    ) -> None:
        self.config = config
        self.swap = swap
        self.control = control
        self.poll_slot = poll_slot  # read the slot again now (its rack's next poll, brought on)
        self.at: dict[int, float] = {}  # slot -> when a pack last moved there or out
        self.release_when_empty: set[int] = set()  # fetched from: held until seen empty

    # --- which slots are the swap's -------------------------------------------------------

    def held(self) -> set[int]:
        """Slots the swap holds (a handover in progress, or a slot not yet seen empty)."""
        return set(self.control.swap_held) | self.release_when_empty

    def not_to_dispense(self) -> set[int]:
        """Slots whose pack is not for a new swap: reserved, held, or just handed over."""
        now = clock.monotonic()
        slots = self.held()
        slots |= {s for s, at in self.at.items() if now - at < HANDOVER_SETTLE_S}
        if self.swap.ctx.active:
            slots.add(self.swap.ctx.reserved_slot)
        return slots

    def release_emptied(self, now: float) -> None:
        """Give a slot a pack was fetched from back to charging once it reports empty."""
        for slot in list(self.release_when_empty):
            view = self.control.book.view(slot, now)
            since = self.at.get(slot, 0.0)
            empty = view.fresh is not None and view.fresh.pack_present is False
            late = now - since > self.config.swap.pack_detect_timeout_s
            if (empty and polled_after(view, since)) or late:
                self.release_when_empty.discard(slot)
                self.control.release_from_swap(slot)

    def settled(self) -> None:
        """After a restart: the slots held for the swap count as just handed over."""
        for slot in self.control.swap_held:
            self.at[slot] = clock.monotonic()

    # --- before and after a robot command ---------------------------------------------------

    def causes(  # noqa: PLR0911 - one return per check, in order
        self, action: RobotAction, now: float
    ) -> list[str]:
        """What must hold in the racks before a handover there (slot data fresh, charger off)."""
        kind, slot = action.kind, action.slot
        if slot is None or kind not in {MsgType.STORE, MsgType.FETCH}:
            return []
        self.control.hold_for_swap(slot, "a pack is being handed over")
        view = self.control.book.view(slot, now)
        r = view.reading
        if view.stale or r is None:
            self.poll_slot(slot)
            return [f"slot {slot}: {view.stale_reason or 'no data'}"]
        if kind is MsgType.STORE:
            if r.pack_present is not False:
                return [f"slot {slot} is not reported empty: cannot store the pack there"]
            return []
        expected = self.expected_in(slot)
        if not r.pack_present:
            raise MismatchError(f"slot {slot} reports no pack, {expected} expected there")
        if r.pack_serial is None:
            return [f"slot {slot}: pack serial not read yet"]
        if r.pack_serial != expected:
            raise MismatchError(f"slot {slot} reports pack {r.pack_serial}, {expected} expected")
        if r.charge_enable is not False or abs(r.current or 0.0) > CHARGER_OFF_A:
            self.poll_slot(slot)
            return [f"slot {slot}: waiting for the charger to switch off"]
        return []

    def expected_in(self, slot: int) -> str:
        """The serial the inventory (or the reservation) puts in `slot`; "?" if none."""
        entry = self.swap.inventory.in_slot(slot)
        if entry is not None:
            return entry.serial
        ctx = self.swap.ctx
        return ctx.reserved_serial if slot == ctx.reserved_slot else "?"

    def phase_complete(self, phase: Phase, now: float) -> list[str] | None:
        """Checks at the end of a phase; None when it is complete, else what it waits for."""
        ctx = self.swap.ctx
        if phase is not Phase.STORING or ctx.stored_verified:
            return None
        # The returned pack must be reported by its slot's charger, from its own BMS.
        slot = ctx.free_slot
        view = self.control.book.view(slot, now)
        r = view.reading
        if view.stale or r is None or not polled_after(view, self.at.get(slot, 0.0)):
            self.poll_slot(slot)
            return [f"slot {slot}: waiting for the charger to report the stored pack"] + (
                [f"slot {slot}: {view.stale_reason}"] if view.stale else []
            )
        if not r.pack_present or r.pack_serial is None:
            # A charger takes a moment to detect a pack and read its BMS.
            limit = self.config.swap.pack_detect_timeout_s
            if now - self.at.get(slot, now) > limit:
                raise MismatchError(
                    f"slot {slot} reports {'no pack' if not r.pack_present else 'no serial'}"
                    f" {limit:g} s after {ctx.old_serial} was stored"
                )
            self.poll_slot(slot)
            return [f"slot {slot}: waiting for the charger to detect the stored pack"]
        if r.pack_serial != ctx.old_serial:
            raise MismatchError(
                f"slot {slot} reports pack {r.pack_serial}, the robot stored {ctx.old_serial}"
            )
        if r.pack_type is not None and r.pack_type != ctx.pack_type:
            raise MismatchError(
                f"the vehicle's pack {ctx.old_serial} is of type {r.pack_type}, the swap is for"
                f" type {ctx.pack_type}"
            )
        ctx.stored_verified, ctx.old_soc, ctx.old_type = True, r.soc, r.pack_type
        ctx.old_soh = r.soh
        self.control.release_from_swap(slot)
        return None

    def apply_effect(self, action: RobotAction, status: RobotStatus, batch: JournalBatch) -> None:
        """A robot command ran: update the inventory, checking the handover."""
        ctx, inv = self.swap.ctx, self.swap.inventory
        kind = action.kind
        held = status.pack_serial
        if kind is MsgType.UNLOCK:
            ctx.vehicle_pack_locked = False
        elif kind is MsgType.REMOVE:
            if held is None:
                raise MismatchError("the robot reports no pack serial after removing the vehicle's")
            self._check_not_in_a_slot(held)
            ctx.old_serial, ctx.vehicle_pack, ctx.vehicle_pack_locked = held, "none", False
            inv.put(held, Place.ROBOT, batch, why=f"removed from vehicle {ctx.vehicle_id}")
        elif kind is MsgType.STORE:
            entry = inv.on_robot()
            slot = action.slot or status.slot
            if entry is None:
                raise MismatchError("the robot stored a pack the inventory did not place on it")
            inv.put(entry.serial, Place.SLOT, batch, slot=slot, why=f"stored in slot {slot}")
            self.at[slot] = clock.monotonic()
            self.poll_slot(slot)
        elif kind is MsgType.FETCH:
            slot = action.slot or status.slot
            expected = self.expected_in(slot)
            if held is None:
                raise MismatchError(
                    f"the robot reports no pack serial after fetching from slot {slot}"
                )
            if held != expected:
                raise MismatchError(f"fetched pack {held} from slot {slot}, expected {expected}")
            last = self.control.book.view(slot, clock.monotonic()).reading
            if last is not None and last.pack_serial == held:
                ctx.reserved_soh = last.soh
            inv.put(held, Place.ROBOT, batch, why=f"fetched from slot {slot}")
            self.at[slot] = clock.monotonic()
            # Its charger stays held off until it reports the slot empty (its last reading
            # still shows the pack: it would be switched on at an empty slot).
            self.release_when_empty.add(slot)
        elif kind is MsgType.INSTALL:
            entry = inv.on_robot()
            if entry is None:
                raise MismatchError("the robot installed a pack the inventory did not place on it")
            ctx.installed_serial, ctx.vehicle_pack, ctx.vehicle_pack_locked = (
                entry.serial, "installed", False
            )  # fmt: skip
            inv.put(
                entry.serial, Place.VEHICLE, batch, vehicle_id=ctx.vehicle_id,
                why=f"installed in vehicle {ctx.vehicle_id}",
            )  # fmt: skip
        elif kind is MsgType.LOCK:
            self._check_lock(status)

    def handed_over(self, phase: Phase, batch: JournalBatch) -> None:
        """A pack changed hands for good: journal `pack_handed_over` with the pack's data.

        `in`: the vehicle's pack is in its slot, its charger reporting it; `out`: the station's
        pack is installed and its lock verified. (OCPP's BatterySwap events follow these.)
        """
        ctx = self.swap.ctx
        if phase is Phase.STORING and ctx.old_serial:
            direction, slot, serial, soc, soh = (
                "in", ctx.free_slot, ctx.old_serial, ctx.old_soc, ctx.old_soh
            )  # fmt: skip
        elif phase is Phase.LOCKING and ctx.installed_serial:
            direction, slot, serial, soc, soh = (
                "out", ctx.reserved_slot, ctx.installed_serial, ctx.reserved_soc, ctx.reserved_soh
            )  # fmt: skip
        else:
            return
        batch.event(
            "pack_handed_over",
            {"swap_id": ctx.swap_id, "vehicle_id": ctx.vehicle_id, "direction": direction,
             "slot": slot, "serial": serial, "soc": soc, "soh": soh},
        )  # fmt: skip

    def _check_lock(self, status: RobotStatus) -> None:
        torque = status.torque_dnm / 10
        cfg = self.config.swap
        if not status.locked or not cfg.lock_torque_min_nm <= torque <= cfg.lock_torque_max_nm:
            raise MismatchError(
                f"lock not verified: locked={bool(status.locked)}, torque {torque:.1f} N*m"
                f" (needed {cfg.lock_torque_min_nm:g}..{cfg.lock_torque_max_nm:g})"
            )
        ctx = self.swap.ctx
        ctx.vehicle_pack_locked, ctx.lock_torque_nm = True, torque

    def _check_not_in_a_slot(self, serial: str) -> None:
        entry = self.swap.inventory.get(serial)
        if entry is None or entry.place is not Place.SLOT or entry.slot is None:
            return
        view = self.control.book.view(entry.slot, clock.monotonic())
        if view.fresh is not None and view.fresh.pack_serial == serial:
            raise MismatchError(
                f"the vehicle's pack {serial} is also reported by slot {entry.slot}"
            )

    # --- the robot's view against the inventory ----------------------------------------------

    def robot_disagrees(self, status: RobotStatus) -> str | None:
        """Why the robot's own report contradicts the inventory, if it does."""
        on_robot = self.swap.inventory.on_robot()
        held = status.pack_serial
        if bool(status.holding) != (on_robot is not None):
            holds = f"holds {held or 'a pack'}" if status.holding else "holds nothing"
            known = f"it holds {on_robot.serial}" if on_robot else "it holds nothing"
            return f"the robot {holds}, the journal says {known}"
        if held is not None and on_robot is not None and held != on_robot.serial:
            return f"the robot holds {held}, the journal says {on_robot.serial}"
        return None

    def where(self) -> Where:
        """Where this swap's packs are, as the inventory knows it (for the abort plan)."""
        ctx, inv = self.swap.ctx, self.swap.inventory
        in_free = inv.in_slot(ctx.free_slot)
        in_reserved = inv.in_slot(ctx.reserved_slot)
        robot = inv.on_robot()
        return Where(
            robot_holds=robot.serial if robot else None,
            old_in_free_slot=in_free is not None and in_free.serial == ctx.old_serial,
            new_in_reserved_slot=in_reserved is not None
            and in_reserved.serial == ctx.reserved_serial,
        )


def polled_after(view: SlotView, since: float) -> bool:
    """The slot's reading comes from a poll that began after `since` (monotonic)."""
    return view.reading is not None and view.reading.at > since
