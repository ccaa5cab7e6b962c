"""Robot command round trip over a real pseudo-terminal, the simulated robot in a child process.

A round trip is one `RobotLink.command()`: frame out, ACK and DONE (or REPORT) back, decoded.
Mechanical time is zero (the simulated robot moves instantly), so this is the protocol and the
software alone.

    .venv/bin/python bench/robot.py [--commands 2000]

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from controller.runtime import eventloop
from drivers.robot.link import RobotLink, RobotParams
from drivers.robot.protocol import MoveArgs, MsgType, Target


async def serve(path: Path) -> None:
    """Child process: the simulated robot on a pty linked at `path`."""
    from simstation.robot import SimRobot, Timing

    class Rack:
        def insert_pack(self, slot: int, pack: object) -> None: ...
        def remove_pack(self, slot: int) -> object: ...
        def pack_in(self, slot: int) -> None: ...

    robot = SimRobot(racks={1: Rack()}, timing=Timing(speed_m_s=1e9, settle_s=0.0))  # type: ignore[dict-item]
    await robot.start(path)
    print("ready", flush=True)
    await asyncio.Event().wait()


def pct(values: list[float], q: float) -> float:
    """The q-quantile of values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(path: Path, commands: int) -> dict[str, float | int]:
    """Round trips of MOVE (ACK + DONE) and STATUS (ACK + REPORT)."""
    timeouts = dict.fromkeys(("move", "status", "sync"), 5.0)
    link = RobotLink(RobotParams(str(path), ack_timeout_s=0.1, timeouts=timeouts))
    runner = asyncio.create_task(link.run())
    try:
        async with asyncio.timeout(10):
            await link.ready.wait()
        for _ in range(50):  # warm up
            await link.command(MsgType.STATUS)
        moves: list[float] = []
        targets = [MoveArgs(Target.BAY), MoveArgs(Target.SLOT, 1), MoveArgs(Target.HOME)]
        for i in range(commands):
            started = time.perf_counter()
            await link.command(MsgType.MOVE, targets[i % 3])
            moves.append((time.perf_counter() - started) * 1000)
        status: list[float] = []
        for _ in range(commands // 2):
            started = time.perf_counter()
            await link.command(MsgType.STATUS)
            status.append((time.perf_counter() - started) * 1000)
        return {
            "commands": commands,
            "rtt_ms_p50": round(statistics.median(moves), 3),
            "rtt_ms_p99": round(pct(moves, 0.99), 3),
            "rtt_ms_max": round(max(moves), 3),
            "status_rtt_ms_p50": round(statistics.median(status), 3),
            "status_rtt_ms_p99": round(pct(status, 0.99), 3),
            "retransmits": link.stats.retransmits,
        }
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        await link.close()


def main() -> int:
    """Run the benchmark; print the JSON line last."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--commands", type=int, default=2000)
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "robot"
        child = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(path)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert child.stdout is not None
            child.stdout.readline()
            result = eventloop.run(measure(path, args.commands))
        finally:
            child.terminate()
            child.wait(timeout=10)
    print(
        f"{result['commands']} MOVE commands over a pty: p50 {result['rtt_ms_p50']} ms,"
        f" p99 {result['rtt_ms_p99']} ms"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
