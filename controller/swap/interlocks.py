"""Interlocks as data: which conditions must hold for which phase of a swap.

A condition is a station input that must read true (`estop_ok`, `doors_closed`, ...) or a fact
the controller itself knows (`pack_locked`: the vehicle holds a pack whose lock was verified;
`robot_clear`: the robot is parked away from the bay). Unknown inputs (station I/O stale or
offline) count as false: unknown is not safe.

Before a motion starts, failing conditions are blocking causes (the swap waits, and says why).
While it runs, a condition turning false stops the motion and faults the swap.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from controller.swap.phase import Phase


@dataclass(frozen=True, slots=True)
class Condition:
    """One thing that must be true, and what to say when it is not."""

    name: str
    message: str


def _c(name: str, message: str) -> Condition:
    return Condition(name, message)


ESTOP = _c("estop_ok", "E-stop pressed")
CURTAIN = _c("light_curtain_clear", "light curtain interrupted (someone in the bay)")
PRESENT = _c("vehicle_present", "no vehicle in the bay")
IN_POSITION = _c("vehicle_in_position", "vehicle not in position")
HV_OFF = _c("vehicle_hv_off", "vehicle high voltage not off")
DOORS = _c("doors_closed", "a vehicle door is open")
BRAKE = _c("brake_gear_ok", "brake or gear interlock not ok")
GATE_SHUT = _c("gate_closed", "bay gate open")
LIFT_UP = _c("lift_up", "lift not up")
LIFT_DOWN = _c("lift_down", "lift not down")
PACK_LOCKED = _c("pack_locked", "the vehicle has no verified, locked pack")
ROBOT_CLEAR = _c("robot_clear", "the robot is not parked clear of the bay")
IO_OK = _c("plc_ok", "station PLC not healthy")

VEHICLE_SAFE = (IN_POSITION, HV_OFF, DOORS, BRAKE)
PEOPLE_SAFE = (ESTOP, CURTAIN, IO_OK)

_UNDER_LIFTED = (*PEOPLE_SAFE, PRESENT, *VEHICLE_SAFE, LIFT_UP)

# Phase -> what must hold while it runs (and before its motion starts).
INTERLOCKS: Mapping[Phase, tuple[Condition, ...]] = {
    Phase.LIFTING: (*PEOPLE_SAFE, PRESENT, *VEHICLE_SAFE, GATE_SHUT),
    # Door opened, gear shifted or brake pressed anywhere while lifted aborts the swap.
    Phase.REMOVING: _UNDER_LIFTED,
    Phase.STORING: _UNDER_LIFTED,
    Phase.FETCHING: _UNDER_LIFTED,
    Phase.INSTALLING: _UNDER_LIFTED,
    Phase.LOCKING: _UNDER_LIFTED,
    # Never lowered without a verified locked pack, nor onto the robot.
    Phase.LOWERING: (*PEOPLE_SAFE, PACK_LOCKED, ROBOT_CLEAR),
    Phase.RELEASING: (*PEOPLE_SAFE, PACK_LOCKED, LIFT_DOWN),
    # While aborting, the robot works under the vehicle, like installing.
    Phase.ABORTING: _UNDER_LIFTED,
}


def failing(phase: Phase, facts: Mapping[str, bool | None]) -> list[Condition]:
    """The conditions of `phase` that do not hold (None, unknown, counts as not holding)."""
    return [c for c in INTERLOCKS.get(phase, ()) if facts.get(c.name) is not True]


def table() -> str:
    """The interlock table as Markdown (docs/swap-machine.md is generated from it)."""
    names: list[str] = []
    for conds in INTERLOCKS.values():
        names += [c.name for c in conds if c.name not in names]
    rows = ["| condition | " + " | ".join(INTERLOCKS) + " |", "|---|" + "---|" * len(INTERLOCKS)]
    for name in names:
        marks = ["x" if any(c.name == name for c in conds) else "" for conds in INTERLOCKS.values()]
        rows.append(f"| `{name}` | " + " | ".join(marks) + " |")
    return "\n".join(rows)
