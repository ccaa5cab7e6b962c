"""The safety supervisor's own time per command: judging one command to machinery.

Every command to a charger, an output or the robot passes `SafetySupervisor.permit` before it
goes out (controller/safety/supervisor.py). This times `permit` alone, in-process, for the kinds a
station sends: a charger's limit and its switch-on (a 40-slot book behind it), the lift's
outputs and a robot motion (fresh station I/O behind them), allowed and refused. No I/O: the
figure is what the gate adds to a command, not the command's round trip.

    .venv/bin/python bench/safety.py [--commands 20000]

The last line is one JSON object (`permit_us_p50`, `permit_us_p99` over every command, and
per kind); the target is p99 <= 200 us.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from types import MappingProxyType

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from controller.plant.slots import RackInfo, SlotBook
from controller.safety.commands import ChargerEnable, ChargerLimit, Command, Outputs, RobotMotion
from controller.safety.supervisor import Plant, SafetySupervisor
from drivers.rack import RackSnapshot, SlotReading
from drivers.robot.protocol import MsgType, Target
from drivers.stationio import IoReading, IoSnapshot

SLOTS = 40


def station() -> SafetySupervisor:
    """A 40-slot station mid-day, with fresh station I/O and a vehicle lifted."""
    now = time.monotonic()
    book = SlotBook([RackInfo("r", tuple(range(1, SLOTS + 1)), 2.0, 5.0)])
    readings = {
        s: SlotReading(
            slot=s,
            at=now,
            wall=time.time(),
            status="charging",
            pack_present=s % 10 != 0,
            pack_serial=f"PK-{s}",
            pack_type="STD75",
            soc=50.0,
            soh=95.0,
            voltage=380.0,
            current=100.0,
            power_w=38_000.0,
            temp_max=30.0,
            temp_min=25.0,
            fault_code=0,
            energy_wh=0.0,
            charge_enable=s % 2 == 0,
            current_limit=100.0,
            bms_voltage_max=403.2,
            bms_current_max=0.0 if s % 7 == 0 else 200.0,
            heartbeat=1,
            heartbeat_since=now,
        )
        for s in range(1, SLOTS + 1)
    }
    book.update(RackSnapshot("r", now, True, readings, 0))
    inputs = dict.fromkeys(
        ("vehicle_present", "vehicle_in_position", "vehicle_hv_off", "doors_closed",
         "brake_gear_ok", "lift_up", "estop_ok", "light_curtain_clear", "plc_ok"), True,
    )  # fmt: skip
    inputs.update(lift_down=False, gate_open=False)
    coils = dict.fromkeys(("lift_raise", "lift_lower", "gate_open", "signal_go"), False)
    io = IoSnapshot(
        now, True, IoReading(now, 0.0, MappingProxyType(inputs), MappingProxyType(coils), "EV-1",
                             1, now), 0,
    )  # fmt: skip
    plant = Plant(
        book, 150.0, 30.0, io_stale_after_s=1e9, io_heartbeat_timeout_s=1e9, io=lambda: io,
        robot_clear=lambda: True, pack_locked=lambda: True, allocation=lambda _s: 120.0,
    )  # fmt: skip
    safety = SafetySupervisor(plant, clock=lambda: now - 100.0)  # started a while ago
    safety.clock = lambda: now - 0.5
    for s in range(1, SLOTS + 1):  # limits verified a moment ago, as before a switch-on
        safety.applied(ChargerLimit(s, 100.0), read_back=100.0)
    safety.clock = lambda: now
    return safety


KINDS: dict[str, list[Command]] = {
    "charger_limit": [ChargerLimit(s, 100.0 + s) for s in range(1, SLOTS + 1)],
    "charger_on": [ChargerEnable(s, on=True) for s in range(1, SLOTS + 1)],
    "outputs": [Outputs(frozenset({"lift_lower"})), Outputs(frozenset({"lift_raise"}))],
    "robot": [RobotMotion(MsgType.REMOVE), RobotMotion(MsgType.MOVE, Target.BAY),
              RobotMotion(MsgType.STORE, None, 3), RobotMotion(MsgType.FETCH, None, 7)],
}  # fmt: skip


def main() -> None:
    """Time `permit` for every kind of command; print the figures, JSON last."""
    logging.disable(logging.ERROR)  # a refusal is logged once per run of them: not timed here
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=20_000)
    args = parser.parse_args()
    safety = station()
    gc.collect()
    gc.freeze()  # as the daemon does after start-up
    out: dict[str, float | int] = {}
    every: list[float] = []
    refused = 0
    per_kind = args.commands // len(KINDS)
    for kind, commands in KINDS.items():
        took: list[float] = []
        for i in range(per_kind):
            cmd = commands[i % len(commands)]
            t0 = time.perf_counter()
            verdict = safety.permit(cmd)
            took.append((time.perf_counter() - t0) * 1e6)
            refused += not verdict.allowed
        took.sort()
        every += took
        out[f"{kind}_us_p50"] = round(statistics.median(took), 1)
        out[f"{kind}_us_p99"] = round(took[int(0.99 * (len(took) - 1))], 1)
        print(f"{kind:14} p50 {out[f'{kind}_us_p50']:6.1f} us  p99 {out[f'{kind}_us_p99']:6.1f} us")
    every.sort()
    out["permit_us_p50"] = round(statistics.median(every), 1)
    out["permit_us_p99"] = round(every[int(0.99 * (len(every) - 1))], 1)
    out["commands"] = len(every)
    out["refused"] = refused
    print(f"every command  p50 {out['permit_us_p50']:6.1f} us  p99 {out['permit_us_p99']:6.1f} us"
          f"  ({refused} of {len(every)} refused)")  # fmt: skip
    print(json.dumps(out))


if __name__ == "__main__":
    main()
