"""Grid-aware charging, in pieces: limits, the circuit tree, tariffs, the outlook, the plan.

Properties with adversarial inputs (zero, huge, stale, flipping) for every decision that
drives the chargers; the config's tree checks named at their keys (docs/power-management.md).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from controller.charging.circuits import Tree
from controller.charging.limits import GRID, PowerLimits, RunLimit
from controller.charging.offer import Inputs, build_offer, cost
from controller.charging.outlook import Returned, outlook, recharge_of
from controller.charging.plan import plan_deferred
from controller.charging.power import Demand, PowerModel, allocate
from controller.charging.tariff import Interval, Tariff, minute_prices
from controller.config.loader import load_config
from controller.config.model import StationConfig
from controller.config.power import DemandConfig, PowerConfig, TariffConfig
from controller.errors import ConfigError
from simstation.scenario import load_scenario
from tests.support import REPO

V = 400.0
NOON = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


# --- limits ------------------------------------------------------------------------------------


def test_sources_combine_as_the_minimum_and_the_binding_one_is_named() -> None:
    cfg = PowerConfig(
        grid_limit_kw=400, safety_margin_kw=10,
        time_limits=[{"start": "11:00", "end": "13:00", "limit_kw": 300}],
    )  # fmt: skip
    limits = PowerLimits(cfg)
    assert limits.binding(NOON) == ("time window 11:00-13:00", 300)
    limits.runtime["grid_operator"] = RunLimit("grid_operator", 120, NOON.timestamp() + 60, 0.0)
    assert limits.binding(NOON) == ("grid_operator", 120)
    assert limits.budget_w(NOON) == 110_000.0
    # It ends: the window binds again; the window ends: the grid connection.
    later = NOON + timedelta(seconds=61)
    assert limits.binding(later) == ("time window 11:00-13:00", 300)
    assert limits.binding(NOON + timedelta(hours=2)) == (GRID, 400)
    assert limits.next_change(NOON) == NOON.timestamp() + 60
    assert [r.source for r in limits.prune(later.timestamp())] == ["grid_operator"]


@settings(max_examples=300, deadline=None)
@given(
    grid=st.none() | st.floats(0.1, 1e5),
    margin=st.floats(0, 1e5),
    runtime=st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c", "ocpp"]),
            st.floats(0, 1e5),
            st.none() | st.floats(-3600, 3600),
        ),
        max_size=6,
    ),
)
def test_the_budget_is_the_lowest_source_in_force_less_the_margin(
    grid: float | None, margin: float, runtime: list[tuple[str, float, float | None]]
) -> None:
    limits = PowerLimits(PowerConfig(grid_limit_kw=grid, safety_margin_kw=margin))
    now = NOON.timestamp()
    for source, kw, ends in runtime:
        limits.runtime[source] = RunLimit(source, kw, None if ends is None else now + ends, 0.0)
    in_force = [grid] if grid is not None else []
    in_force += [r.kw for r in limits.runtime.values() if r.until is None or r.until > now]
    budget = limits.budget_w(NOON)
    if not in_force:
        assert budget is None
        return
    assert budget == max(0.0, (min(in_force) - margin) * 1000.0)
    bind = limits.binding(NOON)
    assert bind is not None
    assert bind[1] == min(in_force)  # an ended limit never binds; 0 kW is 0 kW


# --- the circuit tree ------------------------------------------------------------------------


def three_levels(feeder_kw: float, rack_kw: float) -> Tree:
    """grid > two feeders > two racks each (slots 1-4 on r1 ... 13-16 on r4)."""
    limits = {"f1": feeder_kw * 1000, "f2": feeder_kw * 1000}
    limits |= {f"r{n}": rack_kw * 1000 for n in (1, 2, 3, 4)}
    paths = {s: (f"r{(s - 1) // 4 + 1}", "f1" if s <= 8 else "f2") for s in range(1, 17)}
    return Tree(limits, paths)


demand = st.builds(
    lambda slot, wants, cap, soc, committed: Demand(
        slot, wants, cap if wants else 0.0, V, 0.0 if wants else committed, "STD75", soc
    ),
    st.integers(1, 16),
    st.booleans(),
    st.sampled_from([0.0, 0.5, 1.0, 5.0, 80.0, 150.0, 600.0]),
    st.floats(0, 100),
    st.sampled_from([0.0, 1000.0, 60_000.0, 1e7]),  # a stale slot counted at its worst
)


@settings(max_examples=400, deadline=None)
@given(
    demands=st.lists(demand, max_size=16, unique_by=lambda d: d.slot),
    budget=st.none() | st.sampled_from([0.0, 1.0, 50_000.0, 300_000.0, 1e9]),
    feeder=st.sampled_from([0.001, 20.0, 120.0, 1e5]),
    rack=st.sampled_from([0.001, 10.0, 70.0, 1e5]),
    policy=st.sampled_from(["demand", "equal", "cost"]),
)
def test_no_circuit_and_not_the_budget_is_ever_exceeded(
    demands: list[Demand], budget: float | None, feeder: float, rack: float, policy: str
) -> None:
    tree = three_levels(feeder, rack)
    a = allocate(
        demands, budget, policy=policy, min_current_a=5.0, ready_soc=90.0,
        ready_now={}, min_ready={"STD75": 2}, tree=tree,
    )  # fmt: skip
    by_slot = {d.slot: d for d in demands}
    committed_under = dict.fromkeys(tree.limits_w, 0.0)
    drawn_under = dict.fromkeys(tree.limits_w, 0.0)
    for d in demands:
        for node in tree.paths[d.slot]:
            committed_under[node] += 0.0 if d.wants else d.committed_w
            drawn_under[node] += a.limits_a.get(d.slot, 0.0) * V
    for node, limit in tree.limits_w.items():
        # What we allocate never adds to a node already over its limit by what we do not
        # control (a stale slot): then its slots get nothing.
        room = max(0.0, limit - committed_under[node])
        assert drawn_under[node] <= room + 1e-6, (node, drawn_under[node], room)
    if budget is not None:
        assert a.allocated_w <= max(0.0, budget - a.committed_w) + 1e-6
    for slot, amps in a.limits_a.items():
        assert amps == 0.0 or 5.0 <= amps <= by_slot[slot].cap_a  # 0 means 0; whole amps
        assert amps == math.floor(amps)
    for slot in a.waiting:
        assert a.limits_a.get(slot) == 0.0


def test_a_full_feeder_is_named_as_the_reason() -> None:
    tree = three_levels(feeder_kw=70.0, rack_kw=1e5)
    demands = [Demand(s, True, 150.0, V, 0.0, "STD75", 50.0 + s) for s in (1, 2, 9)]
    a = allocate(
        demands, 1e9, policy="demand", min_current_a=5.0, ready_soc=90.0,
        ready_now={}, min_ready={}, tree=tree,
    )  # fmt: skip
    assert a.limits_a[9] == 150.0  # its own feeder has room
    assert a.limits_a[2] == 150.0  # nearer to ready: first on f1
    assert a.limits_a[1] == 25.0  # what is left of f1's 70 kW
    tight = three_levels(feeder_kw=60.0, rack_kw=1e5)
    b = allocate(
        demands, 1e9, policy="demand", min_current_a=5.0, ready_soc=90.0,
        ready_now={}, min_ready={}, tree=tight,
    )  # fmt: skip
    assert b.limits_a[1] == 0.0
    assert "circuit f1 (60 kW)" in b.waiting[1]


TREE_RACKS = (
    '[[racks]]\nname = "r1"\ntransport = "tcp"\nhost = "127.0.0.1"\nport = 5020\n'
    "unit_id = 1\nslots = [1, 2]\n{c1}"
    '[[racks]]\nname = "r2"\ntransport = "tcp"\nhost = "127.0.0.1"\nport = 5021\n'
    "unit_id = 1\nslots = [3, 4]\n{c2}"
)


@pytest.mark.parametrize(
    ("circuits", "c1", "c2", "expected"),
    [
        ("", 'circuit = "f1"\n', "",
         ["racks[0].circuit: no power.circuits are configured (got 'f1')"]),
        ('{name = "f1", limit_kw = 100}', 'circuit = "f1"\n', "",
         ["racks[1].circuit: with power.circuits, every rack names its circuit"]),
        ('{name = "f1", limit_kw = 100}', 'circuit = "f1"\n', 'circuit = "f9"\n',
         ["racks[1].circuit: no circuit of that name (known: f1) (got 'f9')"]),
        ('{name = "f1", parent = "t9", limit_kw = 100}', 'circuit = "f1"\n', 'circuit = "f1"\n',
         ["power.circuits[0].parent: no circuit of that name (got 't9')"]),
        ('{name = "a", parent = "b", limit_kw = 1}, {name = "b", parent = "a", limit_kw = 1}',
         'circuit = "a"\n', 'circuit = "b"\n',
         ["power.circuits[0].parent: a cycle: a hangs (through its parents) on itself (got 'b')",
          "power.circuits[1].parent: a cycle: b hangs (through its parents) on itself (got 'a')"]),
        ('{name = "f1", limit_kw = 1}, {name = "f1", limit_kw = 2}', 'circuit = "f1"\n',
         'circuit = "f1"\n',
         ["power.circuits[1].name: circuit names must be unique, also used by power.circuits[0]"
          " (got 'f1')"]),
    ],
)  # fmt: skip
def test_check_config_refuses_a_tree_that_does_not_close(
    tmp_path: Path, circuits: str, c1: str, c2: str, expected: list[str]
) -> None:
    power = f"[power]\ncircuits = [{circuits}]\n" if circuits else ""
    text = (
        f'station_id = "s1"\nprofiles_dir = "{REPO / "config" / "profiles"}"\n'
        f'[storage]\ndir = "{tmp_path}"\n{power}' + TREE_RACKS.format(c1=c1, c2=c2)
    )
    path = tmp_path / "station.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.lines() == [f"{path}: {line}" for line in expected]


# --- tariffs -----------------------------------------------------------------------------------


# The example's tariff (Guangdong's hours and ratios: docs/power-management.md).
def example_tariff() -> TariffConfig:
    """The example's tariff (config/scenarios/urban-tariff.toml)."""
    tariff = load_scenario(REPO / "config" / "scenarios" / "urban-tariff.toml").scenario
    assert tariff.station.tariff is not None
    return tariff.station.tariff


