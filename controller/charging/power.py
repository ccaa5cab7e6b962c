"""Charging power management: share the grid limit among the chargers.

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
measured against). Everything here is pure and synchronous; no I/O. The ready-pack forecast
runs this allocation ahead in time (controller/charging/forecast.py).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from controller.charging.circuits import NO_TREE, Tree
from controller.config.model import PackTypeConfig, PowerConfig, StationConfig
from controller.plant.slots import SlotView
from drivers.modbus.profile import SlotStatus

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
    circuits: bool = False  # shared within a circuit tree (with or without a budget)

    @property
    def shared(self) -> bool:
        """Whether the slots' limits are shares of a limit (a budget, or circuits)."""
        return self.budget_w is not None or self.circuits

    @property
    def bound_w(self) -> float:
        """Upper bound of the station's total draw once the limits are applied."""
        return self.committed_w + self.allocated_w


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
            if r.charge_enable is not False or r.status == SlotStatus.FAULT:  # on, or unknown
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
    tree: Tree = NO_TREE,
    deferred: Mapping[int, str] | None = None,
) -> Allocation:
    """Current limits for every wanting slot; the bound of the total stays within `budget`.

    `tree`: every circuit's total stays within its limit too. `deferred`: slots the cost
    policy holds back now (slot -> why); they get nothing, beyond a contactor's floor.
    """
    committed = sum(d.committed_w for d in demands if not d.wants)
    nodes = tree.left_after((d.slot, d.committed_w) for d in demands if not d.wants) if tree else {}
    wanting = [d for d in demands if d.wants]
    deferred = deferred or {}
    if (tree or deferred) and budget is None:
        budget = math.inf  # the circuits bound it, or the cost plan holds slots back: shared
    if budget is None:
        limits = {d.slot: quantise(d.cap_a, min_current_a) for d in wanting}
        allocated = sum(limits[d.slot] * d.volt_bound_v for d in wanting)
        return Allocation(limits, None, committed, allocated, _waiting_cap(wanting, limits))
    left = budget - committed
    order = priority_order(wanting, ready_soc, ready_now, min_ready)
    # Chargers held on (their contactor's minimum on-time) get their floor first, in priority
    # order while the budget lasts; the policy then shares what is left on top of it.
    floors: dict[int, float] = {}
    for d in order if policy != "equal" else sorted(wanting, key=lambda d: d.slot):
        amps = quantise(min(d.floor_a, d.cap_a), min_current_a) if d.floor_a > 0 else 0.0
        watts = amps * d.volt_bound_v
        if amps > 0 and watts <= left and (not tree or watts <= tree.room(nodes, d.slot)):
            floors[d.slot] = amps
            left -= watts
            if tree:
                tree.take(nodes, d.slot, watts)
    rest = [
        dataclasses.replace(d, cap_a=d.cap_a - floors[d.slot]) if d.slot in floors else d
        for d in wanting
    ]
    rest = [d for d in rest if d.slot not in deferred]
    if policy == "equal":
        extra = _equal(rest, left, min_current_a)
        if tree:
            extra = _within_circuits(rest, extra, tree, nodes, min_current_a)
    else:
        extra = _in_order(rest, order, left, floors, tree, nodes, min_current_a)
    limits = {d.slot: floors.get(d.slot, 0.0) + extra.get(d.slot, 0.0) for d in wanting}
    allocated = sum(limits[d.slot] * d.volt_bound_v for d in wanting)
    waiting = _waiting_cap(wanting, limits)
    for d in wanting:
        if limits[d.slot] == 0.0 and d.slot not in waiting:
            waiting[d.slot] = deferred.get(d.slot) or _why_waiting(
                d.slot, budget, tree, nodes, policy
            )
    return Allocation(
        limits, None if math.isinf(budget) else budget, committed, allocated, waiting, bool(tree)
    )


def _in_order(  # noqa: PLR0917 - allocate's state, handed on
    rest: Sequence[Demand], order: Sequence[Demand], left: float, floors: Mapping[int, float],
    tree: Tree, nodes: dict[str, float], min_current_a: float,
) -> dict[int, float]:  # fmt: skip
    """Each slot in `order` gets all it can take of what is left (and of its circuits)."""
    extra: dict[int, float] = {}
    by_slot = {d.slot: d for d in rest}
    for d in (by_slot[o.slot] for o in order if o.slot in by_slot):
        least = 1.0 if d.slot in floors else min_current_a  # on top of a floor: any amp
        room = max(0.0, left)
        if tree:
            room = min(room, max(0.0, tree.room(nodes, d.slot)))
        amps = quantise(min(d.cap_a, room / d.volt_bound_v), least)
        extra[d.slot] = amps
        left -= amps * d.volt_bound_v
        if tree:
            tree.take(nodes, d.slot, amps * d.volt_bound_v)
    return extra


def _why_waiting(
    slot: int, budget: float, tree: Tree, nodes: Mapping[str, float], policy: str
) -> str:
    """A waiting slot's reason: the budget, or the circuit above it that is full."""
    by = " by packs nearer to ready" if policy != "equal" else ""
    path = tree.paths.get(slot, ())
    full = [n for n in path if nodes[n] < 1000.0]
    if full or (path and math.isinf(budget)):
        node = full[-1] if full else min(path, key=lambda n: nodes[n])
        kw = tree.limits_w[node] / 1000
        return f"waiting for power: circuit {node} ({kw:.0f} kW) is in use{by}"
    if math.isinf(budget):
        return f"waiting for power{by}"
    return f"waiting for power: the {budget / 1000:.0f} kW budget is in use{by}"


def _within_circuits(
    wanting: Sequence[Demand], limits: Mapping[int, float], tree: Tree, nodes: dict[str, float],
    min_current_a: float,
) -> dict[int, float]:  # fmt: skip
    """Equal shares cut evenly under every circuit that they would overload (deepest first)."""
    out = dict(limits)
    by_slot = {d.slot: d for d in wanting}
    for node in tree.deepest_first:
        under = [s for s in tree.under.get(node, ()) if out.get(s, 0.0) > 0]
        drawn = sum(out[s] * by_slot[s].volt_bound_v for s in under)
        if drawn <= nodes[node] or drawn <= 0:
            continue
        scale = max(0.0, nodes[node]) / drawn
        for s in under:
            out[s] = quantise(out[s] * scale, min_current_a)
    for s, amps in out.items():
        tree.take(nodes, s, amps * by_slot[s].volt_bound_v)
    return out


def quantise(amps: float, min_current_a: float) -> float:
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
                limits[d.slot] = quantise(share / d.volt_bound_v, min_current_a)
            break
        for d in capped:
            limits[d.slot] = quantise(d.cap_a, min_current_a)
            left -= limits[d.slot] * d.volt_bound_v
            active.remove(d)
    return limits
