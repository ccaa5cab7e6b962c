"""A whole simulated day (`swapctl simulate`): wall time against the target, and what it served.

Runs a scenario (default: the busy 13-pack day, `config/scenarios/pss13.toml`) with the real
daemon against the simulated station, as `swapctl simulate` does: on virtual time in one
process (`--clock virtual`, the default) or as its own process on scaled wall time (`--clock
wall`), and reports the wall time it took next to what the day came to. Targets (issue 16): a
saturated 24-hour day of the 13-pack station in under 5 minutes of wall clock on 2 cores, on
virtual time; the 30-day run's RSS flat after warm-up (`rss_kib` here is the peak).

    .venv/bin/python bench/simulate.py [SCENARIO.toml] [--clock virtual|wall] [--speed X]
                                       [--start-h H] [--duration-h H]

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from simstation.runreport import summary, write_report
from simstation.scenario import load_scenario
from simstation.simulate import Progress, apply_overrides, run_virtual, simulate


def main() -> None:
    """Run the scenario and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "scenario", type=Path, nargs="?", default=REPO / "config" / "scenarios" / "pss13.toml"
    )
    parser.add_argument("--clock", choices=("virtual", "wall"), default="virtual")
    parser.add_argument("--speed", type=float, default=None)
    parser.add_argument("--start-h", type=float, default=None)
    parser.add_argument("--duration-h", type=float, default=None)
    args = parser.parse_args()
    loaded = apply_overrides(
        load_scenario(args.scenario),
        speed=args.speed,
        start_h=args.start_h,
        duration_h=args.duration_h,
    )
    with tempfile.TemporaryDirectory(prefix="bench-simulate-") as tmp:
        started = time.monotonic()
        cpu0 = time.process_time()
        if args.clock == "virtual":
            report = run_virtual(loaded, Path(tmp), progress=Progress(sys.stderr))
        else:
            report = asyncio.run(simulate(loaded, Path(tmp), progress=Progress(sys.stderr)))
        total_s = time.monotonic() - started
        cpu_s = time.process_time() - cpu0
        write_report(report, Path(tmp), html=False)
    print(summary(report))
    print(
        json.dumps(
            {
                "scenario": report.scenario,
                "swaps": report.served,
                "arrivals": report.arrivals,
                "turned_away": report.turned_away,
                "failed": report.failed,
                "waiting": report.waiting,
                "clock": report.clock,
                "sim_speed": report.speed,
                "sim_hours": round(report.duration_s / 3600.0, 2),
                "wall_s": report.wall_s,  # the simulated day itself
                "total_wall_s": round(total_s, 1),  # with broker, station and daemon start/stop
                "wait_p50_min": round(report.waits.p50 / 60.0, 1),
                "wait_p90_min": round(report.waits.p90 / 60.0, 1),
                "swap_p50_min": round(report.swap_times.p50 / 60.0, 2),
                "peak_grid_kw": report.peak_grid_kw,
                "cpu_s": round(cpu_s, 1),  # this process (on virtual time: everything)
                "cpu_ms_per_sim_s": round(1000 * cpu_s / report.duration_s, 2),
                "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                "load": report.load,
                "cpus": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
