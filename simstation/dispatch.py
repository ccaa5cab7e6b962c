"""Cars to several bays: each car, as it arrives, joins the bay where it would start soonest.

A site with several swap bays (`station.bays` in a scenario) runs one station and one daemon per
bay; the cars arrive once for the site. A driver (or the fleet's app) looks at the bays' queues
and their ready packs when arriving and picks one, then stays in its queue: no switching lanes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from simstation.traffic import Car


class Bay(Protocol):
    """What the dispatch sees of a bay's fleet."""

    bay: int

    def ahead(self) -> list[Car]:
        """The cars queued before a newcomer (not the one in the bay: its pack is reserved)."""
        ...

    def busy(self) -> bool:
        """Whether a car is in the bay (its swap under way)."""
        ...

    def ready_of(self, pack_type: str) -> int:
        """Dispensable packs of a type, as the bay's station last said."""
        ...

    def take(self, car: Car) -> None:
        """`car` joins this bay's queue."""
        ...


def choose(bays: Sequence[Bay], car: Car) -> Bay:
    """The bay a newcomer picks.

    One with a pack for it (more ready packs of its type than cars of its type queued ahead of
    it; the car in the bay has its pack reserved, outside the ready count already), then the one
    with the fewest cars ahead (queued, and the one in the bay), then the most ready packs of
    its type, then the first.
    """

    def key(indexed: tuple[int, Bay]) -> tuple[bool, int, int, int]:
        index, bay = indexed
        queued = bay.ahead()
        ready = bay.ready_of(car.pack_type)
        same = sum(1 for other in queued if other.pack_type == car.pack_type)
        return (ready <= same, len(queued) + bay.busy(), -ready, index)

    return min(enumerate(bays), key=key)[1]


class Dispatch:
    """The site's cars, handed to the bays as they arrive (`admit`), in arrival order."""

    def __init__(self, cars: Iterable[Car]) -> None:
        self.cars = sorted(cars, key=lambda c: c.arrive_s)
        self._pending = list(reversed(self.cars))  # not arrived yet, next one last
        self.bays: list[Bay] = []

    def join(self, bay: Bay) -> None:
        """A bay's fleet takes cars from this dispatch."""
        self.bays.append(bay)

    def next_arrival_s(self) -> float | None:
        """When the next car comes (simulated time of day), None when all have."""
        return self._pending[-1].arrive_s if self._pending else None

    def admit(self, now: float, *, before: bool = False) -> None:
        """Every car arrived by `now` (`before`: before `now`) joins the bay it picks."""
        while self._pending and (
            self._pending[-1].arrive_s < now if before else self._pending[-1].arrive_s <= now
        ):
            car = self._pending.pop()
            bay = choose(self.bays, car)
            car.bay = bay.bay
            bay.take(car)
