"""What the controller knows of every slot, with its age: the latest reading, or why not.

Unknown or stale data is "not safe": a slot is stale when it has no reading, its rack is
offline or its last poll failed, its data is older than the rack's `stale_after`, or its
charger's heartbeat stopped.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from drivers.rack import RackSnapshot, SlotReading


@dataclass(frozen=True, slots=True)
class RackInfo:
    """The per-rack figures the slot book needs."""

    name: str
    slots: tuple[int, ...]
    stale_after_s: float
    heartbeat_timeout_s: float


@dataclass(frozen=True, slots=True)
class SlotView:
    """One slot as of `now`: the reading (possibly old) and whether it can be trusted."""

    slot: int
    rack: str
    reading: SlotReading | None
    rack_online: bool
    age_s: float | None  # the age of the data; the reason text is fixed (no live counters)
    stale_reason: str | None
    charger_silent: bool = False  # the rack answers, but this charger does not
    answers: bool = False  # the rack's last poll succeeded and this charger answered in it

    @property
    def stale(self) -> bool:
        """True when the data must not be relied on."""
        return self.stale_reason is not None

    @property
    def fresh(self) -> SlotReading | None:
        """The reading if it is fresh, else None."""
        return None if self.stale else self.reading


class SlotBook:
    """Latest snapshot per rack, and slot views computed from them on demand."""

    def __init__(self, racks: Iterable[RackInfo]) -> None:
        self.racks = {r.name: r for r in racks}
        self.rack_of = {slot: r.name for r in self.racks.values() for slot in r.slots}
        self._slots = sorted(self.rack_of)
        self._snapshots: dict[str, RackSnapshot] = {}
        # Views as of one `now`, computed once: a step asks for the same slot many times.
        self._views_at: float | None = None
        self._views: dict[int, SlotView] = {}

    @property
    def slots(self) -> list[int]:
        """Every slot of the station, in order."""
        return list(self._slots)

    def update(self, snapshot: RackSnapshot) -> None:
        """Take a rack's latest poll result."""
        self._snapshots[snapshot.rack] = snapshot
        for slot in self.racks[snapshot.rack].slots if snapshot.rack in self.racks else ():
            self._views.pop(slot, None)

    def rack_online(self, rack: str) -> bool:
        """True when the rack's last poll succeeded."""
        snap = self._snapshots.get(rack)
        return snap is not None and snap.online

    def rack_offline(self, rack: str) -> bool:
        """True once the rack has been declared offline (N failed polls in a row)."""
        snap = self._snapshots.get(rack)
        return snap is not None and snap.offline

    def snapshot(self, rack: str) -> RackSnapshot | None:
        """The rack's latest snapshot."""
        return self._snapshots.get(rack)

    def view(self, slot: int, now: float) -> SlotView:
        """The slot as of `now` (monotonic)."""
        if now != self._views_at:
            self._views_at, self._views = now, {}
        view = self._views.get(slot)
        if view is None:
            view = self._views[slot] = self._view(slot, now)
        return view

    def _view(self, slot: int, now: float) -> SlotView:
        rack = self.rack_of[slot]
        info = self.racks[rack]
        snap = self._snapshots.get(rack)
        reading = snap.readings.get(slot) if snap is not None else None
        online = snap is not None and snap.online
        answers = (
            snap is not None
            and online
            and not snap.consecutive_failures
            and slot not in snap.failed
            and reading is not None
        )
        age = None if reading is None else max(0.0, now - reading.at)
        reason: str | None = None
        if reading is None:
            reason = "no data from the rack yet" if online or snap is None else "rack offline"
        elif not online:
            reason = "rack offline"
        elif snap is not None and slot in snap.failed:
            # The rack answers, this charger does not: its own problem, not the rack's.
            reason = "charger not answering"
            return SlotView(slot, rack, reading, online, age, reason, charger_silent=True)
        elif snap is not None and snap.consecutive_failures:
            reason = "last poll failed"
        elif age is not None and age > info.stale_after_s:
            reason = "data too old"
        elif reading.at - reading.heartbeat_since > info.heartbeat_timeout_s:
            # Judged across readings, not against now: a slow rack's data is old (the age
            # check above), not a stopped heartbeat.
            reason = "charger heartbeat stopped"
            return SlotView(
                slot, rack, reading, online, age, reason, charger_silent=True, answers=answers
            )
        return SlotView(slot, rack, reading, online, age, reason, answers=answers)

    def views(self, now: float) -> list[SlotView]:
        """Every slot's view."""
        return [self.view(slot, now) for slot in self._slots]
