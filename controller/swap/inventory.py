"""Pack inventory: where every known pack is, by serial. Each pack is in exactly one place.

A place is a rack slot, the robot, or the vehicle in the bay. The inventory is changed only by
what the station observes (a rack reporting a serial in a slot, the robot reporting the pack it
holds) and by handovers the swap sequence verifies. It is kept in the journal, so a restart
knows where the packs were before checking where they are.
"""

from __future__ import annotations

import enum
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from controller.errors import InventoryError
from controller.store.events import JournalBatch
from drivers import clock


class Place(enum.StrEnum):
    """Where a pack can be."""

    SLOT = "slot"
    ROBOT = "robot"
    VEHICLE = "vehicle"


@dataclass(frozen=True, slots=True)
class PackEntry:
    """One pack and where it is."""

    serial: str
    place: Place
    slot: int | None = None
    vehicle_id: str | None = None
    pack_type: str | None = None
    since: float = 0.0

    def where(self) -> str:
        """Where, in words."""
        if self.place is Place.SLOT:
            return f"slot {self.slot}"
        if self.place is Place.VEHICLE:
            return f"vehicle {self.vehicle_id or '?'}"
        return "the robot"


class Inventory:
    """Packs by serial; changes are written to the journal in the caller's batch."""

    def __init__(self) -> None:
        self.packs: dict[str, PackEntry] = {}

    # --- reading -------------------------------------------------------------------------------

    def get(self, serial: str) -> PackEntry | None:
        """A pack's entry."""
        return self.packs.get(serial)

    def in_slot(self, slot: int) -> PackEntry | None:
        """The pack the inventory places in `slot`."""
        return next(
            (p for p in self.packs.values() if p.place is Place.SLOT and p.slot == slot), None
        )

    def on_robot(self) -> PackEntry | None:
        """The pack the robot holds."""
        return next((p for p in self.packs.values() if p.place is Place.ROBOT), None)

    def in_vehicle(self, vehicle_id: str | None = None) -> PackEntry | None:
        """The pack in the vehicle in the bay (that vehicle's, if named)."""
        return next(
            (
                p
                for p in self.packs.values()
                if p.place is Place.VEHICLE and (vehicle_id is None or p.vehicle_id == vehicle_id)
            ),
            None,
        )

    def violations(self) -> list[str]:
        """Broken invariants: two packs in one slot, two on the robot.

        One place per pack holds by construction: the inventory is keyed by serial.
        """
        problems: list[str] = []
        slots: dict[int, str] = {}
        robot: list[str] = []
        for p in self.packs.values():
            if p.place is Place.SLOT:
                if p.slot is None:
                    problems.append(f"pack {p.serial} in a slot without a number")
                elif p.slot in slots:
                    problems.append(f"packs {slots[p.slot]} and {p.serial} both in slot {p.slot}")
                else:
                    slots[p.slot] = p.serial
            elif p.place is Place.ROBOT:
                robot.append(p.serial)
        if len(robot) > 1:
            problems.append(f"the robot holds {len(robot)} packs: {', '.join(robot)}")
        return problems

    # --- changing ------------------------------------------------------------------------------

    def put(
        self,
        serial: str,
        place: Place,
        batch: JournalBatch,
        *,
        slot: int | None = None,
        vehicle_id: str | None = None,
        pack_type: str | None = None,
        why: str,
    ) -> PackEntry:
        """Record that `serial` is now at `place` (moving it from wherever it was).

        Raises `InventoryError` when the place is taken (a slot or the robot holds another).
        """
        old = self.packs.get(serial)
        other = (
            self.in_slot(slot) if place is Place.SLOT and slot is not None
            else self.on_robot() if place is Place.ROBOT
            else None
        )  # fmt: skip
        if other is not None and other.serial != serial:
            raise InventoryError(
                f"pack {serial} cannot go to {other.where()}: pack {other.serial} is there"
            )
        entry = PackEntry(
            serial,
            place,
            slot if place is Place.SLOT else None,
            vehicle_id if place is Place.VEHICLE else None,
            pack_type or (old.pack_type if old else None),
            clock.wall(),
        )
        if old is not None and (old.place, old.slot, old.vehicle_id) == (
            entry.place,
            entry.slot,
            entry.vehicle_id,
        ):
            if entry.pack_type != old.pack_type:
                self.packs[serial] = replace(old, pack_type=entry.pack_type)
                self._store(self.packs[serial], batch)
            return self.packs[serial]
        self.packs[serial] = entry
        self._store(entry, batch)
        batch.event(
            "pack_moved",
            {
                "serial": serial,
                "from": old.where() if old else None,
                "to": entry.where(),
                "why": why,
            },
        )
        return entry

    def forget(self, serial: str, batch: JournalBatch, *, why: str) -> None:
        """The pack has left the station (in a departed vehicle)."""
        old = self.packs.pop(serial, None)
        if old is None:
            return
        batch.execute("DELETE FROM packs WHERE serial = ?", (serial,))
        batch.event("pack_left", {"serial": serial, "from": old.where(), "why": why})

    @staticmethod
    def _store(entry: PackEntry, batch: JournalBatch) -> None:
        batch.execute(
            "INSERT INTO packs(serial, place, slot, vehicle_id, pack_type, since)"
            " VALUES (?,?,?,?,?,?) ON CONFLICT(serial) DO UPDATE SET place = excluded.place,"
            " slot = excluded.slot, vehicle_id = excluded.vehicle_id,"
            " pack_type = excluded.pack_type, since = excluded.since",
            (
                entry.serial,
                entry.place.value,
                entry.slot,
                entry.vehicle_id,
                entry.pack_type,
                entry.since,
            ),
        )

    # --- persistence ---------------------------------------------------------------------------

    @classmethod
    def load(cls, conn: sqlite3.Connection) -> Inventory:
        """Read the inventory from the journal (on the journal thread)."""
        inv = cls()
        for serial, place, slot, vehicle_id, pack_type, since in conn.execute(
            "SELECT serial, place, slot, vehicle_id, pack_type, since FROM packs"
        ):
            inv.packs[str(serial)] = PackEntry(
                str(serial), Place(place), slot, vehicle_id, pack_type, float(since)
            )
        return inv

    def counts(self) -> Mapping[Place, int]:
        """How many packs are where."""
        out = dict.fromkeys(Place, 0)
        for p in self.packs.values():
            out[p.place] += 1
        return out

    def serials(self) -> Iterable[str]:
        """Every known serial."""
        return self.packs.keys()
