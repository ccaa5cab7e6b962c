"""The `cost` policy's plan: each pack charged in the cheapest hours that have it ready in time.

Over `power.plan_horizon_h` in quarter hours, with the tariff's price of each:

1. **When each pack is needed**: the cars expected of its type (outlook.py's rates: the
   arrival profile), one standard deviation above the mean, plus the type's `min_ready`
   floor, less the packs ready now. The j-th pack nearest to ready is needed at the start of
   the quarter hour whose cars (and those before) first bring that count to j: a car may come
   at any time in it. One never needed in the horizon (and a pack topping up above the
   dispense SoC) may charge any time in it.
2. **Where its energy goes**: packs in order of need, each into the cheapest quarter hours
   before its deadline (the earliest first among equal prices), at most its own power and the
   budget's in each. Energy that does not fit before the deadline goes now.

A pack with nothing planned in the quarter hour now waits, and says why and until when. The
plan is made again at every forecast, so a car that came early or late moves it. Pure: run on
a worker thread.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from controller.charging.outlook import arrival_rates
from controller.charging.power import Demand
from controller.charging.tariff import Tariff
from controller.config.power import DemandConfig

STEP_S = 900.0  # the plan's quarter hours
NEED_SIGMA = 1.0  # cars planned for: the mean plus this many standard deviations (Poisson)


def plan_deferred(
    demands: Sequence[Demand],
    *,
    budget_w: float | None,
    ready_now: Mapping[str, int],
    demand: DemandConfig,
    min_ready: Mapping[str, int],
    tariff: Tariff,
    at: datetime,
    horizon_h: float,
    ready_soc: float,
) -> dict[int, str]:
    """Slots that should not charge in this quarter hour (slot -> why); the rest may."""
    wanting = [d for d in demands if d.wants and d.soc is not None and d.soc < 100.0]
    if not wanting or not tariff:
        return {}
    steps = max(1, int(horizon_h * 3600 / STEP_S))
    # Quarter hours of the clock (a tariff changes on them): the first is what is left of this one.
    first = at.replace(minute=at.minute // 15 * 15, second=0, microsecond=0)
    starts = [at] + [first + timedelta(seconds=STEP_S * k) for k in range(1, steps)]
    prices = [_price(tariff, s) for s in starts]
    # What the chargers not planned for draw (stale, faulted, stopping) takes its share first.
    committed = sum(d.committed_w for d in demands if not d.wants)
    spare = math.inf if budget_w is None else max(0.0, budget_w - committed)
    room = [spare * STEP_S / 3600.0] * steps  # Wh
    room[0] = spare * (starts[1] - at).total_seconds() / 3600.0 if steps > 1 else room[0]
    types = sorted({d.pack_type or "" for d in wanting} | set(ready_now) | set(demand.pack_mix))
    bounds = [round((s - at).total_seconds() / 60.0) for s in starts]
    bounds.append(bounds[-1] + round(STEP_S / 60.0))
    deadlines = _deadlines(wanting, ready_now, demand, min_ready, types, at, bounds, ready_soc)
    planned: dict[int, float] = {}
    for d in sorted(wanting, key=lambda d: (deadlines[d.slot], -(d.soc or 0.0), d.slot)):
        due = deadlines[d.slot]
        target = ready_soc if (d.soc or 0.0) < ready_soc and due < steps else 100.0
        energy = max(0.0, (target - (d.soc or 0.0)) / 100.0 * d.capacity_ah * d.volt_bound_v)
        most = d.cap_a * d.volt_bound_v * STEP_S / 3600.0
        if most <= 0 or energy <= 0:
            continue
        order = sorted(range(min(max(due, 1), steps)), key=lambda k: (prices[k], k))
        for k in order:
            if energy <= 0:
                break
            take = min(most, room[k], energy)
            if take <= 0:
                continue
            room[k] -= take
            energy -= take
            if k == 0:
                planned[d.slot] = planned.get(d.slot, 0.0) + take
        if energy > 1e-6 and due < steps:
            planned[d.slot] = planned.get(d.slot, 0.0) + energy  # late already: now
    deferred: dict[int, str] = {}
    for d in wanting:
        if planned.get(d.slot, 0.0) > 0:
            continue
        cheaper = next((k for k in range(1, steps) if prices[k] < prices[0]), None)
        when = f"; cheaper from {starts[cheaper]:%H:%M}" if cheaper is not None else ""
        deferred[d.slot] = (
            f"waiting for a cheaper hour (cost policy): {prices[0]:g}/kWh now{when}; not needed"
            " before then"
        )
    return deferred


def _price(tariff: Tariff, at: datetime) -> float:
    found = tariff.price_at(at)
    return found[0] if found is not None else 0.0


def _deadlines(  # noqa: PLR0917 - a private helper of plan_deferred, its inputs in order
    wanting: Sequence[Demand], ready_now: Mapping[str, int], demand: DemandConfig,
    min_ready: Mapping[str, int], types: Sequence[str], at: datetime, bounds: Sequence[int],
    ready_soc: float,
) -> dict[int, int]:  # fmt: skip
    """Slot -> the quarter hour by which its pack must be ready (`len(bounds) - 1`: any time).

    `bounds`: the minutes from `at` at which each quarter hour starts, and the last one ends.
    """
    steps = len(bounds) - 1
    out: dict[int, int] = {}
    for kind in types:
        rates = arrival_rates(demand, kind, types, at, bounds[-1])
        mine = sorted(
            (d for d in wanting if (d.pack_type or "") == kind and (d.soc or 0.0) < ready_soc),
            key=lambda d: (-(d.soc or 0.0), d.slot),
        )
        cars, j = 0.0, 0
        for k in range(steps):
            # Ready at the start of quarter hour k: for the cars that come in it and before
            # it (a car comes any time in its quarter), and the floor.
            cars += sum(rates[bounds[k] : bounds[k + 1]])
            need = cars + NEED_SIGMA * math.sqrt(cars) + min_ready.get(kind, 0)
            short = math.ceil(need - ready_now.get(kind, 0) - 1e-9)
            while j < len(mine) and j < short:
                out[mine[j].slot] = k
                j += 1
        for d in mine[j:]:
            out[d.slot] = steps
    for d in wanting:
        out.setdefault(d.slot, steps)  # topping up: any time
    return out
