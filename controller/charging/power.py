"""Charging power management: share the grid limit among the chargers, forecast ready packs.

Every control period (each slot-control step) the allocator gives every slot that may charge
a current limit such that the chargers together can never draw more than the budget:

- the budget is the grid limit (or the lower time-of-day limit) less the safety margin;
- a slot is counted at an upper bound of what it can draw, never at a guess: its current
  limit times the pack's BMS voltage limit (the charger cannot exceed either); a stale or
  unknown slot at the charger's maximum, a faulted one at its last limit (it may still draw);
- a pack in its constant-voltage taper takes less than its limit: it is given what it takes
  (with headroom), and the rest goes to others; heat and cold derate a slot.

The `demand` policy gives the power in a fixed priority order (docs/power-management.md):

1. packs of a type with fewer ready packs than `min_ready`, nearest to ready first (as many
   as the type is short);
2. every other pack below the dispense SoC, nearest to ready first (the next to be dispensed:
   the dispense policy takes the highest SoC);
3. packs already dispensable, topping up, lowest SoC first.

Each in turn gets as much as it can take; a slot left with less than `min_current_a` waits
(charger off) and says so. `equal` shares the budget evenly (the baseline the policy is
measured against). Everything here is pure and synchronous; no I/O.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from datetime import time as dtime

from pydantic import BaseModel, ConfigDict

from controller.charging.slots import SlotView
from controller.config.model import PackTypeConfig, PowerConfig, StationConfig

HORIZONS_MIN = (5, 15, 30, 60)
CV_VOLTAGE_TOLERANCE = 0.005  # within 0.5 % of the BMS voltage limit: constant voltage
TAPER_HEADROOM = 1.10  # a tapering pack gets 10 % above what it takes (+ 1 A)
TAPER_STICKY = 1.30  # its present limit is kept while within this of what it needs
LEARN_WEIGHT = 0.2  # weight of a new observation of a type's taper slope
FORECAST_STEP_S = 60.0  # the forecast re-allocates every simulated minute


@dataclass(frozen=True, slots=True)
class Demand:
    """One slot as the allocator sees it."""

    slot: int
    wants: bool  # may charge now (pack present, fresh data, nothing blocks it)
    cap_a: float  # the most current it can usefully take now (0 when not wanting)
    volt_bound_v: float  # upper bound of its voltage: watts = amps x this
    committed_w: float  # when not wanting: what it may still draw (its worst case)
    pack_type: str | None = None
    soc: float | None = None
    present_limit_a: float | None = None  # the charger's limit now, if on
    capacity_ah: float = 200.0  # the pack's, for the forecast (its type's, scaled by health)
    floor_a: float = 0.0  # kept on at least this much (its contactor's minimum on-time)


@dataclass(frozen=True, slots=True)
class Allocation:
    """The outcome of one control period."""

    limits_a: dict[int, float]  # slot -> current limit (0: waiting for power)
    budget_w: float | None  # None: no grid limit
    committed_w: float  # drawn (at worst) by slots that are not being allocated
    allocated_w: float  # upper bound of what the allocated slots can draw
    waiting: dict[int, str] = field(default_factory=dict)  # slot -> why it gets no power

    @property
    def bound_w(self) -> float:
        """Upper bound of the station's total draw once the limits are applied."""
        return self.committed_w + self.allocated_w


def budget_w(cfg: PowerConfig, at: datetime) -> float | None:
    """The power the chargers may draw together at local time `at` (None: unlimited)."""
    limits = [cfg.grid_limit_kw] if cfg.grid_limit_kw is not None else []
    now = at.time()
    limits += [w.limit_kw for w in cfg.time_limits if _in_window(now, _hhmm(w.start), _hhmm(w.end))]
    if not limits:
        return None
    return max(0.0, (min(limits) - cfg.safety_margin_kw) * 1000.0)


def _hhmm(text: str) -> dtime:
    hours, minutes = text.split(":")
    return dtime(int(hours), int(minutes))


