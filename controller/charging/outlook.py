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


@dataclass(frozen=True, slots=True)
class Recharge:
    """How one type's returned packs charge: energy to ready per SoC group, power, what is spare."""

    need_wh: Sequence[tuple[float, float]]  # (Wh a pack needs to be ready, share of the packs)
    max_w: float  # the most one charger gives
    spare_w: Sequence[float | None]  # per minute: left by the packs charging now (None: no limit)
    delay_min: int


GROUPS = 4  # the returned packs' SoC, in this many groups (quantiles)
COHORT_MIN = 5  # the packs taken within this many minutes charge as one cohort


def recharge_of(
    returned: Returned, pack_type: str, spare_w: Sequence[float | None], share: float
) -> Recharge:
    """A type's `Recharge`: its SoC seen lately in groups; `share` of what is spare."""
    socs = sorted(returned.socs.get(pack_type, ()))
    capacity = returned.capacity_ah.get(pack_type, 0.0)
    groups: list[tuple[float, float]] = []
    if socs:
        size = max(1, math.ceil(len(socs) / GROUPS))
        for i in range(0, len(socs), size):
            part = socs[i : i + size]
            soc = sum(part) / len(part)
            need = max(0.0, returned.ready_soc - soc) / 100.0 * capacity * returned.volts
            groups.append((need, len(part) / len(socs)))
    return Recharge(
        need_wh=groups,
        max_w=returned.max_current_a * returned.volts,
        spare_w=[None if w is None else w * share for w in spare_w],
        delay_min=math.ceil(returned.delay_min),
    )


class _Cohorts:
    """Packs brought by the cars, charging on what is spare, nearest to ready first."""

    def __init__(self, recharge: Recharge, span: int) -> None:
        self.r = recharge
        self.pending = [0.0] * (span + recharge.delay_min + 1)
        self.charging: list[list[float]] = []  # [Wh each still needs, packs]

    def take(self, minute: int, packs: float) -> None:
        """`packs` taken by cars in `minute`: theirs go into slots after the delay."""
        self.pending[minute + self.r.delay_min] += packs

    def step(self, minute: int) -> float:
        """One minute's charging; the packs (in expectation) that got ready in it."""
        ready = 0.0
        if minute % COHORT_MIN == COHORT_MIN - 1:  # the packs due in the last few minutes
            packs = sum(self.pending[minute + 1 - COHORT_MIN : minute + 1])
            if packs > 1e-6:
                for need, share in self.r.need_wh:
                    if need <= 0:
                        ready += packs * share
                    else:
                        self.charging.append([need, packs * share])
        if not self.charging:
            return ready
        spares = self.r.spare_w
        spare = spares[minute] if minute < len(spares) else (spares[-1] if spares else None)
        left = math.inf if spare is None else max(0.0, spare)
        self.charging.sort(key=lambda c: c[0])
        for cohort in self.charging:
            power = min(left, cohort[1] * self.r.max_w)
            if power <= 0:
                break
            cohort[0] -= power / cohort[1] / 60.0  # Wh each, in a minute
            left -= power
        ready += sum(c[1] for c in self.charging if c[0] <= 1e-6)
        self.charging = [c for c in self.charging if c[0] > 1e-6 and c[1] > 1e-6]
        return ready


def outlook(
    ready_now: int,
    supply_s: Sequence[float],
    rates: Sequence[float],
    *,
    max_wait_min: float,
    floor: int = 0,
    horizons: Sequence[int] = (5, 15, 30, 60),
    recharge: Recharge | None = None,
    waiting: int = 0,
) -> TypeOutlook:
    """The distribution of ready packs carried minute by minute over `max(horizons)` minutes.

    `recharge`: how the packs the cars bring are charged: every pack taken adds, in
    expectation, a ready pack once its own is charged on what the packs charging now leave
    spare (nearest to ready first, as the `demand` policy does).
    `waiting`: cars already waiting for a pack (refused for want of one, not yet gone).
    """
    span = max(horizons)
    returned = [0.0] * (span + 2)  # expected packs coming back ready, by minute
    # Room for every pack there can be: those ready, charging, and one back per car at most
    # (a returned pack is added in expectation, to every state).
    top = ready_now + len(supply_s) + 2 * math.ceil(sum(rates[:span])) + 4
    size = top + QUEUE_MAX + 1
    dist = [0.0] * size  # index i: n = i - QUEUE_MAX
    dist[ready_now - min(waiting, QUEUE_MAX) + QUEUE_MAX] = 1.0  # the queue takes packs first
    supply = [0] * (span + 1)
    for s in supply_s:
        m = int(s // 60.0)
        if m < len(supply):
            supply[m] += 1
    keep: dict[str, tuple[float, int, int, float, float, float]] = {}
    cars = turned = 0.0
    leave = 1.0 / max_wait_min
    cohorts = None if recharge is None else _Cohorts(recharge, span)
    for minute in range(max(horizons)):
        before = _mean_ready(dist) + supply[minute] + returned[minute]
        if supply[minute]:
            k = supply[minute]
            dist = [0.0] * k + dist[: size - k]  # n grows by the packs getting ready
        if returned[minute] > 0:
            dist = _add_expected(dist, returned[minute])
        lam = rates[minute] if minute < len(rates) else 0.0
        cars += lam
        if lam > 0:
            dist, lost = _arrive(dist, lam)
            turned += lost
        if cohorts is not None:
            # The packs taken this minute (by the cars arriving, or waiting) come back.
            cohorts.take(minute, max(0.0, before - _mean_ready(dist)))
            returned[minute + 1] += cohorts.step(minute)
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
    # Past the mode until the tail is negligible (log space: exp(-lam) underflows for a big lam).
    most = int(lam + 10.0 * math.sqrt(lam) + 10.0)
    terms = []
    for k in range(most + 1):
        terms.append(math.exp(-lam + k * math.log(lam) - math.lgamma(k + 1)))
        if k > lam and terms[-1] < TAIL:
            break
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
    total = sum(sum(r) for r in rates.values())
    out = {}
    for t in types:
        recharge = None
        if returned is not None:
            # What is spare, shared out by type as the cars are.
            share = sum(rates[t]) / total if total > 0 else 1.0 / len(types)
            recharge = recharge_of(returned, t, spare_w, share)
        out[t] = outlook(
            ready_now.get(t, 0),
            supply.get(t, ()),
            rates[t],
            max_wait_min=cfg.max_wait_min,
            floor=min_ready.get(t, 0),
            horizons=horizons,
            recharge=recharge,
            waiting=waiting.get(t, 0),
        )
    return out
