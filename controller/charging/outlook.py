"""The demand-aware forecast: ready packs ahead, given the cars expected, with a band.

The ready-pack forecast (forecast.py) says when each charging pack reaches the dispense SoC
with nobody arriving. Here the cars come too: `power.demand.arrivals_per_hour` times the type's
share of the cars (`pack_mix`). Minute by minute a distribution is carried over
`n = ready packs - cars waiting for one`, starting from the packs ready now less the cars
refused lately for want of one: a pack getting ready adds one, a car takes one (Poisson
arrivals), a car that waits in vain leaves after `max_wait_min` on average (turned away), and
a pack a car brings adds, in expectation, a ready pack when it would have charged (the SoC the
station has seen such packs come back with, at the current a charger gets). The expected
ready packs are `E[max(n, 0)]`, the band its 10th and 90th percentiles. Pure: no I/O, a few
milliseconds per type (docs/power-management.md).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict

from controller.config.power import DemandConfig

QUEUE_MAX = 12  # cars waiting at most in the model (more: turned away at once)
TAIL = 1e-5  # Poisson terms below this are left out (their mass goes to the last kept)
BAND = (0.1, 0.9)


class TypeOutlook(BaseModel):
    """One pack type's ready packs ahead with the cars expected ("5", "15", ... minutes)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    expected: dict[str, float]  # mean ready packs then
    low: dict[str, int]  # 10th percentile
    high: dict[str, int]  # 90th percentile
    cars: dict[str, float]  # cars expected by then
    turned_away: dict[str, float]  # cars expected to leave without a pack by then
    below_floor: dict[str, float]  # expected packs short of min_ready then


def arrival_rates(
    cfg: DemandConfig, pack_type: str, types: Sequence[str], at: datetime, minutes: int
) -> list[float]:
    """Cars of `pack_type` expected in each of the next `minutes` minutes (local time `at`).

    Not capped by the bay: a car that cannot be served at once queues, and takes a pack as
    soon as one is ready (capping at the bay's rate forecast 1.1 packs too many at 30 minutes
    in pss13's busy hours; uncapped, 0.04).
    """
    share = pack_share(cfg, pack_type, types)
    return [
        cfg.arrivals_per_hour[(at + timedelta(minutes=m)).hour] / 60.0 * share
        for m in range(minutes)
    ]


def pack_share(cfg: DemandConfig, pack_type: str, types: Sequence[str]) -> float:
    """The share of the cars that bring `pack_type` (the mix given, else even over `types`)."""
    if cfg.pack_mix:
        total = sum(cfg.pack_mix.values())
        return cfg.pack_mix.get(pack_type, 0.0) / total if total > 0 else 0.0
    return 1.0 / max(1, len(types))


@dataclass(frozen=True, slots=True)
class Returned:
    """What decides when the packs the cars bring are charged (a snapshot of the station's)."""

    socs: Mapping[str, Sequence[float]]  # per type: the SoC such packs came back with lately
    capacity_ah: Mapping[str, float]  # per type
    ready_soc: float
    max_current_a: float
    volts: float  # a pack's charge voltage, for watts to amps
    delay_min: float  # from a car's swap start to its pack charging in a slot


Back = list[list[tuple[int, float]]]  # per minute a pack is taken: (minutes later, share) ready


def returned_back(
    returned: Returned, pack_type: str, spare_w: Sequence[float | None], in_flight: float,
    minutes: int,
) -> Back:  # fmt: skip
    """When the pack a car brings at minute m is ready: (minutes after m, share) per m.

    It charges on the budget the packs charging now leave over (`spare_w`, per minute; None:
    no limit), shared with the other packs coming back meanwhile (`in_flight`), at most at the
    charger's current.
    """
    socs = list(returned.socs.get(pack_type, ()))
    if not socs:
        return [[] for _ in range(minutes)]
    amps = []
    for m in range(minutes):
        spare = spare_w[m] if m < len(spare_w) else (spare_w[-1] if spare_w else None)
        share = returned.max_current_a if spare is None else spare / returned.volts / in_flight
        amps.append(max(0.0, min(returned.max_current_a, share)))
    total = [0.0]
    for a in amps:
        total.append(total[-1] + a)  # ampere-minutes charged by the end of each minute
    capacity = returned.capacity_ah.get(pack_type, 0.0)
    needs = [max(0.0, returned.ready_soc - s) / 100.0 * capacity * 60.0 for s in socs]
    share = 1.0 / len(socs)
    back: Back = []
    for m in range(minutes):
        start = min(minutes, m + math.ceil(returned.delay_min))
        done: dict[int, float] = {}
        for need in needs:
            at = bisect_left(total, total[start] + need - 1e-9, lo=start)
            if at <= minutes:
                done[at - m] = done.get(at - m, 0.0) + share
        back.append(sorted(done.items()))
    return back


