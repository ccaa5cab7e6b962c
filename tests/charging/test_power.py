"""The allocator and the forecast, as pure functions (controller/charging/power.py)."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.charging.forecast import advance, forecast, ready_text
from controller.charging.limits import budget_w
from controller.charging.power import Demand, PowerModel, allocate, derate, priority_order
from controller.config.model import PowerConfig, StationConfig
from simstation.charger import SimCharger, SimPack

V = 403.2  # the simulated pack's BMS voltage limit


def want(slot: int, soc: float, *, cap: float = 150.0, kind: str = "STD75") -> Demand:
    return Demand(slot, True, cap, V, 0.0, kind, soc, None, 200.0)


def idle(slot: int, committed_w: float) -> Demand:
    return Demand(slot, False, 0.0, V, committed_w)


def alloc(demands: list[Demand], budget: float | None, policy: str = "demand", **kw: object):  # type: ignore[no-untyped-def]
    args: dict[str, object] = {
        "policy": policy,
        "min_current_a": 5.0,
        "ready_soc": 90.0,
        "ready_now": {},
        "min_ready": {},
    }
    args.update(kw)
    return allocate(demands, budget, **args)  # type: ignore[arg-type]


def test_priority_order_is_the_documented_one() -> None:
    demands = [
        want(1, 40.0),
        want(2, 85.0),
        want(3, 95.0),  # dispensable already: topping up comes last
        want(4, 60.0, kind="LR100"),
        want(5, 92.0),
        want(6, 20.0, kind="LR100"),
    ]
    order = priority_order(demands, 90.0, {"LR100": 0, "STD75": 3}, {"LR100": 1})
    # LR100 is one pack short: its pack nearest to ready first; then nearest to ready; then
    # topping up, lowest SoC first.
    assert [d.slot for d in order] == [4, 2, 1, 6, 5, 3]


def test_demand_policy_fills_in_priority_order_within_the_budget() -> None:
    demands = [want(1, 40.0), want(2, 85.0), want(3, 10.0)]
    a = alloc(demands, 100_000.0)
    assert a.limits_a[2] == 150.0  # nearest to ready: all it can take
    assert a.limits_a[1] == math.floor((100_000.0 - 150 * V) / V)
    assert a.limits_a[3] == 0.0
    assert "waiting for power" in a.waiting[3]
    assert a.bound_w <= 100_000.0


def test_equal_sharing_splits_evenly_and_passes_on_what_a_slot_cannot_take() -> None:
    demands = [want(1, 40.0), want(2, 85.0, cap=20.0), want(3, 10.0)]
    a = alloc(demands, 100_000.0, policy="equal")
    assert a.limits_a[2] == 20.0
    assert a.limits_a[1] == a.limits_a[3] == math.floor((100_000.0 - 20 * V) / 2 / V)


def test_committed_slots_are_counted_first() -> None:
    # A stale slot counts at the charger's maximum, whatever it last said.
    a = alloc([idle(1, 60_000.0), want(2, 50.0)], 80_000.0)
    assert a.limits_a[2] == math.floor(20_000.0 / V)
    assert a.bound_w <= 80_000.0


def test_no_grid_limit_gives_every_slot_what_it_can_take() -> None:
    a = alloc([want(1, 40.0), want(2, 50.0, cap=80.0)], None)
    assert a.limits_a == {1: 150.0, 2: 80.0}
    assert a.budget_w is None


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.booleans(),
            st.floats(0, 300),
            st.floats(200, 900),
            st.floats(0, 80_000),
            st.floats(0, 100),
        ),
        max_size=40,
    ),
    st.floats(0, 2_000_000),
    st.sampled_from(["demand", "equal"]),
)
def test_the_bound_never_exceeds_the_budget(
    rows: list[tuple[bool, float, float, float, float]], budget: float, policy: str
) -> None:
    demands = [
        Demand(n, wants, cap if wants else 0.0, volt, 0.0 if wants else committed, "T", soc)
        for n, (wants, cap, volt, committed, soc) in enumerate(rows, 1)
    ]
    a = alloc(demands, budget, policy=policy)
    committed = sum(d.committed_w for d in demands if not d.wants)
    for d in demands:
        if d.wants:
            assert 0.0 <= a.limits_a[d.slot] <= d.cap_a + 1e-9
            assert a.limits_a[d.slot] == 0.0 or a.limits_a[d.slot] >= 5.0
    if committed <= budget:
        assert a.bound_w <= budget + 1e-6
    else:
        assert a.allocated_w == 0.0  # over already: nothing more is switched on


def test_time_of_day_limits_and_the_margin() -> None:
    cfg = PowerConfig.model_validate(
        {
            "grid_limit_kw": 400,
            "safety_margin_kw": 10,
            "time_limits": [
                {"start": "17:00", "end": "21:00", "limit_kw": 250},
                {"start": "23:00", "end": "06:00", "limit_kw": 300},
            ],
        }
    )
    assert budget_w(cfg, datetime(2026, 1, 1, 12, 0, tzinfo=UTC)) == 390_000.0
    assert budget_w(cfg, datetime(2026, 1, 1, 18, 30, tzinfo=UTC)) == 240_000.0
    assert budget_w(cfg, datetime(2026, 1, 1, 2, 0, tzinfo=UTC)) == 290_000.0  # wraps past midnight
    assert budget_w(cfg, datetime(2026, 1, 1, 6, 0, tzinfo=UTC)) == 390_000.0
    assert budget_w(PowerConfig(), datetime(2026, 1, 1, 6, 0, tzinfo=UTC)) is None


def test_temperature_derates() -> None:
    cfg = PowerConfig()
    assert derate(cfg, 20.0, 30.0, 0.0, 45.0) == 1.0
    assert derate(cfg, 20.0, 40.0, 0.0, 45.0) == pytest.approx(0.5)
    assert derate(cfg, 5.0, 20.0, 0.0, 45.0) == pytest.approx(0.5)
    assert derate(cfg, 20.0, 46.0, 0.0, 45.0) == 0.0


@pytest.mark.parametrize(("soc", "amps"), [(20.0, 150.0), (70.0, 150.0), (85.0, 100.0),
                                           (30.0, 40.0)])  # fmt: skip
def test_advance_matches_the_simulated_charger(soc: float, amps: float) -> None:
    """The forecast's CC-CV model against the simulated charger, integrated finely."""
    pack = SimPack("P", soc=soc)
    charger = SimCharger(max_current_a=150.0, target_soc=100.0, enabled=True, limit_a=amps)
    charger.insert(pack)
    k = (pack.bms_voltage_max - (3.30 * 96)) / pack.internal_resistance_ohm / 100.0
    elapsed = 0.0
    while pack.soc < 90.0 and elapsed < 6 * 3600:
        charger.step(5.0, 25.0)
        elapsed += 5.0
    _, crossed = advance(soc, amps, k=k, capacity_ah=pack.capacity_ah, dt=6 * 3600, target=90.0)
    assert crossed is not None
    assert crossed == pytest.approx(elapsed, rel=0.02, abs=10.0)