def _in_window(now: dtime, start: dtime, end: dtime) -> bool:
    if start <= end:
        return start <= now < end
    return now >= start or now < end  # wraps past midnight


def derate(cfg: PowerConfig, temp_min: float | None, temp_max: float | None, low: float,
           high: float) -> float:  # fmt: skip
    """Fraction of its current a pack may take at these cell temperatures (0..1)."""
    factor = 1.0
    if temp_max is not None and temp_max > cfg.derate_hot_c:
        span = max(0.1, high - cfg.derate_hot_c)
        factor = min(factor, (high - temp_max) / span)
    if temp_min is not None and temp_min < cfg.derate_cold_c:
        span = max(0.1, cfg.derate_cold_c - low)
        factor = min(factor, (temp_min - low) / span)
    return max(0.0, min(1.0, factor))


class PowerModel:
    """Turns slot views into demands, with what has been learned of each pack type's taper."""

    def __init__(self, config: StationConfig) -> None:
        self.config = config
        self.cfg = config.power
        self.max_current_a = config.charging.max_current_a
        self.charger_max_w = self.cfg.charger_max_kw * 1000.0
        self.taper_k: dict[str, float] = {}  # pack type -> A per % SoC below 100 in CV

    def pack_type(self, name: str | None) -> PackTypeConfig:
        """The configured figures of a pack type (defaults for an unknown one)."""
        return self.cfg.pack_types.get(name or "", PackTypeConfig())

    def slope(self, pack_type: str | None) -> float:
        """Taper slope: in constant voltage the pack takes about k x (100 - SoC) amps."""
        learned = self.taper_k.get(pack_type or "")
        if learned is not None:
            return learned
        return self.max_current_a / (100.0 - self.pack_type(pack_type).taper_start_soc)

    def learn(self, views: Iterable[SlotView]) -> None:
        """Watch packs in their constant-voltage phase to learn each type's taper slope."""
        for view in views:
            r = view.fresh
            if (
                r is None
                or not r.charge_enable
                or r.pack_type is None
                or r.soc is None
                or r.current is None
                or r.voltage is None
                or r.bms_voltage_max is None
                or r.current_limit is None
                or r.soc >= 99.5
                or r.current < 1.0
            ):
                continue
            in_cv = r.voltage >= r.bms_voltage_max * (1 - CV_VOLTAGE_TOLERANCE)
            if not in_cv or r.current >= r.current_limit - 0.5:
                continue
            k = r.current / (100.0 - r.soc)
            old = self.taper_k.get(r.pack_type)
            self.taper_k[r.pack_type] = k if old is None else old + LEARN_WEIGHT * (k - old)

    def demand(self, view: SlotView, *, wants: bool, taper: bool = True) -> Demand:
        """The allocator's view of a slot (`taper`: give a tapering pack only what it takes)."""
        r = view.fresh
        if r is None:
            # Nothing known: it may be drawing all it can (the charger's own watchdog is
            # what stops it); reserve that.
            return Demand(view.slot, False, 0.0, 0.0, self.charger_max_w)
        capacity = self.pack_type(r.pack_type).capacity_ah * (r.soh or 100.0) / 100.0
        volt_bound = r.bms_voltage_max or ((r.voltage or 0.0) * 1.05) or 0.0
        measured_w = max(0.0, r.power_w if r.power_w is not None else 0.0)
        present = r.current_limit if r.charge_enable else None
        if not wants or volt_bound <= 0:
            committed = measured_w
            if r.charge_enable is not False or r.status == "fault":  # on, or not known off
                limit = r.current_limit if r.current_limit is not None else self.max_current_a
                bound = limit * volt_bound if volt_bound > 0 else self.charger_max_w
                committed = max(committed, min(bound, self.charger_max_w))
            return Demand(view.slot, False, 0.0, volt_bound, committed, r.pack_type, r.soc,
                          None, capacity)  # fmt: skip
        # 0 means 0 and unknown means 0 (the slot control does not let such a pack want).
        cap = min(self.max_current_a, r.bms_current_max or 0.0)
        sup = self.config.supervision
        cap *= derate(self.cfg, r.temp_min, r.temp_max, sup.charge_temp_min_c,
                      sup.charge_temp_max_c)  # fmt: skip
        if (
            taper
            and r.charge_enable
            and r.current is not None
            and r.voltage is not None
            and r.bms_voltage_max is not None
            and r.voltage >= r.bms_voltage_max * (1 - CV_VOLTAGE_TOLERANCE)
            and r.current_limit is not None
            and r.current < r.current_limit - 0.5
        ):
            # Constant voltage: the current only falls from here.
            need = r.current * TAPER_HEADROOM + 1.0
            if need <= r.current_limit <= need * TAPER_STICKY:
                need = r.current_limit  # no rewrite for a small change
            cap = min(cap, need)
        return Demand(view.slot, True, max(0.0, cap), volt_bound, 0.0, r.pack_type, r.soc,
                      present, capacity)  # fmt: skip


