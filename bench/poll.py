"""Poll cycle of a 40-slot rack over Modbus TCP on loopback: requests, latency, CPU.

The simulated rack runs in a child process (so the figures are the controller's alone). The
planned poll is compared with the minimum number of reads (dynamic programming) and with the
naive poll (one request per value), measured in the same run.

    .venv/bin/python bench/poll.py [--slots 40] [--cycles 500]

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from controller.runtime import eventloop
from drivers.modbus.link import LinkParams, ModbusLink, TcpParams
from drivers.modbus.plan import Read, min_reads
from drivers.modbus.profile import load_profile
from drivers.rack import RackDriver

PROFILE = REPO / "config" / "profiles" / "simrack.toml"


async def serve(slots: int) -> None:
    """Child process: a simulated rack with a pack in every other slot."""
    from simstation.charger import SimPack
    from simstation.rack import SimRack

    rack = SimRack(load_profile(PROFILE), list(range(1, slots + 1)))
    for slot in range(1, slots + 1, 2):
        rack.insert_pack(slot, SimPack(f"PK-{slot:04d}", soc=50.0))
    port = await rack.start_tcp()
    print(port, flush=True)
    await asyncio.Event().wait()


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(port: int, slots: int, cycles: int) -> dict[str, float | int]:
    """Time planned and naive polls against the rack on `port`."""
    profile = load_profile(PROFILE)
    link = ModbusLink(LinkParams("bench", tcp=TcpParams("127.0.0.1", port)), keep_rtts=True)
    driver = RackDriver("bench", profile, link, list(range(1, slots + 1)), unit_id=1)
    await driver.read_all()  # connect and warm up
    for _ in range(20):
        await driver.read_all()

    times: list[float] = []
    requests_before = link.stats.requests
    cpu_before = time.process_time()
    for _ in range(cycles):
        started = time.perf_counter()
        await driver.read_all()
        times.append((time.perf_counter() - started) * 1000)
    cpu_ms = (time.process_time() - cpu_before) * 1000 / cycles
    requests = (link.stats.requests - requests_before) / cycles

    # The naive poll: one request per value, as many drivers do.
    naive_reads = [Read(i.unit, i.table, i.address, i.spec.words, (i,)) for i in driver.items]
    planned = driver.reads
    naive_times: list[float] = []
    naive_cycles = max(5, cycles // 20)
    naive_before = link.stats.requests
    try:
        driver.set_plan(naive_reads)
        for _ in range(naive_cycles):
            started = time.perf_counter()
            await driver.read_all()
            naive_times.append((time.perf_counter() - started) * 1000)
    finally:
        driver.set_plan(planned)
    naive_requests = (link.stats.requests - naive_before) / naive_cycles
    await link.close()
    return {
        "slots": slots,
        "registers_per_cycle": driver.registers_per_cycle,
        "values_per_cycle": len(driver.items),
        "requests_per_cycle": requests,
        "min_requests_per_cycle": min_reads(
            driver.items, max_read=profile.max_read, readable_gaps=profile.readable_gaps
        ),
        "naive_requests_per_cycle": naive_requests,
        "cycle_ms_p50": round(statistics.median(times), 3),
        "cycle_ms_p99": round(pct(times, 0.99), 3),
        "cycle_ms_max": round(max(times), 3),
        "naive_cycle_ms_p50": round(statistics.median(naive_times), 3),
        "cpu_ms_per_cycle": round(cpu_ms, 3),
        "request_rtt_ms_p50": round(statistics.median(link.stats.rtts) * 1000, 3),
        "cycles": cycles,
    }


def main() -> int:
    """Run the benchmark; print the JSON line last."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--slots", type=int, default=40)
    parser.add_argument("--cycles", type=int, default=500)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.slots))
        return 0
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--slots", str(args.slots)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        result = eventloop.run(measure(port, args.slots, args.cycles))
    finally:
        child.terminate()
        child.wait(timeout=10)
    print(
        f"{args.slots} slots over TCP: {result['requests_per_cycle']:g} requests/cycle"
        f" (minimum {result['min_requests_per_cycle']},"
        f" naive {result['naive_requests_per_cycle']:g}),"
        f" p50 {result['cycle_ms_p50']} ms, p99 {result['cycle_ms_p99']} ms"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