GUANGDONG = example_tariff()


def test_a_tariff_must_cover_the_day_once() -> None:
    with pytest.raises(ValueError, match="07:00 is in none"):
        TariffConfig(periods=[{"start": "08:00", "end": "07:00", "price": 1}])
    with pytest.raises(ValueError, match="01:00 is in two"):
        TariffConfig(
            periods=[{"start": "00:00", "end": "02:00", "price": 1},
                     {"start": "01:00", "end": "00:00", "price": 2}]
        )  # fmt: skip
    prices = minute_prices(GUANGDONG)
    assert len(prices) == 1440
    assert prices[0] == 0.247 and prices[10 * 60] == 1.105 and prices[23 * 60 + 59] == 0.65


def test_day_ahead_prices_win_where_they_cover() -> None:
    tariff = Tariff(GUANGDONG)
    at = NOON.replace(tzinfo=None).astimezone()
    start = at.timestamp()
    tariff.set_ahead([Interval(start, start + 900, 0.05)], start)
    assert tariff.price_at(at) == (0.05, "day-ahead")
    found = tariff.price_at(at + timedelta(minutes=20))
    assert found is not None and found[0] == GUANGDONG_PRICE_AT(at + timedelta(minutes=20))


def GUANGDONG_PRICE_AT(at: datetime) -> float:  # noqa: N802 - a table lookup, named as the table
    return minute_prices(GUANGDONG)[at.hour * 60 + at.minute]


