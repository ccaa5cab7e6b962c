"""The ready-pack forecast: the allocation run ahead in time, minute by minute.

Each charging pack advances at what the allocator would give it (constant current up to the
taper, then k x (100 - SoC)); a type's ready count grows as its packs reach the dispense SoC.
Pure and synchronous (the slot control runs it on a worker thread).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from controller.charging.power import (
    FORECAST_STEP_S,
    HORIZONS_MIN,
    Demand,
    PowerModel,
    allocate,
    quantise,
)


class TypeForecast(BaseModel):
    """Ready packs of one type, now and ahead (in the station's minutes)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ready_now: int
    ready_in_min: dict[str, int]  # "5", "15", "30", "60" -> packs ready by then
    next_ready_min: int | None  # minutes (rounded up) until the next one is ready; 0: one is
    next_ready_slot: int | None  # where it is charging (None when one is ready now)


class Forecast(BaseModel):
    """The forecast of every pack type, and each charging pack's predicted ready time."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    types: dict[str, TypeForecast]
    ready_in_s: dict[int, float]  # slot -> seconds until its pack reaches the dispense SoC
    supply_s: dict[str, list[float]] = {}  # pack type -> when its charging packs get ready, s
    # Per minute ahead: the budget left over by the packs charging now (W; None: no limit),
    # what the packs the cars bring can charge on (outlook.py).
    spare_w: list[float | None] = []


@dataclass
class _Pack:
    demand: Demand
    soc: float
    capacity_ah: float
    k: float
    ready_at: float | None = None


def advance(
    soc: float, amps: float, *, k: float, capacity_ah: float, dt: float, target: float
) -> tuple[float, float | None]:
    """Charge for `dt` s at up to `amps` (CC), tapering as k x (100 - SoC) (CV).

    Returns the new SoC and, if it reached `target` within `dt`, the seconds that took.
    """
    if amps <= 0 or dt <= 0:
        return soc, (0.0 if soc >= target else None)
    rate = 100.0 / (capacity_ah * 3600.0)  # % per ampere-second
    knee = 100.0 - amps / k  # SoC where the taper current falls below the limit
    t = 0.0
    crossed: float | None = 0.0 if soc >= target else None
    if soc < knee:
        stop = min(knee, 100.0)
        t_knee = (stop - soc) / (amps * rate)
        if crossed is None and target <= stop:
            crossed = (target - soc) / (amps * rate)
        if t_knee >= dt:
            soc += amps * rate * dt
            return soc, (crossed if crossed is not None and crossed <= dt else None)
        t, soc = t_knee, stop
    # Constant voltage: d(100 - s)/dt = -k x rate x (100 - s).
    remaining = dt - t
    decay = k * rate
    if crossed is None and target < 100.0:
        t_cross = t + math.log((100.0 - soc) / (100.0 - target)) / decay if soc < target else t
        if t_cross <= dt:
            crossed = t_cross
    soc = 100.0 - (100.0 - soc) * math.exp(-decay * remaining)
    return soc, crossed


def forecast(
    model: PowerModel, demands: Sequence[Demand], budget: float | None,
    ready_now: Mapping[str, int], *, horizon_min: int = max(HORIZONS_MIN),
    cut: tuple[float, float] | None = None,
) -> Forecast:  # fmt: skip
    """Run the allocator forward an hour (nobody arriving) and see when packs get ready.

    Times are the packs' own (the station's clock; a simulated station's simulated time).
    `cut`: (budget W, seconds) a lower budget for the first seconds (a curtailment's cost).
    """
    cfg = model.cfg
    ready_soc = model.config.swap.min_dispense_soc
    horizon = horizon_min * 60.0
    if cut is not None and budget is None:
        budget = math.inf
    packs = [
        _Pack(d, d.soc or 0.0, d.capacity_ah, model.slope(d.pack_type))
        for d in demands
        if d.wants and d.soc is not None and d.soc < ready_soc and d.pack_type is not None
    ]
    fixed = [d for d in demands if not (d.wants and d.soc is not None and d.soc < ready_soc)]
    ready = dict(ready_now)
    if budget is None:
        # No grid limit: each pack gets what the allocator would give it alone (its own cap,
        # in whole amps), whatever the others do; the same steps, without sharing.
        for p in packs:
            t = 0.0
            while t < horizon and p.ready_at is None:
                amps = quantise(_taper_cap(p.demand.cap_a, p.k, p.soc), cfg.min_current_a)
                p.soc, crossed = advance(
                    p.soc, amps, k=p.k, capacity_ah=p.capacity_ah, dt=FORECAST_STEP_S,
                    target=ready_soc,
                )  # fmt: skip
                if crossed is not None:
                    p.ready_at = t + crossed
                t += FORECAST_STEP_S
    t = 0.0
    spare: list[float | None] = []
    while budget is not None and t < horizon and any(p.ready_at is None for p in packs):
        charging = [p for p in packs if p.ready_at is None]
        current = [
            _with_soc(p.demand, p.soc, _taper_cap(p.demand.cap_a, p.k, p.soc)) for p in charging
        ]
        now_budget = _budget_at(budget, cut, t)
        assert now_budget is not None
        alloc = allocate(
            [*fixed, *current], now_budget, policy=cfg.policy, min_current_a=cfg.min_current_a,
            ready_soc=ready_soc, ready_now=ready, min_ready=cfg.min_ready,
        )  # fmt: skip
        used = sum(alloc.limits_a.get(p.demand.slot, 0.0) * p.demand.volt_bound_v for p in charging)
        spare.append(max(0.0, now_budget - alloc.committed_w - used))
        for p in charging:
            amps = alloc.limits_a.get(p.demand.slot, 0.0)
            p.soc, crossed = advance(
                p.soc, amps, k=p.k, capacity_ah=p.capacity_ah, dt=FORECAST_STEP_S, target=ready_soc
            )
            if crossed is not None:
                p.ready_at = t + crossed
                kind = p.demand.pack_type or ""
                ready[kind] = ready.get(kind, 0) + 1
        t += FORECAST_STEP_S
    idle_w = sum(d.committed_w for d in demands if not d.wants)
    while len(spare) < horizon_min:  # every pack ready (or no limit): the rest is spare
        limit = _budget_at(budget, cut, len(spare) * FORECAST_STEP_S)
        spare.append(None if limit is None else max(0.0, limit - idle_w))
    types: dict[str, TypeForecast] = {}
    kinds = set(ready_now) | {p.demand.pack_type or "" for p in packs}
    for kind in sorted(kinds):
        mine = sorted(
            (p.ready_at, p.demand.slot) for p in packs
            if p.demand.pack_type == kind and p.ready_at is not None
        )  # fmt: skip
        now = ready_now.get(kind, 0)
        nxt = (0.0, None) if now else (mine[0] if mine else (None, None))
        types[kind] = TypeForecast(
            ready_now=now,
            ready_in_min={
                str(h): now + sum(1 for at, _ in mine if at <= h * 60.0) for h in HORIZONS_MIN
            },
            next_ready_min=None if nxt[0] is None else math.ceil(nxt[0] / 60.0),
            next_ready_slot=nxt[1],
        )
    supply: dict[str, list[float]] = {}
    for p in packs:
        if p.ready_at is not None:
            supply.setdefault(p.demand.pack_type or "", []).append(round(p.ready_at, 1))
    return Forecast(
        types=types,
        ready_in_s={p.demand.slot: round(p.ready_at, 1) for p in packs if p.ready_at is not None},
        supply_s={k: sorted(v) for k, v in supply.items()},
        spare_w=[None if w is None or math.isinf(w) else round(w, 1) for w in spare],
    )


def _budget_at(budget: float | None, cut: tuple[float, float] | None, t: float) -> float | None:
    """The budget `t` seconds ahead: the curtailment's while it lasts."""
    if budget is None or cut is None or t >= cut[1]:
        return budget
    return min(budget, cut[0])


def _taper_cap(cap_a: float, k: float, soc: float) -> float:
    return max(0.0, min(cap_a, k * (100.0 - soc)))


def _with_soc(d: Demand, soc: float, cap_a: float) -> Demand:
    return Demand(d.slot, True, cap_a, d.volt_bound_v, 0.0, d.pack_type, soc, d.present_limit_a,
                  d.capacity_ah)  # fmt: skip


def ready_text(fc: Forecast | None, pack_type: str) -> str | None:
    """When the next pack of a type should be ready, for a rejected swap's reason."""
    if fc is None:
        return None
    tf = fc.types.get(pack_type)
    if tf is None or (tf.next_ready_min is None and tf.ready_now == 0):
        return f"none expected to be ready within {max(HORIZONS_MIN)} min"
    if tf.next_ready_min is None or tf.ready_now:
        return None
    minutes = max(1, tf.next_ready_min)
    return f"the next should be ready in about {minutes} min (slot {tf.next_ready_slot})"