def priority_order(
    demands: Sequence[Demand], ready_soc: float, ready_now: Mapping[str, int],
    min_ready: Mapping[str, int],
) -> list[Demand]:  # fmt: skip
    """The documented order in which the `demand` policy serves the slots."""
    wanting = [d for d in demands if d.wants]
    below = sorted(
        (d for d in wanting if (d.soc or 0.0) < ready_soc), key=lambda d: (-(d.soc or 0.0), d.slot)
    )
    first: list[Demand] = []
    short = {t: n - ready_now.get(t, 0) for t, n in min_ready.items()}
    for d in below:
        if d.pack_type is not None and short.get(d.pack_type, 0) > 0:
            first.append(d)
            short[d.pack_type] -= 1
    chosen = {d.slot for d in first}
    rest = [d for d in below if d.slot not in chosen]
    topping = sorted(
        (d for d in wanting if (d.soc or 0.0) >= ready_soc), key=lambda d: (d.soc or 0.0, d.slot)
    )
    return first + rest + topping


def allocate(
    demands: Sequence[Demand],
    budget: float | None,
    *,
    policy: str,
    min_current_a: float,
    ready_soc: float,
    ready_now: Mapping[str, int],
    min_ready: Mapping[str, int],
) -> Allocation:
    """Current limits for every wanting slot; the bound of the total stays within `budget`."""
    committed = sum(d.committed_w for d in demands if not d.wants)
    wanting = [d for d in demands if d.wants]
    if budget is None:
        limits = {d.slot: _quantise(d.cap_a, min_current_a) for d in wanting}
        allocated = sum(limits[d.slot] * d.volt_bound_v for d in wanting)
        return Allocation(limits, None, committed, allocated, _waiting_cap(wanting, limits))
    left = budget - committed
    order = priority_order(wanting, ready_soc, ready_now, min_ready)
    # Chargers held on (their contactor's minimum on-time) get their floor first, in priority
    # order while the budget lasts; the policy then shares what is left on top of it.
    floors: dict[int, float] = {}
    for d in order if policy == "demand" else sorted(wanting, key=lambda d: d.slot):
        amps = _quantise(min(d.floor_a, d.cap_a), min_current_a) if d.floor_a > 0 else 0.0
        if amps > 0 and amps * d.volt_bound_v <= left:
            floors[d.slot] = amps
            left -= amps * d.volt_bound_v
    rest = [
        dataclasses.replace(d, cap_a=d.cap_a - floors[d.slot]) if d.slot in floors else d
        for d in wanting
    ]
    if policy == "equal":
        extra = _equal(rest, left, min_current_a)
    else:
        extra = {}
        by_slot = {d.slot: d for d in rest}
        for d in (by_slot[o.slot] for o in order):
            least = 1.0 if d.slot in floors else min_current_a  # on top of a floor: any amp
            amps = _quantise(min(d.cap_a, max(0.0, left) / d.volt_bound_v), least)
            extra[d.slot] = amps
            left -= amps * d.volt_bound_v
    limits = {d.slot: floors.get(d.slot, 0.0) + extra.get(d.slot, 0.0) for d in wanting}
    allocated = sum(limits[d.slot] * d.volt_bound_v for d in wanting)
    waiting = _waiting_cap(wanting, limits)
    for d in wanting:
        if limits[d.slot] == 0.0 and d.slot not in waiting:
            waiting[d.slot] = f"waiting for power: the {budget / 1000:.0f} kW budget is in use" + (
                " by packs nearer to ready" if policy == "demand" else ""
            )
    return Allocation(limits, budget, committed, allocated, waiting)