# --- the demand-aware outlook ------------------------------------------------------------------


RETURNED = Returned(
    socs={"STD75": [30.0, 60.0, 88.0]},
    capacity_ah={"STD75": 200.0},
    ready_soc=90.0,
    max_current_a=150.0,
    volts=400.0,
    delay_min=2.0,
)


@settings(max_examples=200, deadline=None)
@given(
    ready=st.integers(0, 30),
    supply=st.lists(st.floats(0, 4000), max_size=20),
    rate=st.floats(0, 5),
    waiting=st.integers(0, 50),
    floor=st.integers(0, 10),
)
def test_the_outlook_is_a_distribution_of_sense(
    ready: int, supply: list[float], rate: float, waiting: int, floor: int
) -> None:
    o = outlook(ready, supply, [rate] * 60, max_wait_min=15, floor=floor, waiting=waiting,
                recharge=recharge_of(RETURNED, "STD75", [None], 1.0))  # fmt: skip
    for h in ("5", "15", "30", "60"):
        assert o.low[h] <= o.high[h]  # (the mean may lie outside the 10-90 % band)
        assert 0 <= o.expected[h] <= ready + len(supply) + o.cars[h] + 1
        assert 0 <= o.below_floor[h] <= floor + 1e-9
        assert o.turned_away[h] >= 0
    if rate == 0 and waiting == 0:
        # Nobody comes: the outlook is the static forecast.
        assert o.expected["60"] == ready + sum(1 for s in supply if s < 3600)


