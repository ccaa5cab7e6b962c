"""Swap sequencer overhead and swap throughput, the simulated station in a child process.

The daemon runs in this process against a simulated station (rack over Modbus TCP, robot on a
pty, PLC over Modbus TCP) running in a child process with mechanical time scaled to near zero,
so what remains is the controller, the protocols and the polling. Vehicles queue at the bay:
the next drives in as soon as the last has left.

- `step_overhead_ms_p50` / `_p99`: the controller's own time from the device event that ends
  a step (a robot DONE, a station I/O poll showing the lift at its end) to the next command
  it sends (journal write-ahead included);
- `swaps_per_minute`: completed swaps per minute of wall clock (bounded by the poll periods).

    .venv/bin/python bench/swap.py [--swaps 30]

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

if TYPE_CHECKING:
    from controller.swap.sequencer import Sequencer

SPEED = 10_000.0
SLOTS = 12


async def serve(workdir: Path) -> None:
    """Child process: the simulated station; vehicles queue at the bay."""
    from simstation.charger import SimPack
    from simstation.station import SimRackSpec, SimStation

    packs = {slot: SimPack(f"PK-{slot:03d}", soc=95.0) for slot in range(1, SLOTS - 3)}
    spec = SimRackSpec("r1", list(range(1, SLOTS + 1)), packs=packs, poll_period_s=0.05)
    sim = SimStation(workdir, [spec], speed=SPEED, robot=True, plc=True)
    await sim.start()
    toml = sim.controller_toml(
        station_id="bench",
        mqtt_host="127.0.0.1",
        mqtt_port=int(sys.argv[sys.argv.index("--mqtt-port") + 1]),
        storage=workdir / "state",
        sections='[swap]\nmin_dispense_soc = 80\n[logging]\nlevel = "warning"\n',
    )
    (workdir / "station.toml").write_text(toml)
    print("ready", flush=True)
    assert sim.plc is not None
    n = 0
    while True:
        if sim.plc.vehicle is None:
            # The next car drives in a moment after the last one left (the controller sees
            # the bay empty; it would also notice a different vehicle id).
            await asyncio.sleep(0.1)
            n += 1
            sim.arrive(f"EV-{n}", serial=f"OLD-{n:05d}", soc=95.0)
        await asyncio.sleep(0.005)


async def until(
    predicate: Callable[[], bool], what: str | Callable[[], str], timeout_s: float = 30.0
) -> None:
    """Poll `predicate` every 2 ms; exit with `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"stuck waiting for {what() if callable(what) else what}")
        await asyncio.sleep(0.002)


def stuck(seq: Sequencer, n: int) -> str:
    """What swap `n` is stuck on."""
    return f"swap {n}: {seq.ctx.state}, blocked by {seq.blocking}"


def pct(values: list[float], q: float) -> float:
    """The q-quantile of values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(config_path: Path, swaps: int) -> dict[str, object]:
    """Run `swaps` swaps back to back; the sequencer's overheads and the rate."""
    from controller.config.loader import load_config
    from controller.errors import RefusedError
    from controller.runtime.daemon import Daemon

    daemon = Daemon(load_config(config_path, environ={}))
    task = asyncio.create_task(daemon.run())
    try:
        await until(lambda: daemon.station is not None, "the daemon to start")
        assert daemon.station is not None
        seq = daemon.station.sequencer
        assert seq is not None
        await until(lambda: not seq.blocking and bool(seq.packs_ready().get("STD75")), "ready")
        started = time.monotonic()
        rejected: list[str] = []
        for n in range(1, swaps + 1):
            await until(lambda: bool(seq.packs_ready().get("STD75")), "a charged pack")
            deadline = time.monotonic() + 30.0
            while True:  # a back end asks again when the station says why not
                try:
                    await seq.request("start_swap", vehicle_id=f"EV-{n}", pack_type="STD75")
                    break
                except RefusedError as exc:
                    rejected.append(str(exc))
                    if time.monotonic() > deadline:
                        raise SystemExit(f"swap {n} refused for 30 s: {exc}") from exc
                    await asyncio.sleep(0.05)
            await until(lambda: not seq.ctx.active, functools.partial(stuck, seq, n))
        elapsed = time.monotonic() - started
        overheads = list(seq.swap.overheads_ms)
        return {
            "swaps": swaps,
            "steps": len(overheads),
            "step_overhead_ms_p50": round(statistics.median(overheads), 3),
            "step_overhead_ms_p99": round(pct(overheads, 0.99), 3),
            "step_overhead_ms_max": round(max(overheads), 3),
            "swap_s_mean": round(elapsed / swaps, 3),
            "swaps_per_minute": round(swaps / elapsed * 60, 1),
            "start_rejections": len(rejected),
            "rejected_because": sorted(set(rejected))[:3],
        }
    finally:
        daemon.request_stop("bench done")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)


def main() -> None:
    """Run the benchmark, or (with --serve) the simulated station."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--swaps", type=int, default=30)
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--mqtt-port", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        asyncio.run(serve(args.serve))
        return
    logging.basicConfig(level=logging.WARNING)
    from simstation.broker import Mosquitto

    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp) / "broker") as broker:
        workdir = Path(tmp)
        child = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(workdir), "--mqtt-port", str(broker.port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None
            if child.stdout.readline().strip() != "ready":
                raise SystemExit("the simulated station did not start")
            from controller.runtime import eventloop  # the daemon's loop

            result = eventloop.run(measure(workdir / "station.toml", args.swaps))
        finally:
            child.terminate()
            child.wait(10)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
