"""The safety invariants, as data: each a rule, the commands it applies to, and its check.

A check gets the command and the facts the supervisor gathered for it (device reports and its
own ledger) and says why the command breaks the rule, or None. Unknown is never safe and 0
means 0. docs/architecture.md's table is generated from `INVARIANTS` (`table`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from controller.safety.commands import (
    ChargerEnable,
    ChargerLimit,
    Command,
    Fact,
    Facts,
    Outputs,
    RobotMotion,
    motions,
)

LIMIT_TOLERANCE_A = 0.05  # a register's resolution (0.1 A) read back
VERIFIED_WITHIN_S = 5.0  # an enable must follow its limit's read-back this closely
CHARGER_OFF_A = 2.0  # below this, with its enable cleared, a charger is off (a handover may go)


@dataclass(frozen=True, slots=True)
class Invariant:
    """A rule every command of its kinds must keep; `check` says why it does not (or None)."""

    name: str
    rule: str
    kinds: tuple[type, ...]
    check: Callable[[Command, Facts], str | None]


def _requires(
    facts_needed: Mapping[str, tuple[str, ...]],
) -> Callable[[Command, Facts], str | None]:
    """A motion invariant: for each motion it names, the facts that must be true."""

    def check(cmd: Command, facts: Facts) -> str | None:
        failing = sorted(
            {
                name
                for motion in motions(cmd) & facts_needed.keys()
                for name in facts_needed[motion]
                if facts.get(name) is not True
            }
        )
        if not failing:
            return None
        shown = [f"{n} unknown" if facts.get(n) is None else f"{n} false" for n in failing]
        return ", ".join(shown)

    return check


def amps(value: Fact) -> float | None:
    """A fact as a finite number (amps, volts), or None (unknown, which is never safe)."""
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _fresh(cmd: Command, facts: Facts) -> str | None:
    if isinstance(cmd, ChargerEnable) and not cmd.on:
        return None
    return None if facts.get("data_fresh") is True else f"slot data {facts.get('stale_reason')}"


def _within_limits(cmd: Command, facts: Facts) -> str | None:
    allowed = amps(facts.get("allowed_a")) or 0.0
    if isinstance(cmd, ChargerLimit):
        if not (math.isfinite(cmd.amps) and cmd.amps >= 0):
            return f"a limit of {cmd.amps} A"
        if cmd.amps > allowed + LIMIT_TOLERANCE_A:
            return f"{cmd.amps:g} A above the {allowed:g} A allowed ({caps(facts)})"
        return None
    if isinstance(cmd, ChargerEnable) and cmd.on:
        if allowed <= 0:
            return f"no current allowed ({caps(facts)})"
        limit = amps(facts.get("limit_a"))
        if limit is not None and limit > allowed + LIMIT_TOLERANCE_A:
            return f"its limit {limit:g} A is above the {allowed:g} A allowed ({caps(facts)})"
    return None


def caps(facts: Facts) -> str:
    """The limits a charger is judged against, in words (for a refusal's message)."""
    bms = amps(facts.get("bms_current_max_a"))
    volts = amps(facts.get("bms_voltage_max_v"))
    alloc = facts.get("allocation_a")
    return (
        f"BMS {'unknown' if bms is None else f'{bms:g} A'}"
        + ("" if volts is not None and volts > 0 else f" and {volts or 'no'} V")
        + f", charger {facts.get('charger_max_a')} A"
        + ("" if alloc is None else f", allocation {alloc} A")
    )


def _pack_present(cmd: Command, facts: Facts) -> str | None:
    if isinstance(cmd, ChargerEnable) and cmd.on and facts.get("pack_present") is not True:
        return "no pack reported in the slot"
    return None


def _no_handover(cmd: Command, facts: Facts) -> str | None:
    if isinstance(cmd, ChargerEnable) and cmd.on and facts.get("handover") is not False:
        return "the swap has claimed the slot for a handover"
    return None


def _limit_verified(cmd: Command, facts: Facts) -> str | None:
    if isinstance(cmd, ChargerEnable) and cmd.on and facts.get("limit_a") is None:
        return f"its current limit was not written and read back within {VERIFIED_WITHIN_S:g} s"
    return None


def _min_off(cmd: Command, facts: Facts) -> str | None:
    if not (isinstance(cmd, ChargerEnable) and cmd.on) or facts.get("on") is True:
        return None
    off_for, minimum = amps(facts.get("off_for_s")), amps(facts.get("min_off_s")) or 0.0
    if off_for is None or off_for >= minimum:
        return None
    return f"switched off {off_for:.1f} s ago; its contactor's minimum off-time is {minimum:g} s"


PEOPLE = ("estop_ok", "light_curtain_clear", "plc_ok")
VEHICLE = ("vehicle_present", "vehicle_in_position", "vehicle_hv_off", "doors_closed",
           "brake_gear_ok")  # fmt: skip
ANY_MOTION = ("lift_raise", "lift_lower", "gate_open", "signal_go", "robot")

INVARIANTS: tuple[Invariant, ...] = (
    Invariant(
        "charger_data_fresh",
        "a charger is switched on or given a limit only on fresh data (a reading younger than"
        " its stale limit, its heartbeat alive)",
        (ChargerLimit, ChargerEnable),
        _fresh,
    ),
    Invariant(
        "pack_present",
        "a charger is switched on only with a pack reported in its slot",
        (ChargerEnable,),
        _pack_present,
    ),
    Invariant(
        "current_within_limits",
        "a current limit is never above min(the pack's BMS limit, the charger's maximum, the"
        " power allocation); an unknown BMS limit counts as 0 and 0 means 0 (a BMS voltage"
        " limit of 0 or unknown too): no switch-on, and a charger that is on is switched off",
        (ChargerLimit, ChargerEnable),
        _within_limits,
    ),
    Invariant(
        "no_charging_during_handover",
        "a charger is not switched on while the swap hands a pack over at its slot (the robot"
        " working there, or about to)",
        (ChargerEnable,),
        _no_handover,
    ),
    Invariant(
        "limit_verified_before_enable",
        f"a charger is switched on only after its limit was written and read back (within"
        f" {VERIFIED_WITHIN_S:g} s)",
        (ChargerEnable,),
        _limit_verified,
    ),
    Invariant(
        "min_off_time",
        "a charger is switched on only once it has been off for `charging.min_off_s`",
        (ChargerEnable,),
        _min_off,
    ),
    Invariant(
        "people_safe",
        "nothing moves unless the E-stop chain is closed, the light curtain clear and the PLC"
        " healthy, on fresh station I/O",
        (Outputs, RobotMotion),
        _requires(dict.fromkeys(ANY_MOTION, PEOPLE)),
    ),
    Invariant(
        "vehicle_secured_before_lift",
        "the lift raises only a vehicle in position, high voltage off, doors closed, brake and"
        " gear ok, with the gate closed and the robot parked clear",
        (Outputs,),
        _requires({"lift_raise": (*VEHICLE, "gate_closed", "robot_clear", "lift_lower_off")}),
    ),
    Invariant(
        "locked_pack_before_lowering",
        "the lift lowers only a vehicle holding a verified, locked pack, with the robot clear",
        (Outputs,),
        _requires({"lift_lower": ("pack_locked", "robot_clear", "lift_raise_off")}),
    ),
    Invariant(
        "locked_pack_before_release",
        "the green light (drive out) only for a vehicle with a locked pack on the lowered lift;"
        " the gate opens only with the lift down",
        (Outputs,),
        _requires({"signal_go": ("pack_locked", "lift_down"), "gate_open": ("lift_down",)}),
    ),
    Invariant(
        "lifted_vehicle_for_robot",
        "the robot works under the bay only with the lift up and the vehicle secured on it",
        (RobotMotion,),
        _requires({"robot_under_vehicle": (*VEHICLE, "lift_up")}),
    ),
    Invariant(
        "charger_off_for_handover",
        "a pack is stored in or fetched from a slot only while its charger is off (enable"
        f" cleared, under {CHARGER_OFF_A:g} A) on fresh data",
        (RobotMotion,),
        _requires({"robot_handover": ("slot_charger_off",)}),
    ),
)
BY_NAME = {i.name: i for i in INVARIANTS}


def table() -> str:
    """The invariants as Markdown (docs/architecture.md is generated from it)."""
    kinds = {ChargerLimit: "charger limit", ChargerEnable: "charger on", Outputs: "outputs",
             RobotMotion: "robot"}  # fmt: skip
    rows = ["| invariant | commands | rule |", "|---|---|---|"]
    rows += [
        f"| `{i.name}` | {', '.join(kinds[k] for k in i.kinds)} | {i.rule} |" for i in INVARIANTS
    ]
    return "\n".join(rows)
