"""A day of cars at a charging-only station: the real daemon decides, the simulated rack charges.

Cars arrive at the times of a sample day and queue for the bay; the car at the head is served
when the daemon's dispense policy finds it a pack (`dispense.choose`, on the daemon's own slot
data), and the swap itself is an instant pack exchange in the simulated rack followed by the
bay being busy for `swap_s`. A car that waited `max_wait_s` without a pack leaves (turned away).
The station's total charging power is sampled after every physics tick of the rack.
"""

from __future__ import annotations

import asyncio
import collections
import random
import statistics
import time
from dataclasses import dataclass, field

from controller.errors import NoPackError
from controller.swap.dispense import choose
from simstation.arrivals import returned_soc
from simstation.charger import SimPack
from simstation.rack import SimRack
from tests.rig import Rig

DAY_S = 86_400.0


@dataclass
class DayResult:
    """What a simulated day came to."""

    arrivals: int = 0
    served: int = 0
    turned_away: int = 0
    waiting: int = 0  # still queued at the end of the day
    waits_s: list[float] = field(default_factory=list)  # of the served cars
    peak_w: float = 0.0
    energy_kwh: float = 0.0
    samples: int = 0
    over: list[tuple[float, float]] = field(default_factory=list)  # (sim time, total W)
    wall_s: float = 0.0

    @property
    def mean_wait_s(self) -> float:
        """Mean wait of the served cars."""
        return statistics.fmean(self.waits_s) if self.waits_s else 0.0

    def summary(self) -> dict[str, float]:
        """The figures, rounded, for printing."""
        return {
            "arrivals": self.arrivals,
            "served": self.served,
            "turned_away": self.turned_away,
            "waiting": self.waiting,
            "mean_wait_min": round(self.mean_wait_s / 60.0, 1),
            "peak_kw": round(self.peak_w / 1000.0, 1),
            "energy_kwh": round(self.energy_kwh, 0),
            "samples": self.samples,
            "wall_s": round(self.wall_s, 1),
        }


async def run_day(
    rig: Rig,
    arrivals: list[float],
    *,
    limit_w: float,
    pack_type: str = "STD75",
    max_wait_s: float = 900.0,
    swap_s: float = 300.0,
    seed: int = 7,
    day_s: float = DAY_S,
) -> DayResult:
    """Play the day; `limit_w` is what the sampled total must never exceed."""
    sim = rig.sim
    rack: SimRack = next(iter(sim.racks.values()))
    control = rig.station.control
    config = rig.station.config
    rng = random.Random(seed)
    result = DayResult(arrivals=len(arrivals))
    tick = asyncio.Event()
    t0 = sim.clock.now()
    last = [t0]

    def on_tick(now: float) -> None:
        total = sum(c.power_w for c in rack.chargers.values())
        result.samples += 1
        result.peak_w = max(result.peak_w, total)
        result.energy_kwh += total * (now - last[0]) / 3.6e6
        last[0] = now
        if total > limit_w:
            result.over.append((now - t0, total))
        tick.set()

    rack.on_tick.append(on_tick)
    pending = list(arrivals)
    pending.reverse()
    queue: collections.deque[float] = collections.deque()
    bay_free_at = 0.0
    unsettled: dict[int, str | None] = {}  # slot -> serial the daemon must see there first
    started = time.monotonic()
    try:
        while (now := sim.clock.now() - t0) < day_s:
            while pending and pending[-1] <= now:
                queue.append(pending.pop())
            while queue and now - queue[0] > max_wait_s:
                queue.popleft()
                result.turned_away += 1
            _settle(control, unsettled)
            if queue and now >= bay_free_at:
                try:
                    pick = choose(config, control, pack_type, exclude=set(unsettled),
                                  busy=set(unsettled))  # fmt: skip
                except NoPackError:
                    pass
                else:
                    arrived = queue.popleft()
                    result.waits_s.append(now - arrived)
                    result.served += 1
                    serial = f"EV{result.served:04d}"
                    rack.remove_pack(pick.slot)
                    rack.insert_pack(
                        pick.free_slot, SimPack(serial, pack_type=pack_type, soc=returned_soc(rng))
                    )
                    unsettled[pick.slot] = None
                    unsettled[pick.free_slot] = serial
                    bay_free_at = now + swap_s
            tick.clear()
            await tick.wait()
    finally:
        rack.on_tick.remove(on_tick)
    result.waiting = len(queue) + len(pending)
    result.wall_s = time.monotonic() - started
    return result


def _settle(control: object, unsettled: dict[int, str | None]) -> None:
    """Forget slots whose new content the daemon has seen (fresh data)."""
    from controller.charging.control import SlotControl

    assert isinstance(control, SlotControl)
    now = time.monotonic()
    for slot, serial in list(unsettled.items()):
        r = control.book.view(slot, now).fresh
        if r is None:
            continue
        if (serial is None and r.pack_present is False) or (
            serial is not None and r.pack_serial == serial
        ):
            del unsettled[slot]