def test_forecast_counts_ready_packs_ahead_and_explains_a_wait() -> None:
    config = StationConfig.model_validate(
        {"station_id": "t", "power": {"grid_limit_kw": 60, "charger_max_kw": 60}}
    )
    model = PowerModel(config)
    demands = [want(1, 85.0), want(2, 50.0), want(3, 89.0, kind="LR100")]
    fc = forecast(model, demands, 60_000.0, {"STD75": 0})
    std = fc.types["STD75"]
    assert std.ready_now == 0
    assert std.next_ready_slot == 1
    assert std.next_ready_min is not None and 1 <= std.next_ready_min <= 15
    counts = list(std.ready_in_min.values())
    assert counts == sorted(counts)  # never fewer later
    assert fc.types["LR100"].next_ready_slot == 3
    assert set(fc.ready_in_s) <= {1, 2, 3}
    text = ready_text(fc, "STD75")
    assert text is not None and "slot 1" in text
    assert ready_text(fc, "XL") == "none expected to be ready within 60 min"


@settings(max_examples=100, deadline=None)
@given(
    packs=st.lists(
        st.tuples(
            st.floats(0, 100),
            st.sampled_from([0.0, 0.5, 5.0, 80.0, 150.0, 400.0]),
            st.sampled_from(["STD75", "LR100"]),
        ),
        max_size=12,
    ),
    idle_w=st.sampled_from([0.0, 3_000.0]),
    ready=st.integers(0, 3),
)
def test_without_a_grid_limit_the_forecast_is_the_shared_one_with_room_for_all(
    packs: list[tuple[float, float, str]], idle_w: float, ready: int
) -> None:
    """The forecast's shortcut without a budget (each pack on its own) gives what sharing an
    unbounded budget step by step gives."""
    model = PowerModel(StationConfig.model_validate({"station_id": "t"}))
    demands = [want(i + 1, soc, cap=cap, kind=kind) for i, (soc, cap, kind) in enumerate(packs)]
    demands.append(idle(99, idle_w))
    alone = forecast(model, demands, None, {"STD75": ready})
    shared = forecast(model, demands, math.inf, {"STD75": ready})
    assert alone == shared