def _quantise(amps: float, min_current_a: float) -> float:
    """Whole amps, rounded down (never above the bound); below the minimum: nothing."""
    whole = math.floor(amps + 1e-9)
    return float(whole) if whole >= max(min_current_a, 1.0) else 0.0


def _waiting_cap(wanting: Sequence[Demand], limits: Mapping[int, float]) -> dict[int, str]:
    return {
        d.slot: "the pack takes no current now (too hot or cold)"
        for d in wanting
        if limits.get(d.slot) == 0.0 and d.cap_a < 1.0
    }


def _equal(wanting: Sequence[Demand], left: float, min_current_a: float) -> dict[int, float]:
    """Water-filling: an even share each, a slot that takes less gives the rest to others."""
    limits = {d.slot: 0.0 for d in wanting}
    active = sorted((d for d in wanting if d.cap_a >= 1.0), key=lambda d: d.slot)
    while active:
        share = max(0.0, left) / len(active)
        floor_w = max(min_current_a, 1.0) * max(d.volt_bound_v for d in active)
        if share < floor_w and len(active) > 1:
            active.pop()  # too little for everyone: the highest slot numbers wait
            continue
        capped = [d for d in active if d.cap_a * d.volt_bound_v <= share]
        if not capped:
            for d in active:
                limits[d.slot] = _quantise(share / d.volt_bound_v, min_current_a)
            break
        for d in capped:
            limits[d.slot] = _quantise(d.cap_a, min_current_a)
            left -= limits[d.slot] * d.volt_bound_v
            active.remove(d)
    return limits


# --- the forecast ------------------------------------------------------------------------------


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
    ready_now: Mapping[str, int],
) -> Forecast:  # fmt: skip
    """Run the allocator forward an hour (nobody arriving) and see when packs get ready.

    Times are the packs' own (the station's clock; a simulated station's simulated time).
    """
    cfg = model.cfg
    ready_soc = model.config.swap.min_dispense_soc
    horizon = max(HORIZONS_MIN) * 60.0
    packs = [
        _Pack(d, d.soc or 0.0, d.capacity_ah, model.slope(d.pack_type))
        for d in demands
        if d.wants and d.soc is not None and d.soc < ready_soc and d.pack_type is not None
    ]
    fixed = [d for d in demands if not (d.wants and d.soc is not None and d.soc < ready_soc)]
    ready = dict(ready_now)
    t = 0.0
    while t < horizon and any(p.ready_at is None for p in packs):
        charging = [p for p in packs if p.ready_at is None]
        current = [
            _with_soc(p.demand, p.soc, _taper_cap(p.demand.cap_a, p.k, p.soc)) for p in charging
        ]
        alloc = allocate(
            [*fixed, *current], budget, policy=cfg.policy, min_current_a=cfg.min_current_a,
            ready_soc=ready_soc, ready_now=ready, min_ready=cfg.min_ready,
        )  # fmt: skip
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
    return Forecast(
        types=types,
        ready_in_s={p.demand.slot: round(p.ready_at, 1) for p in packs if p.ready_at is not None},
    )


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