def outlook(
    ready_now: int,
    supply_s: Sequence[float],
    rates: Sequence[float],
    *,
    max_wait_min: float,
    floor: int = 0,
    horizons: Sequence[int] = (5, 15, 30, 60),
    back: Back | None = None,
    waiting: int = 0,
) -> TypeOutlook:
    """The distribution of ready packs carried minute by minute over `max(horizons)` minutes.

    `back`: when a pack taken at minute m is back, charged (`returned_back`): the packs the
    cars bring add to the supply, in expectation.
    `waiting`: cars already waiting for a pack (refused for want of one, not yet gone).
    """
    span = max(horizons)
    returned = [0.0] * (span + 1)  # expected packs coming back ready, by minute
    top = ready_now + len(supply_s) + int(sum(rates[:span])) + 1
    size = top + QUEUE_MAX + 1
    dist = [0.0] * size  # index i: n = i - QUEUE_MAX
    dist[ready_now - min(waiting, QUEUE_MAX) + QUEUE_MAX] = 1.0  # the queue takes packs first
    supply = [0] * (max(horizons) + 1)
    for s in supply_s:
        m = int(s // 60.0)
        if m < len(supply):
            supply[m] += 1
    keep: dict[str, tuple[float, int, int, float, float, float]] = {}
    cars = turned = 0.0
    leave = 1.0 / max_wait_min
    for minute in range(max(horizons)):
        if supply[minute]:
            k = supply[minute]
            dist = [0.0] * k + dist[: size - k]  # n grows by the packs getting ready
        if returned[minute] > 0:
            dist = _add_expected(dist, returned[minute])
        lam = rates[minute] if minute < len(rates) else 0.0
        cars += lam
        if lam > 0:
            before = _mean_ready(dist)
            dist, lost = _arrive(dist, lam)
            turned += lost
            taken = before - _mean_ready(dist)
            for d, share in back[minute] if back is not None and minute < len(back) else ():
                if minute + d <= span:
                    returned[minute + d] += taken * share
        # A car waiting in vain leaves after max_wait_min on average (the first of the queue).
        moved = [0.0] * size
        for i, p in enumerate(dist):
            if i < QUEUE_MAX and p:
                go = min(1.0, (QUEUE_MAX - i) * leave)
                moved[i] += p * (1 - go)
                moved[i + 1] += p * go
                turned += p * go
            else:
                moved[i] += p
        dist = moved
        if minute + 1 in horizons:
            keep[str(minute + 1)] = (*_ready_stats(dist, floor), cars, turned)
    return TypeOutlook(
        expected={h: round(v[0], 2) for h, v in keep.items()},
        low={h: v[1] for h, v in keep.items()},
        high={h: v[2] for h, v in keep.items()},
        below_floor={h: round(v[3], 2) for h, v in keep.items()},
        cars={h: round(v[4], 2) for h, v in keep.items()},
        turned_away={h: round(v[5], 3) for h, v in keep.items()},
    )


def _mean_ready(dist: Sequence[float]) -> float:
    return sum(p * (i - QUEUE_MAX) for i, p in enumerate(dist) if i > QUEUE_MAX)


def _add_expected(dist: list[float], packs: float) -> list[float]:
    """`packs` more ready, in expectation: the whole ones surely, the rest with its chance."""
    whole, part = int(packs), packs - int(packs)
    size = len(dist)
    if whole:
        dist = [0.0] * whole + dist[: size - whole]
    if part > 0:
        shifted = [0.0, *dist[: size - 1]]
        dist = [(1 - part) * a + part * b for a, b in zip(dist, shifted, strict=True)]
    return dist


def _arrive(dist: list[float], lam: float) -> tuple[list[float], float]:
    """Poisson(lam) cars take a pack each (or wait); beyond the queue's end they leave."""
    terms = [math.exp(-lam)]
    while terms[-1] > TAIL and len(terms) < 30:
        terms.append(terms[-1] * lam / len(terms))
    terms[-1] += max(0.0, 1.0 - sum(terms))
    out = [0.0] * len(dist)
    lost = 0.0
    for i, p in enumerate(dist):
        if not p:
            continue
        for k, w in enumerate(terms):
            j = i - k
            if j < 0:
                out[0] += p * w
                lost += p * w * -j
            else:
                out[j] += p * w
    return out, lost


def _ready_stats(dist: Sequence[float], floor: int) -> tuple[float, int, int, float]:
    """E[ready], its 10th and 90th percentiles, E[packs short of `floor`]."""
    mean = short = 0.0
    acc = 0.0
    low = high = -1
    for i, p in enumerate(dist):
        ready = max(0, i - QUEUE_MAX)
        mean += p * ready
        short += p * max(0, floor - ready)
        acc += p
        if low < 0 and acc >= BAND[0]:
            low = ready
        if high < 0 and acc >= BAND[1] - 1e-9:
            high = ready
    return mean, max(0, low), max(0, high), short


def outlooks(  # noqa: PLR0917 - the inputs of one computation, as the forecast's
    cfg: DemandConfig, supply: Mapping[str, Sequence[float]], ready_now: Mapping[str, int],
    min_ready: Mapping[str, int], at: datetime, horizons: Sequence[int] = (5, 15, 30, 60),
    returned: Returned | None = None,
    spare_w: Sequence[float | None] = (),
    waiting: Mapping[str, int] | None = None,
) -> dict[str, TypeOutlook]:  # fmt: skip
    """Every type's outlook (the types known: ready, charging, in the mix or the floor)."""
    waiting = waiting or {}
    types = sorted(set(ready_now) | set(supply) | set(cfg.pack_mix) | set(min_ready))
    types = [t for t in types if t]
    span = max(horizons)
    rates = {t: arrival_rates(cfg, t, types, at, span) for t in types}
    # The packs coming back share what is spare with those of the next three quarters of an
    # hour (about how long one charges).
    in_flight = max(1.0, sum(sum(r[:45]) for r in rates.values()))
    out = {}
    for t in types:
        back = None
        if returned is not None:
            back = returned_back(returned, t, spare_w, in_flight, span)
        out[t] = outlook(
            ready_now.get(t, 0),
            supply.get(t, ()),
            rates[t],
            max_wait_min=cfg.max_wait_min,
            floor=min_ready.get(t, 0),
            horizons=horizons,
            back=back,
            waiting=waiting.get(t, 0),
        )
    return out
