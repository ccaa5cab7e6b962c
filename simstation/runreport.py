"""The report of a run (`simstation.report.Report`) from what it recorded, and its summary.

`build_report` makes one bay's; `merge_bays` a site's from its bays'. `hours` names each hour's
binding limit (`binding_limit`); `write_report` writes report.json and report.html; `summary`
is the few lines a terminal shows.
"""

from __future__ import annotations

import collections
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from controller.swap.phase import Phase
from simstation.charger import CHARGE_V
from simstation.forecastcheck import check_forecasts
from simstation.recorder import OVERRUN_S, Recorder
from simstation.report import (
    BayStat,
    HourStat,
    RecordCheck,
    Report,
    Sample,
    StationSummary,
    percentiles,
)
from simstation.report import Car as CarEntry
from simstation.scenario import LoadedScenario
from simstation.traffic import Fleet

Write = Callable[[str], None]


class BayRun(Protocol):
    """What the site's report needs of a bay's run."""

    bay: int
    station_id: str
    rec: Recorder


def _stderr(line: str) -> None:
    sys.stderr.write(line + "\n")


def build_report(
    loaded: LoadedScenario, fleet: Fleet, rec: Recorder, wall_s: float, *, clock_mode: str = "wall"
) -> Report:
    """The report of a run."""
    sc = loaded.scenario
    st = sc.station
    end_s = sc.start_s + sc.run_s
    cars = []
    for car in fleet.cars:
        if car.arrive_s >= end_s:
            continue
        outcome = car.outcome or "waiting"
        wait = None if car.accepted_s is None else round(car.accepted_s - car.arrive_s, 1)
        swap = None
        if car.accepted_s is not None and car.ended_s is not None:
            swap = round(car.ended_s - car.accepted_s, 1)
        if car.accepted_s is not None:
            waited: float | None = car.accepted_s - car.arrive_s
        elif car.left_s is not None:
            waited = car.left_s - car.arrive_s
        else:
            waited = end_s - car.arrive_s if outcome == "waiting" else None
        cars.append(
            CarEntry(
                vehicle_id=car.vehicle_id,
                pack_type=car.pack_type,
                soc=car.soc,
                arrived_s=round(car.arrive_s, 1),
                outcome=outcome,
                wait_s=wait,
                swap_s=swap,
                swap_id=car.swap_id,
                reason=car.reason if outcome in {"turned_away", "failed"} else None,
                waited_s=None if waited is None else round(waited, 1),
                bay=car.bay,
            )
        )
    count = {
        k: sum(1 for c in cars if c.outcome == k)
        for k in ("served", "failed", "turned_away", "waiting")
    }
    return Report(
        scenario=sc.name,
        description=sc.description,
        station=StationSummary(
            slots=st.slots,
            packs=dict(st.packs),
            charger_kw=round(st.charger_max_a * CHARGE_V / 1000.0, 1),
            grid_limit_kw=st.grid_limit_kw,
            policy=st.policy,
            bays=st.bays,
        ),
        speed=sc.speed if clock_mode == "wall" else round(sc.run_s / max(wall_s, 1e-9), 1),
        clock=clock_mode,
        start_s=sc.start_s,
        duration_s=sc.run_s,
        wall_s=round(wall_s, 1),
        arrivals=len(cars),
        served=count["served"],
        failed=count["failed"],
        turned_away=count["turned_away"],
        waiting=count["waiting"],
        waits=percentiles([c.wait_s for c in cars if c.wait_s is not None]),
        waits_all=percentiles([c.waited_s for c in cars if c.waited_s is not None]),
        hours=hours(
            fleet,
            rec.samples,
            sc.start_s,
            end_s,
            None if st.grid_limit_kw is None else st.grid_limit_kw - st.safety_margin_kw,
        ),
        swap_times=percentiles(
            [c.swap_s for c in cars if c.outcome == "served" and c.swap_s is not None]
        ),
        step_s={k: percentiles(v) for k, v in sorted(rec.step_times().items())},
        cars=cars,
        samples=rec.samples,
        alarms=rec.alarms,
        faults=sorted(rec.faults, key=lambda f: f.t_s),
        energy_kwh=round(rec.energy_kwh, 1),
        energy_by_hour=[
            round(rec.energy_by_hour.get(h, 0.0), 2)
            for h in range(int(sc.start_s // 3600), int(-(-end_s // 3600)))
        ],
        energy_cost=None if rec.prices is None else round(rec.cost, 2),
        cost_per_swap=(
            None
            if rec.prices is None or not count["served"]
            else round(rec.cost / count["served"], 3)
        ),
        currency=None if st.tariff is None else st.tariff.currency,
        energy_cost_bound=None if rec.prices is None else round(rec.ledger.bound, 2),
        store_kwh_start=_kwh(rec.ledger.store_start),
        store_kwh_end=_kwh(sum(rec.ledger.store.values()) if rec.ledger.store else None),
        binding_by_hour=binding_by_hour(rec.samples, sc.start_s, end_s),
        forecast_check=check_forecasts(rec.samples, loaded.expected_per_hour()),
        grid_events=list(rec.grid_events),
        peak_grid_kw=round(rec.peak_w / 1000.0, 1),
        load=[round(x, 2) for x in rec.load],
        cores=os.cpu_count() or 0,
        life=rec.life,
        records=rec.records,
        sim_records_kib=rec.sim_kib,
        overrun_max_s=round(rec.overrun_max_s, 3),
        overruns=rec.overruns,
    )


def _kwh(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def binding_by_hour(samples: Sequence[Sample], start_s: float, end_s: float) -> list[str]:
    """Per hour of the run, the limit source the station named most often ("none": no limit)."""
    out: list[str] = []
    for h in range(int(start_s // 3600), int(-(-end_s // 3600))):
        seen = collections.Counter(
            s.binding or "none" for s in samples if h * 3600 <= s.t_s < (h + 1) * 3600
        )
        out.append(seen.most_common(1)[0][0] if seen else "none")
    return out


def merge_bays(
    loaded: LoadedScenario, reports: Sequence[Report], lanes: Sequence[BayRun]
) -> Report:
    """The site's report from its bays' reports (`reports[i]` is `lanes[i]`'s).

    The cars of every bay; the hours and samples summed (shares averaged); each bay's own
    figures in `bays`. The peak here is the highest per-minute sample of the site's power;
    `_report` puts the one taken at every physics step in its place (`SitePower`).
    """
    st = loaded.scenario.station
    first = reports[0]
    cars = sorted((c for r in reports for c in r.cars), key=lambda c: (c.arrived_s, c.vehicle_id))
    steps: dict[str, list[float]] = {}
    for lane in lanes:
        for phase, times in lane.rec.step_times().items():
            steps.setdefault(phase, []).extend(times)
    usable = None if st.grid_limit_kw is None else st.grid_limit_kw - st.safety_margin_kw
    hours = []
    for hs in zip(*(r.hours for r in reports), strict=True):
        n = len(hs)
        busy = sum(h.busy for h in hs) / n
        waiting = sum(h.waiting_for_pack for h in hs) / n
        budget = sum(h.budget_kw for h in hs)
        hours.append(
            HourStat(
                start_s=hs[0].start_s,
                arrived=sum(h.arrived for h in hs),
                served=sum(h.served for h in hs),
                failed=sum(h.failed for h in hs),
                turned_away=sum(h.turned_away for h in hs),
                busy=round(busy, 3),
                waiting_for_pack=round(waiting, 3),
                idle=round(sum(h.idle for h in hs) / n, 3),
                grid_kw=round(sum(h.grid_kw for h in hs), 1),
                budget_kw=round(budget, 1),
                binding=binding_limit(
                    busy, waiting, budget, None if usable is None else usable * n
                ),
            )
        )
    samples = [
        Sample(
            t_s=ss[0].t_s,
            grid_kw=round(sum(x.grid_kw for x in ss), 2),
            budget_kw=round(sum(x.budget_kw for x in ss), 2),
            ready={
                t: sum(x.ready.get(t, 0) for x in ss)
                for t in sorted({t for x in ss for t in x.ready})
            },
            queue=sum(x.queue for x in ss),
            phase=",".join(x.phase for x in ss),
        )
        # On wall time a bay's sampler may have taken one sample more than another's at the end.
        for ss in zip(*(r.samples for r in reports), strict=False)
    ]
    checks = [r.records for r in reports if r.records is not None]
    records = None
    if checks:
        problems = [f"bay {i}: {c.problem}" for i, c in enumerate(checks, 1) if c.problem]
        records = RecordCheck(
            ok=all(c.ok for c in checks),
            count=sum(c.count for c in checks),
            problem="; ".join(problems) or None,
        )
    count = {
        k: sum(1 for c in cars if c.outcome == k)
        for k in ("served", "failed", "turned_away", "waiting")
    }
    return first.model_copy(
        update={
            "arrivals": len(cars),
            "served": count["served"],
            "failed": count["failed"],
            "turned_away": count["turned_away"],
            "waiting": count["waiting"],
            "waits": percentiles([c.wait_s for c in cars if c.wait_s is not None]),
            "waits_all": percentiles([c.waited_s for c in cars if c.waited_s is not None]),
            "hours": hours,
            "swap_times": percentiles(
                [c.swap_s for c in cars if c.outcome == "served" and c.swap_s is not None]
            ),
            "step_s": {k: percentiles(v) for k, v in sorted(steps.items())},
            "cars": cars,
            "samples": samples,
            "alarms": sorted(
                (
                    a.model_copy(update={"scope": f"bay {i}/{a.scope}"})
                    for i, r in enumerate(reports, 1)
                    for a in r.alarms
                ),
                key=lambda a: a.t_s,
            ),
            "faults": sorted(
                (
                    f.model_copy(update={"what": f"bay {i}: {f.what}"})
                    for i, r in enumerate(reports, 1)
                    for f in r.faults
                ),
                key=lambda f: f.t_s,
            ),
            "energy_kwh": round(sum(r.energy_kwh for r in reports), 1),
            **_grid_sums(reports, count["served"]),
            "peak_grid_kw": round(max((x.grid_kw for x in samples), default=0.0), 1),
            "records": records,
            "sim_records_kib": sum(r.sim_records_kib for r in reports),
            "bays": [_bay_stat(r, lane) for r, lane in zip(reports, lanes, strict=True)],
        }
    )


def _grid_sums(reports: Sequence[Report], served: int) -> dict[str, object]:
    """The site's energy and its cost: every bay's, summed.

    Each bay has its own grid connection and limits: `binding_by_hour`, the forecasts and the
    grid events (sent to bay 1) stay bay 1's.
    """

    def total(values: list[float | None]) -> float | None:
        return None if any(v is None for v in values) else round(sum(v or 0.0 for v in values), 2)

    cost = total([r.energy_cost for r in reports])
    return {
        "energy_by_hour": [
            round(sum(hs), 2) for hs in zip(*(r.energy_by_hour for r in reports), strict=False)
        ],
        "energy_cost": cost,
        "cost_per_swap": None if cost is None or not served else round(cost / served, 3),
        "energy_cost_bound": total([r.energy_cost_bound for r in reports]),
        "store_kwh_start": total([r.store_kwh_start for r in reports]),
        "store_kwh_end": total([r.store_kwh_end for r in reports]),
    }


def _bay_stat(report: Report, lane: BayRun) -> BayStat:
    n = len(report.samples) or 1
    busy = sum(1 for s in report.samples if s.phase != Phase.IDLE)
    waiting = sum(1 for s in report.samples if s.phase == Phase.IDLE and s.queue > 0)
    return BayStat(
        bay=lane.bay,
        station_id=lane.station_id,
        arrivals=report.arrivals,
        served=report.served,
        failed=report.failed,
        turned_away=report.turned_away,
        waiting=report.waiting,
        busy=round(busy / n, 3),
        waiting_for_pack=round(waiting / n, 3),
        idle=round((len(report.samples) - busy - waiting) / n, 3) if report.samples else 0.0,
        energy_kwh=report.energy_kwh,
        swap_p50_s=report.swap_times.p50,
        records=report.records,
    )


BAY_BOUND = 0.9  # a swap under way this much of an hour: the bay is the limit
PACKS_BOUND = 0.1  # cars waiting with the bay free this much of it: charged packs are
GRID_BOUND = 0.95  # and charging at this much of the usable grid power: the grid is


def binding_limit(
    busy: float, waiting_for_pack: float, budget_kw: float, usable_kw: float | None
) -> str:
    """What held an hour's swaps back (see `HourStat.binding`).

    `budget_kw`: the hour's charging power as the controller counts it against the grid limit
    (amps x the BMS voltage limit), which is what reaches the limit, not the measured watts.
    """
    if busy >= BAY_BOUND:
        return "bay"
    if waiting_for_pack >= PACKS_BOUND:
        if usable_kw is not None and budget_kw >= GRID_BOUND * usable_kw:
            return "charged packs: grid"
        return "charged packs: chargers"
    return "none"


def hours(
    fleet: Fleet,
    samples: list[Sample],
    start_s: float,
    end_s: float,
    usable_kw: float | None = None,
) -> list[HourStat]:
    """Each hour of the run: arrivals, outcomes by when they happened, the bay's shares."""
    out = []
    t = start_s
    while t < end_s:
        top = min(t + 3600.0, end_s)

        def within(x: float | None, lo: float = t, hi: float = top) -> bool:
            return x is not None and lo <= x < hi

        cars = fleet.cars
        mine = [s for s in samples if within(s.t_s)]
        n = len(mine) or 1
        busy = sum(1 for s in mine if s.phase != Phase.IDLE)
        waiting = sum(1 for s in mine if s.phase == Phase.IDLE and s.queue > 0)
        grid_kw = sum(s.grid_kw for s in mine) / n
        budget_kw = sum(s.budget_kw for s in mine) / n
        out.append(
            HourStat(
                start_s=t,
                arrived=sum(1 for c in cars if within(c.arrive_s)),
                served=sum(1 for c in cars if c.outcome == "served" and within(c.ended_s)),
                failed=sum(1 for c in cars if c.outcome == "failed" and within(c.ended_s)),
                turned_away=sum(1 for c in cars if c.outcome == "turned_away" and within(c.left_s)),
                busy=round(busy / n, 3),
                waiting_for_pack=round(waiting / n, 3),
                idle=round((len(mine) - busy - waiting) / n, 3) if mine else 0.0,
                grid_kw=round(grid_kw, 1),
                budget_kw=round(budget_kw, 1),
                binding=binding_limit(busy / n, waiting / n, budget_kw, usable_kw),
            )
        )
        t = top
    return out


def write_report(
    report: Report, out: Path, *, html: bool = True, warn: Write = _stderr
) -> list[Path]:
    """report.json, and report.html when the renderer is there; the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "report.json"]
    paths[0].write_text(report.model_dump_json(indent=1) + "\n")
    if html:
        try:
            from simstation import reporthtml
        except ImportError as exc:
            warn(f"warning: no HTML report ({exc}); report.json only")
        else:
            path = out / "report.html"
            path.write_text(reporthtml.render(report))
            paths.append(path)
    return paths


def summary(report: Report) -> str:
    """The figures in a few lines."""
    w, s = report.waits, report.swap_times
    raised = sum(1 for a in report.alarms if a.kind == "raised")
    lines = [
        (
            f"{report.scenario}: {report.duration_s / 3600:g} h simulated in"
            f" {report.wall_s:.0f} s ({report.speed:g}x)"
        ),
        (
            f"  cars {report.arrivals}: served {report.served}, turned away"
            f" {report.turned_away}, failed {report.failed}, still waiting {report.waiting}"
        ),
        (
            f"  wait p50 {w.p50 / 60:.1f} min, p90 {w.p90 / 60:.1f} min; swap p50"
            f" {s.p50 / 60:.1f} min; peak grid {report.peak_grid_kw:.0f} kW,"
            f" {report.energy_kwh:.0f} kWh"
        ),
        f"  alarms raised {raised}, fault entries {len(report.faults)}",
    ]
    if report.bays:
        lines.append(
            f"  {len(report.bays)} bays: "
            + "; ".join(f"{b.bay}: served {b.served}, busy {b.busy:.0%}" for b in report.bays)
        )
    if report.waits_all is not None and report.turned_away:
        a = report.waits_all
        lines.insert(
            3,
            f"  every car's wait (the turned away until they gave up): p50 {a.p50 / 60:.1f} min,"
            f" p90 {a.p90 / 60:.1f} min",
        )
    if report.load:
        start, peak, end = report.load
        lines.append(
            f"  machine: load {start:.2f} at the start, {peak:.2f} at most, {end:.2f} at the end"
            f" ({report.cores} cores)"
        )
    if report.clock == "wall" and report.overruns:
        lines.append(
            f"  overruns: the loop woke up to {report.overrun_max_s:.2f} s late"
            f" ({report.overruns} times by more than {OVERRUN_S:g} s): handovers were as late,"
            " times the speed"
        )
    if report.records is not None and not report.records.ok:
        lines.append(f"  swap records: chain broken: {report.records.problem}")
    return "\n".join(lines)
