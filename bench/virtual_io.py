"""The floor of a simulated second: one station-I/O poll on virtual time, both ends in-process.

`swapctl simulate` on virtual time runs the daemon's pymodbus clients and the simulated
devices' pymodbus servers in one process. The station I/O is polled every 100 ms (three
requests: discrete inputs, coils, registers), so ten polls a simulated second are a floor
under what the whole simulation can cost. This measures one poll (`StationIoDriver.read()`
against `SimPlc`, the daemon's own driver and the simulator's own PLC) on `VirtualLoop`.

    .venv/bin/python bench/virtual_io.py [--polls 3000]

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from drivers import clock
from drivers.modbus.ioprofile import load_io_profile
from drivers.modbus.link import LinkParams, ModbusLink, TcpParams
from drivers.stationio import StationIoDriver
from simstation.plc import SimPlc
from simstation.simulate import VIRTUAL, modbus_requests_on_the_loop
from simstation.vloop import VirtualClock, VirtualLoop

REQUESTS_PER_POLL = 3


async def _measure(polls: int) -> float:
    profile = load_io_profile(REPO / "config" / "profiles" / "simplc.toml")
    plc = SimPlc(profile, tick_s=VIRTUAL["plc_tick_s"])
    port = await plc.start_tcp()
    params = LinkParams(
        "station I/O", TcpParams("127.0.0.1", port), timeout_min_s=0.05, timeout_max_s=0.05
    )
    driver = StationIoDriver(profile, ModbusLink(params), 1)
    try:
        await driver.read()  # connected, warm
        cpu0 = time.process_time()
        for _ in range(polls):
            await driver.read()
        return time.process_time() - cpu0
    finally:
        await driver.link.close()
        await plc.stop()


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polls", type=int, default=3000)
    args = parser.parse_args()
    loop = VirtualLoop()
    try:
        with clock.use(VirtualClock(loop, 0.0)), modbus_requests_on_the_loop():
            cpu = loop.run_until_complete(_measure(args.polls))
    finally:
        loop.close()
    per_poll_us = 1e6 * cpu / args.polls
    polls_per_s = 1.0 / VIRTUAL["io_poll_s"]
    print(
        json.dumps(
            {
                "polls": args.polls,
                "cpu_us_per_poll": round(per_poll_us, 1),
                "cpu_us_per_request": round(per_poll_us / REQUESTS_PER_POLL, 1),
                # The station I/O alone, per simulated second and per simulated day.
                "io_ms_per_sim_s": round(per_poll_us * polls_per_s / 1000, 2),
                "io_s_per_sim_day": round(per_poll_us * polls_per_s * 86400 / 1e6, 1),
                "load": [round(x, 2) for x in os.getloadavg()],
            }
        )
    )


if __name__ == "__main__":
    main()
