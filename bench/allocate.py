"""The power allocator's time per control period, for a 40-slot and a 400-slot station.

One control period is what the slot control does for power each step: learn from the slots'
readings, turn every slot into a demand, and allocate the budget (controller/charging/power.py).
The slots are a realistic mix: most charging at various SoC, some tapering, some full,
empty, stale or faulted; the grid limit is a third of what the chargers could draw. The same
period is timed again under a three-level circuit tree (grid, 4 transformers, 4 feeders each,
racks of 25 slots on them: `alloc_tree_ms_*`). The forecast (run every
`power.forecast_every_s` on a worker thread) is timed too, and what follows it with an arrival
profile: the demand-aware outlook, the cost policy's plan and the flexibility offer.

    .venv/bin/python bench/allocate.py [--periods 500]

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from controller.charging.circuits import NO_TREE, Tree
from controller.charging.forecast import forecast
from controller.charging.limits import budget_w
from controller.charging.offer import Inputs, build_offer
from controller.charging.outlook import Returned, outlooks
from controller.charging.plan import plan_deferred
from controller.charging.power import PowerModel, allocate
from controller.charging.tariff import Tariff
from controller.config.model import StationConfig
from controller.config.power import DemandConfig
from controller.plant.slots import SlotView
from drivers.rack import SlotReading
from simstation.scenario import load_scenario

# The example's tariff (Guangdong's hours and ratios: docs/power-management.md).
TARIFF = load_scenario(REPO / "config" / "scenarios" / "urban-tariff.toml").scenario.station.tariff


def views(n: int, rng: random.Random) -> list[SlotView]:
    """A station of `n` slots in a plausible mix of states."""
    out: list[SlotView] = []
    now = time.monotonic()
    for slot in range(1, n + 1):
        roll = rng.random()
        present = roll > 0.08
        soc = rng.uniform(5, 100) if present else None
        volt_max = 403.2
        ocv = 96 * (3.3 + 0.9 * (soc or 0) / 100)
        current = min(150.0, max(0.0, (volt_max - ocv) / 0.1)) if present else 0.0
        reading = SlotReading(
            slot=slot, at=now, wall=time.time(),
            status="fault" if 0.08 < roll < 0.1 else ("charging" if present else "empty"),
            pack_present=present, pack_serial=f"PK-{slot}" if present else None,
            pack_type=rng.choice(["STD75", "LR100"]) if present else None,
            soc=soc, soh=96.0, voltage=min(volt_max, ocv + current * 0.1) if present else 0.0,
            current=current, power_w=current * ocv, temp_max=rng.uniform(20, 40),
            temp_min=rng.uniform(15, 25), fault_code=0, energy_wh=0.0,
            charge_enable=present, current_limit=150.0 if present else 0.0,
            bms_voltage_max=volt_max if present else None, bms_current_max=200.0,
            heartbeat=1, heartbeat_since=now,
        )  # fmt: skip
        stale = "rack offline" if 0.1 < roll < 0.12 else None
        out.append(SlotView(slot, "r1", reading, stale is None, 0.1, stale))
    return out


def period(
    model: PowerModel, slots: list[SlotView], budget: float | None, tree: Tree = NO_TREE
) -> float:
    """One control period's power work; returns its time in ms."""
    started = time.perf_counter()
    model.learn(slots)
    demands = [
        model.demand(v, wants=v.fresh is not None and bool(v.fresh.pack_present)) for v in slots
    ]
    cfg = model.cfg
    allocate(
        demands, budget, policy=cfg.policy, min_current_a=cfg.min_current_a,
        ready_soc=model.config.swap.min_dispense_soc, ready_now={"STD75": 1},
        min_ready=cfg.min_ready, tree=tree,
    )  # fmt: skip
    return (time.perf_counter() - started) * 1000.0


def three_levels(n: int, budget_w: float) -> Tree:
    """4 transformers of a third of the budget, 4 feeders each of a tenth, racks of 25 slots."""
    limits: dict[str, float] = {}
    paths: dict[int, tuple[str, ...]] = {}
    for slot in range(1, n + 1):
        rack = (slot - 1) // 25
        feeder, tx = rack % 16, rack % 16 // 4
        limits[f"rack{rack}"] = 25 * 60_000.0 / 2
        limits[f"feeder{feeder}"] = budget_w / 10
        limits[f"tx{tx}"] = budget_w / 3
        paths[slot] = (f"rack{rack}", f"feeder{feeder}", f"tx{tx}")
    return Tree(limits, paths)


