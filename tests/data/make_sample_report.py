"""Write tests/data/sample-report.json: a plausible simulated day, for the HTML report's tests.

Not the simulator: a small, seeded queueing model of one bay and a rack of packs (arrivals from
simstation/data/arrivals, a charger per slot sharing a grid limit, one injected robot fault), so
the report has realistic shapes without running the station. Run from the repository root:
`.venv/bin/python tests/data/make_sample_report.py`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from simstation.report import (
    AlarmEntry,
    Car,
    FaultEntry,
    Report,
    Sample,
    StationSummary,
    percentiles,
)

HERE = Path(__file__).resolve().parent
ARRIVALS = HERE.parents[1] / "simstation" / "data" / "arrivals" / "urban_day6_117.dat"
OUT = HERE / "sample-report.json"

DAY_S = 86_400
PACKS = {"STD75": 12, "LR100": 6}
CAPACITY_KWH = {"STD75": 75.0, "LR100": 100.0}
CHARGER_KW = 60.0
GRID_LIMIT_KW = 450.0
MIN_DISPENSE_SOC = 80.0
MAX_WAIT_S = 600.0
STEPS = {  # phase -> (mean, spread) in simulated seconds
    "lifting": (8.0, 0.4),
    "removing": (13.0, 1.5),
    "storing": (9.0, 2.5),
    "fetching": (9.0, 2.5),
    "installing": (13.0, 1.5),
    "locking": (8.0, 0.6),
    "lowering": (8.0, 0.4),
    "releasing": (16.0, 4.0),
}
FAULT_S = 14 * 3600 + 5 * 60  # injected then: the robot jams on the next swap
RESET_AFTER_S = 9 * 60  # the operator resets the robot this long after the jam
HOT_SLOT = (17 * 3600 + 40 * 60, 18 * 3600 + 12 * 60)  # slot 4 over temperature: not charging


@dataclass
class Pack:
    """A pack in a slot."""

    pack_type: str
    soc: float


@dataclass
class Waiting:
    """A car in the queue."""

    index: int
    arrived_s: float


def arrival_times() -> list[float]:
    """Seconds of the day, from the recorded sample day."""
    times = []
    for line in ARRIVALS.read_text().splitlines():
        clock = line.split()[1]
        h, m, s = (int(x) for x in clock.split(":"))
        times.append(float(h * 3600 + m * 60 + s))
    # A late car still in the bay when the day ends.
    times.append(DAY_S - 60.0)
    return sorted(times)


def main() -> None:
    rng = random.Random(20261101)
    slots = [Pack(t, rng.uniform(60.0, 100.0)) for t, n in PACKS.items() for _ in range(n)]
    times = arrival_times()
    cars: list[dict[str, object]] = []
    for i, t in enumerate(times):
        cars.append(
            {
                "vehicle_id": f"EV-{i + 1:04d}",
                "pack_type": "LR100" if rng.random() < 0.3 else "STD75",
                "soc": round(rng.uniform(5.0, 25.0), 1),
                "arrived_s": t,
                "outcome": "waiting",
            }
        )
    queue: list[Waiting] = []
    next_arrival = 0
    bay: tuple[int, float, list[tuple[str, float]], str] | None = None  # car, start, steps, slot
    steps_done: dict[str, list[float]] = {p: [] for p in STEPS}
    samples: list[Sample] = []
    energy_kwh = 0.0
    peak = 0.0
    swaps = 0
    jam_at: float | None = None
    for t in range(DAY_S):
        while next_arrival < len(times) and times[next_arrival] <= t:
            queue.append(Waiting(next_arrival, times[next_arrival]))
            next_arrival += 1
        for w in list(queue):
            if t - w.arrived_s > MAX_WAIT_S:
                queue.remove(w)
                car = cars[w.index]
                car["outcome"] = "turned_away"
                car["reason"] = f"no {car['pack_type']} pack ready within 10 min"
        phase = "idle"
        if bay is not None:
            index, start, plan, _ = bay
            elapsed = t - start
            acc = 0.0
            for name, duration in plan:
                acc += duration
                if elapsed < acc:
                    phase = name
                    break
            else:
                car = cars[index]
                jammed = plan[-1][0] == "removing"
                car["outcome"] = "failed" if jammed else "served"
                car["swap_s"] = round(acc, 1)
                if jammed:
                    car["reason"] = "robot fault JAM while removing: swap aborted"
                else:
                    for name, duration in plan:
                        steps_done[name].append(duration)
                bay = None
        blocked = jam_at is not None and t < jam_at + RESET_AFTER_S
        if bay is None and not blocked:
            for w in queue:
                pack_type = str(cars[w.index]["pack_type"])
                full = [p for p in slots if p.pack_type == pack_type and p.soc >= MIN_DISPENSE_SOC]
                if not full:
                    continue
                best = max(full, key=lambda p: p.soc)
                car = cars[w.index]
                queue.remove(w)
                best.soc = float(str(car["soc"]))  # the car's pack takes the slot
                swaps += 1
                car["wait_s"] = float(t - w.arrived_s)
                car["swap_id"] = f"S-{swaps:04d}"
                plan = [(name, round(rng.gauss(m, s), 1)) for name, (m, s) in STEPS.items()]
                if t >= FAULT_S and jam_at is None:
                    plan = [*plan[:1], ("removing", 6.0)]
                    jam_at = t + plan[0][1] + 6.0
                bay = (w.index, float(t), plan, pack_type)
                break
        # Chargers: CC to 90 %, tapering to 100 %, sharing the grid limit equally when over it.
        demand = []
        for n, pack in enumerate(slots):
            hot = n == 4 and HOT_SLOT[0] <= t < HOT_SLOT[1]
            if pack.soc >= 100.0 or hot:
                demand.append(0.0)
            elif pack.soc < 90.0:
                demand.append(CHARGER_KW)
            else:
                demand.append(CHARGER_KW * max(0.08, (100.0 - pack.soc) / 10.0))
        total = sum(demand)
        scale = min(1.0, GRID_LIMIT_KW / total) if total else 0.0
        grid = 0.0
        for pack, kw in zip(slots, demand, strict=True):
            power = kw * scale * rng.uniform(0.985, 1.0)
            grid += power
            pack.soc = min(100.0, pack.soc + power / 3600.0 / CAPACITY_KWH[pack.pack_type] * 100)
        energy_kwh += grid / 3600.0
        peak = max(peak, grid)
        if t % 60 == 0:
            ready: dict[str, int] = dict.fromkeys(PACKS, 0)
            for p in slots:
                if p.soc >= MIN_DISPENSE_SOC:
                    ready[p.pack_type] += 1
            samples.append(
                Sample(
                    t_s=float(t),
                    grid_kw=round(grid, 1),
                    ready=ready,
                    queue=len(queue),
                    phase=phase,
                )
            )
    models = [Car.model_validate(c) for c in cars]
    by = {o: sum(c.outcome == o for c in models) for o in ("served", "failed", "turned_away")}
    started = [c.wait_s for c in models if c.wait_s is not None]
    swap_times = [c.swap_s for c in models if c.outcome == "served" and c.swap_s is not None]
    assert jam_at is not None
    report = Report(
        scenario="urban weekday (sample)",
        description=f"A recorded urban day of {len(models)} arrivals, {len(slots)} packs of two "
        f"types, a {GRID_LIMIT_KW:g} kW grid limit, a robot jam injected at 14:05.",
        station=StationSummary(
            slots=len(slots),
            packs=dict(PACKS),
            charger_kw=CHARGER_KW,
            grid_limit_kw=GRID_LIMIT_KW,
            policy="demand",
        ),
        speed=240.0,
        duration_s=float(DAY_S),
        wall_s=round(DAY_S / 240.0 + 3.2, 1),
        arrivals=len(models),
        served=by["served"],
        failed=by["failed"],
        turned_away=by["turned_away"],
        waiting=sum(c.outcome == "waiting" for c in models),
        waits=percentiles(started),
        swap_times=percentiles(swap_times),
        step_s={k: percentiles(v) for k, v in steps_done.items()},
        cars=models,
        samples=samples,
        alarms=[
            AlarmEntry(
                t_s=round(jam_at + 1.0, 1),
                kind="raised",
                scope="robot",
                code="robot_fault",
                severity="critical",
                message="robot reports fault JAM while removing",
            ),
            AlarmEntry(
                t_s=round(jam_at + RESET_AFTER_S, 1),
                kind="cleared",
                scope="robot",
                code="robot_fault",
                severity="critical",
                message="robot reset by operator",
            ),
            AlarmEntry(
                t_s=float(HOT_SLOT[0]),
                kind="raised",
                scope="rack1/slot5",
                code="over_temperature",
                severity="warning",
                message="pack temperature 56.5 C above 55.0 C: charging stopped",
            ),
            AlarmEntry(
                t_s=float(HOT_SLOT[1]),
                kind="cleared",
                scope="rack1/slot5",
                code="over_temperature",
                severity="warning",
                message="pack temperature back to 49.8 C",
            ),
        ],
        faults=[FaultEntry(t_s=float(FAULT_S), what="robot: faults.jam_on = REMOVE")],
        energy_kwh=round(energy_kwh, 1),
        peak_grid_kw=round(peak, 1),
    )
    assert report.accounted()
    OUT.write_text(report.model_dump_json(indent=1) + "\n")
    print(
        f"{OUT}: {report.arrivals} arrivals, {report.served} served, {report.failed} failed, "
        f"{report.turned_away} turned away, {report.waiting} waiting"
    )


if __name__ == "__main__":
    main()
