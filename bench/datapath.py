"""The data path from a register to MQTT: CPU, the daemon's own latency, requests, memory.

Simulated racks (20 chargers each, a charging pack in every slot, values moving every 50 ms)
run in a child process; the daemon runs in this process against them, over a private broker,
with every deadband at 0, so that every change of a published value is published. Scenarios:

- `20@0.1`: one 20-slot rack polled every 0.1 s;
- `20@1`: the same rack polled every 1 s;
- `400@1`: 20 such racks (400 slots) polled every 1 s.

Figures per scenario, over a window after a warm-up:
- `cpu_s_per_min`: the daemon's CPU (every thread) per minute of wall clock;
- `cpu_ms_per_cycle`: that CPU divided by the poll cycles completed (all racks);
- `own_latency_ms_p50/p99`: the daemon's own part of change -> MQTT, from the end of the poll
  that brought a new reading (its last reply in) to the slot's PUBLISH handed to the socket;
- `requests_per_cycle` and the minimum the profile's layout allows (`min_requests_per_cycle`);
- `rss_mib`: the process's resident memory at the end.

    .venv/bin/python bench/datapath.py [--window 30] [--only 20@1]

The last line is one JSON object with `cpu_s_per_min_400`, `cpu_ms_per_cycle_20`,
`own_latency_ms_p99_20`, `own_latency_ms_p99_400`, `rss_mib_20`, `requests_per_cycle` and
`min_requests_per_cycle` (the 20-slot rack at 1 s), and every scenario's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SLOTS_PER_RACK = 20
SCENARIOS = {"20@0.1": (1, 0.1), "20@1": (1, 1.0), "400@1": (20, 1.0)}
WARMUP_S = 5.0


async def serve(racks: int) -> None:
    """Child process: `racks` simulated racks, a charging pack in every slot; print ports."""
    from drivers.modbus.profile import load_profile
    from simstation.charger import SimPack
    from simstation.rack import SimRack

    profile = load_profile(REPO / "config" / "profiles" / "simrack.toml")
    ports = []
    for r in range(racks):
        slots = list(range(r * SLOTS_PER_RACK + 1, (r + 1) * SLOTS_PER_RACK + 1))
        rack = SimRack(profile, slots)
        for i, slot in enumerate(slots):
            rack.insert_pack(slot, SimPack(f"PK-{slot:05d}", soc=20.0 + (i * 3) % 60))
        ports.append(await rack.start_tcp())
    print(" ".join(map(str, ports)), flush=True)
    await asyncio.Event().wait()


def config_toml(ports: list[int], period: float, storage: Path, mqtt_port: int) -> str:
    """The daemon's config: the racks only (a charging station), deadbands 0."""
    lines = [
        'station_id = "bench"',
        f'profiles_dir = "{REPO / "config" / "profiles"}"',
        f'[mqtt]\nhost = "127.0.0.1"\nport = {mqtt_port}',
        '[logging]\nlevel = "warning"',
        # Contactor times short: the chargers switch on within the warm-up and charge.
        "[charging]\nmin_on_s = 0.5\nmin_off_s = 0.5",
        f'[storage]\ndir = "{storage}"',
        (
            "[publish.deadbands]\nsoc = 0\nvoltage_v = 0\ncurrent_a = 0\npower_w = 0\ntemp_c = 0"
            "\nenergy_wh = 0"
        ),
    ]
    for r, port in enumerate(ports):
        slots = list(range(r * SLOTS_PER_RACK + 1, (r + 1) * SLOTS_PER_RACK + 1))
        lines.append(
            f'[[racks]]\nname = "r{r + 1}"\ntransport = "tcp"\nhost = "127.0.0.1"\nport = {port}'
            f'\nprofile = "simrack"\nunit_id = 1\nslots = {slots}\npoll_period_s = {period}'
        )
    return "\n".join(lines) + "\n"


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss_mib() -> float:
    """Resident memory of this process now (VmRSS), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def measure(config_path: Path, window: float) -> dict[str, Any]:
    """Run the daemon, instrument its data path, and measure over `window` seconds."""
    import paho.mqtt.client as paho

    from controller.config.loader import load_config
    from controller.runtime.daemon import Daemon
    from drivers.modbus.plan import min_reads

    daemon = Daemon(load_config(config_path, environ={}))
    task = asyncio.create_task(daemon.run())
    try:
        while daemon.station is None:  # noqa: ASYNC110 - the daemon has no event for it
            await asyncio.sleep(0.01)
        station = daemon.station
        # The end of the poll that brought each reading: keyed by (slot, reading stamp).
        poll_ended: dict[tuple[int, float], float] = {}
        latest: dict[int, float] = {}  # slot -> stamp of its newest reading (the probe's own)
        original = station.pollers[next(iter(station.pollers))]._on_snapshot  # noqa: SLF001

        def on_snapshot(snapshot: Any) -> None:
            ended = time.monotonic()
            for slot, reading in snapshot.readings.items():
                poll_ended.setdefault((slot, reading.at), ended)
                latest[slot] = reading.at
            original(snapshot)

        for poller in station.pollers.values():
            poller._on_snapshot = on_snapshot  # noqa: SLF001 - the bench's probe
        latencies: list[float] = []
        published: dict[int, float] = {}  # slot -> stamp of the reading last published
        prefix = f"{station.link.topic_root}/slots/"
        paho_publish = paho.Client.publish

        def probed(client: Any, topic: str, *args: Any, **kwargs: Any) -> Any:
            info = paho_publish(client, topic, *args, **kwargs)  # on the socket when it returns
            if topic.startswith(prefix) and measuring:
                slot = int(topic[len(prefix) :])
                stamp = latest.get(slot)
                if stamp is not None and published.get(slot) != stamp:
                    ended = poll_ended.get((slot, stamp))
                    if ended is not None:
                        latencies.append((time.monotonic() - ended) * 1000)
                    published[slot] = stamp
            return info

        paho.Client.publish = probed  # type: ignore[method-assign,assignment]
        measuring = False
        await asyncio.sleep(WARMUP_S)
        cycles0 = sum(p.stats.cycles for p in station.pollers.values())
        requests0 = sum(p.driver.link.stats.requests for p in station.pollers.values())
        cpu0, wall0 = time.process_time(), time.monotonic()
        measuring = True
        await asyncio.sleep(window)
        measuring = False
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        cycles = sum(p.stats.cycles for p in station.pollers.values()) - cycles0
        requests = sum(p.driver.link.stats.requests for p in station.pollers.values()) - requests0
        driver = next(iter(station.pollers.values())).driver
        minimum = min_reads(
            driver.items, max_read=driver.profile.max_read,
            readable_gaps=driver.profile.readable_gaps,
        )  # fmt: skip
        return {
            "slots": len(station.book.slots),
            "cpu_s_per_min": round(cpu / wall * 60, 2),
            "cpu_ms_per_cycle": round(cpu * 1000 / max(cycles, 1), 2),
            "own_latency_ms_p50": round(statistics.median(latencies), 2) if latencies else None,
            "own_latency_ms_p99": round(pct(latencies, 0.99), 2) if latencies else None,
            "changes_published": len(latencies),
            "requests_per_cycle": round(requests / max(cycles, 1), 2),
            "min_requests_per_cycle": minimum,
            "rss_mib": round(rss_mib(), 1),
            "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
    finally:
        daemon.request_stop("bench done")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)


def run_scenario(name: str, window: float) -> dict[str, Any]:
    """One scenario in a fresh process (so memory and CPU are the daemon's alone)."""
    out = subprocess.run(
        [sys.executable, __file__, "--scenario", name, "--window", str(window)],
        capture_output=True, text=True, timeout=window + 120, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(f"scenario {name} failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.splitlines()[-1])
    return result


def scenario_main(name: str, window: float) -> None:
    """Run one scenario in this process: racks in a child, the daemon here."""
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # its own retries, not ours
    from controller.runtime import eventloop
    from simstation.broker import Mosquitto

    racks, period = SCENARIOS[name]
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp) / "broker") as broker:
        child = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(racks)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert child.stdout is not None
            ports = [int(p) for p in child.stdout.readline().split()]
            config = Path(tmp) / "station.toml"
            config.write_text(config_toml(ports, period, Path(tmp) / "state", broker.port))
            profile_to = os.environ.get("DATAPATH_PROFILE")  # a cProfile dump, for study
            if profile_to:
                import cProfile

                with cProfile.Profile() as prof:
                    result = eventloop.run(measure(config, window))
                prof.dump_stats(profile_to)
            else:
                result = eventloop.run(measure(config, window))
        finally:
            child.terminate()
            child.wait(10)
    print(json.dumps({"scenario": name, **result}))


def main() -> None:
    """Every scenario, each in its own process; the summary JSON last."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=30.0, help="seconds measured")
    parser.add_argument("--only", choices=sorted(SCENARIOS), help="one scenario")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        asyncio.run(serve(args.serve))
        return
    if args.scenario is not None:
        scenario_main(args.scenario, args.window)
        return
    results = {}
    for name in [args.only] if args.only else list(SCENARIOS):
        results[name] = run_scenario(name, args.window)
        print(json.dumps(results[name]), flush=True)
    r20, r400 = results.get("20@1", {}), results.get("400@1", {})
    summary = {
        "cpu_s_per_min_400": r400.get("cpu_s_per_min"),
        "cpu_ms_per_cycle_20": r20.get("cpu_ms_per_cycle"),
        "own_latency_ms_p99_20": r20.get("own_latency_ms_p99"),
        "own_latency_ms_p99_400": r400.get("own_latency_ms_p99"),
        "rss_mib_20": r20.get("rss_mib"),
        "requests_per_cycle": r20.get("requests_per_cycle"),
        "min_requests_per_cycle": r20.get("min_requests_per_cycle"),
        "load_avg": Path("/proc/loadavg").read_text().split()[:3],
        "scenarios": results,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