def test_nobody_coming_and_nothing_charging_keeps_what_is_ready() -> None:
    o = outlook(3, [], [0.0] * 60, max_wait_min=15, floor=2)
    assert o.expected == {"5": 3.0, "15": 3.0, "30": 3.0, "60": 3.0}
    assert o.below_floor["60"] == 0.0


# --- the cost plan -----------------------------------------------------------------------------

DEMAND = DemandConfig(arrivals_per_hour=[0.0] * 24)


def pack(slot: int, soc: float) -> Demand:
    return Demand(slot, True, 150.0, V, 0.0, "STD75", soc, None, 200.0)


def test_with_nobody_coming_charging_waits_for_the_valley() -> None:
    peak = datetime(2026, 1, 5, 15, 0).astimezone()  # 15:00 local: peak, valley from 00:00
    deferred = plan_deferred(
        [pack(1, 40.0), pack(2, 95.0)], budget_w=200_000.0, ready_now={"STD75": 5},
        demand=DEMAND, min_ready={"STD75": 2}, tariff=Tariff(GUANGDONG), at=peak,
        horizon_h=12, ready_soc=90.0,
    )  # fmt: skip
    assert set(deferred) == {1, 2}
    assert "cheaper from 19:00" in deferred[1]


def test_a_pack_needed_before_the_cheap_hours_charges_now() -> None:
    peak = datetime(2026, 1, 5, 15, 0).astimezone()
    busy = DemandConfig(arrivals_per_hour=[6.0] * 24)
    deferred = plan_deferred(
        [pack(1, 80.0), pack(2, 40.0), pack(3, 20.0)], budget_w=200_000.0,
        ready_now={"STD75": 1}, demand=busy, min_ready={"STD75": 2},
        tariff=Tariff(GUANGDONG), at=peak, horizon_h=12, ready_soc=90.0,
    )  # fmt: skip
    assert 1 not in deferred  # short of the floor now: charges at the peak price
    assert 2 not in deferred  # the cars of the next hour need it


def test_without_a_tariff_nothing_waits() -> None:
    assert not plan_deferred(
        [pack(1, 40.0)], budget_w=None, ready_now={}, demand=DEMAND, min_ready={},
        tariff=Tariff(None), at=NOON, horizon_h=12, ready_soc=90.0,
    )  # fmt: skip


@settings(max_examples=100, deadline=None)
@given(
    socs=st.lists(st.floats(0, 99.9), min_size=1, max_size=14),
    ready=st.integers(0, 5),
    per_hour=st.floats(0, 30),
    hour=st.integers(0, 23),
)
def test_a_pack_short_of_the_floor_never_waits_for_a_price(
    socs: list[float], ready: int, per_hour: float, hour: int
) -> None:
    assume(ready < 2)
    at = datetime(2026, 1, 5, hour, 0).astimezone()
    demands = [pack(n, soc) for n, soc in enumerate(socs, 1)]
    deferred = plan_deferred(
        demands, budget_w=1e9, ready_now={"STD75": ready},
        demand=DemandConfig(arrivals_per_hour=[per_hour] * 24), min_ready={"STD75": 2},
        tariff=Tariff(GUANGDONG), at=at, horizon_h=12, ready_soc=90.0,
    )  # fmt: skip
    below = sorted((d for d in demands if (d.soc or 0) < 90.0), key=lambda d: -(d.soc or 0))
    for d in below[: 2 - ready]:
        assert d.slot not in deferred, (d, deferred)


# --- the flexibility offer ---------------------------------------------------------------------


def offer_inputs(per_hour: float, ready: int) -> Inputs:
    config = StationConfig.model_validate(
        {"station_id": "s", "power": {"grid_limit_kw": 300, "min_ready": {"STD75": 2}}}
    )
    demands = [pack(n, soc) for n, soc in enumerate([85.0, 70.0, 50.0, 30.0, 20.0], 1)]
    return Inputs(
        model=PowerModel(config), demands=demands, budget_w=300_000.0, ready={"STD75": ready},
        demand=DemandConfig(arrivals_per_hour=[per_hour] * 24), min_ready={"STD75": 2},
        at=NOON, margin_w=0.0, draw_kw=300.0, returned=RETURNED, waiting={},
    )  # fmt: skip


