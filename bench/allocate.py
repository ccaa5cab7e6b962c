"""The power allocator's time per control period, for a 40-slot and a 400-slot station.

One control period is what the slot control does for power each step: learn from the slots'
readings, turn every slot into a demand, and allocate the budget (controller/charging/power.py).
The slots are a realistic mix: most charging at various SoC, some tapering, some full,
empty, stale or faulted; the grid limit is a third of what the chargers could draw. The
forecast (run every `power.forecast_every_s` on a worker thread) is timed too.

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

from controller.charging.forecast import forecast
from controller.charging.limits import budget_w
from controller.charging.power import PowerModel, allocate
from controller.config.model import StationConfig
from controller.plant.slots import SlotView
from drivers.rack import SlotReading


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


def period(model: PowerModel, slots: list[SlotView], budget: float | None) -> float:
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
        min_ready=cfg.min_ready,
    )  # fmt: skip
    return (time.perf_counter() - started) * 1000.0


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
    started = time.perf_counter()
    forecast(model, demands, budget, {"STD75": 1})
    forecast_ms = (time.perf_counter() - started) * 1000.0
    return {
        "p50": statistics.median(times),
        "p99": times[int(len(times) * 0.99) - 1],
        "forecast": forecast_ms,
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
            f" forecast {m['forecast']:.1f} ms"
        )
        out[f"alloc_ms_{n}"] = round(m["p50"], 3)
        out[f"alloc_ms_{n}_p99"] = round(m["p99"], 3)
        out[f"forecast_ms_{n}"] = round(m["forecast"], 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