def measure(n: int, periods: int) -> dict[str, float]:
    """Allocation and forecast times for an `n`-slot station."""
    rng = random.Random(n)
    config = StationConfig.model_validate(
        {
            "station_id": "bench",
            "power": {"grid_limit_kw": n * 60 / 3, "min_ready": {"STD75": 3, "LR100": 2}},
        }
    )
    model = PowerModel(config)
    budget = budget_w(config.power, datetime.now().astimezone())
    slots = views(n, rng)
    for _ in range(20):
        period(model, slots, budget)  # warm up
    times = sorted(period(model, slots, budget) for _ in range(periods))
    demands = [
        model.demand(v, wants=v.fresh is not None and bool(v.fresh.pack_present)) for v in slots
    ]
    assert budget is not None
    tree = three_levels(n, budget)
    tree_times = sorted(period(model, slots, budget, tree) for _ in range(periods))
    started = time.perf_counter()
    fc = forecast(model, demands, budget, {"STD75": 1})
    forecast_ms = (time.perf_counter() - started) * 1000.0
    at = datetime.now().astimezone()
    demand = DemandConfig(arrivals_per_hour=[n / 2.0] * 24, pack_mix={"STD75": 0.7, "LR100": 0.3})
    returned = Returned(
        socs={"STD75": [20.0, 35.0, 50.0], "LR100": [30.0]},
        capacity_ah={"STD75": 208.0, "LR100": 277.0}, ready_soc=90.0, max_current_a=150.0,
        volts=400.0, delay_min=2.0,
    )  # fmt: skip
    started = time.perf_counter()
    outlooks(demand, fc.supply_s, {"STD75": 1}, {"STD75": 3, "LR100": 2}, at, (5, 15, 30, 60),
             returned, fc.spare_w, {})  # fmt: skip
    outlook_ms = (time.perf_counter() - started) * 1000.0
    started = time.perf_counter()
    plan_deferred(
        demands, budget_w=budget, ready_now={"STD75": 1}, demand=demand,
        min_ready={"STD75": 3, "LR100": 2}, tariff=Tariff(TARIFF), at=at, horizon_h=12,
        ready_soc=90.0,
    )  # fmt: skip
    plan_ms = (time.perf_counter() - started) * 1000.0
    inputs = Inputs(
        model=model, demands=demands, budget_w=budget, ready={"STD75": 1}, demand=demand,
        min_ready={"STD75": 3, "LR100": 2}, at=at, margin_w=0.0, draw_kw=budget / 1000.0,
        returned=returned, waiting={},
    )  # fmt: skip
    started = time.perf_counter()
    build_offer(inputs)
    offer_ms = (time.perf_counter() - started) * 1000.0
    return {
        "p50": statistics.median(times),
        "p99": times[int(len(times) * 0.99) - 1],
        "tree_p50": statistics.median(tree_times),
        "tree_p99": tree_times[int(len(tree_times) * 0.99) - 1],
        "forecast": forecast_ms,
        "outlook": outlook_ms,
        "plan": plan_ms,
        "offer": offer_ms,
    }


def main() -> None:
    """Measure both station sizes; print the figures, then one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--periods", type=int, default=500)
    args = parser.parse_args()
    out: dict[str, float] = {}
    for n in (40, 400):
        m = measure(n, args.periods)
        print(
            f"{n} slots: allocation p50 {m['p50']:.3f} ms, p99 {m['p99']:.3f} ms;"
            f" under a three-level tree p50 {m['tree_p50']:.3f} ms, p99 {m['tree_p99']:.3f} ms;"
            f" forecast {m['forecast']:.1f} ms, outlook {m['outlook']:.1f} ms,"
            f" plan {m['plan']:.1f} ms, offer {m['offer']:.0f} ms"
        )
        out[f"alloc_ms_{n}"] = round(m["p50"], 3)
        out[f"alloc_ms_{n}_p99"] = round(m["p99"], 3)
        out[f"alloc_tree_ms_{n}"] = round(m["tree_p50"], 3)
        out[f"alloc_tree_ms_{n}_p99"] = round(m["tree_p99"], 3)
        out[f"forecast_ms_{n}"] = round(m["forecast"], 1)
        out[f"outlook_ms_{n}"] = round(m["outlook"], 1)
        out[f"plan_ms_{n}"] = round(m["plan"], 1)
        out[f"offer_ms_{n}"] = round(m["offer"], 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