def test_a_deeper_cut_costs_at_least_as_much_and_none_costs_nothing() -> None:
    inputs = offer_inputs(per_hour=12.0, ready=1)
    costs = [cost(inputs, kw, 3600.0) for kw in (300.0, 150.0, 0.0)]
    assert costs[0].turned_away == 0.0 and costs[0].below_floor == 0.0
    assert costs[0].turned_away <= costs[1].turned_away + 0.05 <= costs[2].turned_away + 0.1
    assert costs[2].turned_away > 0.5  # an hour without power, twelve cars an hour
    offer = build_offer(inputs)
    assert set(offer.offer_kw) == {"15", "30", "60"}
    assert offer.offer_kw["15"] >= offer.offer_kw["60"]  # a longer shed costs more
    for steps in offer.steps.values():
        assert [s.shed_kw for s in steps] == [75.0, 150.0, 225.0, 300.0]


def test_with_nobody_coming_the_whole_draw_is_on_offer() -> None:
    offer = build_offer(offer_inputs(per_hour=0.0, ready=5))
    assert offer.offer_kw == {"15": 300.0, "30": 300.0, "60": 300.0}


# --- found by a stranger's review --------------------------------------------------------------


def test_a_spare_circuit_with_no_rack_on_it_is_no_crash_for_any_policy() -> None:
    tree = Tree({"tx": 250_000.0, "fa": 150_000.0, "spare": 100_000.0}, {1: ("fa", "tx")})
    for policy in ("demand", "equal", "cost"):
        a = allocate(
            [pack(1, 50.0)], None, policy=policy, min_current_a=5.0, ready_soc=90.0,
            ready_now={}, min_ready={}, tree=tree,
        )  # fmt: skip
        assert a.limits_a == {1: 150.0} and a.shared


def test_the_cost_policy_holds_slots_back_without_any_limit() -> None:
    a = allocate(
        [pack(1, 50.0), pack(2, 60.0)], None, policy="cost", min_current_a=5.0, ready_soc=90.0,
        ready_now={}, min_ready={}, deferred={1: "waiting for a cheaper hour (cost policy)"},
    )  # fmt: skip
    assert a.limits_a == {1: 0.0, 2: 150.0}
    assert a.waiting[1].startswith("waiting for a cheaper hour")


def test_many_cars_a_minute_take_as_many_packs() -> None:
    """Poisson terms in log space: 12 cars a minute (exp(-12) is below the tail) take 12."""
    for rate in (0.5, 11.0, 12.0, 40.0):
        o = outlook(60, [], [rate] * 5, max_wait_min=15, horizons=(1,))
        assert o.expected["1"] == pytest.approx(60 - rate, abs=0.05), (rate, o.expected)


def test_day_ahead_prices_keep_the_nearest_when_too_many() -> None:
    tariff = Tariff(GUANGDONG)
    now = NOON.timestamp()
    for day in range(10):  # ten days of quarter hours, a day at a time
        base = now + day * 86_400
        tariff.set_ahead(
            [Interval(base + 900 * q, base + 900 * (q + 1), 0.1) for q in range(96)], now
        )
    assert tariff.ahead[0].start == now  # the one in force now is kept
    assert tariff.price_at(NOON) == (0.1, "day-ahead")


def test_the_packs_for_the_next_quarters_cars_are_ready_at_its_start() -> None:
    """Cars only from 19:00; at 18:46 (peak price, flat from 19:00) the packs they need must
    be ready at 19:00, so they charge now, dear as it is (a car may come at 19:00 sharp)."""
    at = datetime(2026, 1, 5, 18, 46).astimezone()
    per_hour = [0.0] * 24
    per_hour[19] = 12.0
    demands = [pack(n, 85.0) for n in range(1, 6)]
    deferred = plan_deferred(
        demands, budget_w=1e9, ready_now={"STD75": 2},
        demand=DemandConfig(arrivals_per_hour=per_hour), min_ready={"STD75": 2},
        tariff=Tariff(GUANGDONG), at=at, horizon_h=12, ready_soc=90.0,
    )  # fmt: skip
    assert not deferred, deferred
