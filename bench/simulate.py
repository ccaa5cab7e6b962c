"""A whole simulated day (`swapctl simulate`): wall time against the target, and what it served.

Runs a scenario (default: the busy 13-pack day, `config/scenarios/pss13.toml`) with the real
daemon as its own process against the simulated station, as `swapctl simulate` does, and
reports the wall time it took next to what the day came to. Target: the busy day of a 13-pack
station (about 300 swaps) in under 3 minutes of wall clock on a 2-core machine.

    .venv/bin/python bench/simulate.py [SCENARIO.toml] [--speed X] [--duration-h H]

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from simstation.scenario import load_scenario
from simstation.simulate import Progress, apply_overrides, simulate, summary, write_report


def main() -> None:
    """Run the scenario and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "scenario", type=Path, nargs="?", default=REPO / "config" / "scenarios" / "pss13.toml"
    )
    parser.add_argument("--speed", type=float, default=None)
    parser.add_argument("--duration-h", type=float, default=None)
    args = parser.parse_args()
    loaded = apply_overrides(
        load_scenario(args.scenario), speed=args.speed, duration_h=args.duration_h
    )
    with tempfile.TemporaryDirectory(prefix="bench-simulate-") as tmp:
        started = time.monotonic()
        report = asyncio.run(simulate(loaded, Path(tmp), progress=Progress(sys.stderr)))
        total_s = time.monotonic() - started
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
                "sim_speed": report.speed,
                "sim_hours": round(report.duration_s / 3600.0, 2),
                "wall_s": report.wall_s,  # the simulated day itself
                "total_wall_s": round(total_s, 1),  # with broker, station and daemon start/stop
                "wait_p50_min": round(report.waits.p50 / 60.0, 1),
                "wait_p90_min": round(report.waits.p90 / 60.0, 1),
                "swap_p50_min": round(report.swap_times.p50 / 60.0, 2),
                "peak_grid_kw": report.peak_grid_kw,
                "cpus": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
