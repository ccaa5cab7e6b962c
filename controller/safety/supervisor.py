"""The safety supervisor: the one gate every command to machinery passes.

A charger's current limit and its enable, the lift, gate and green-light outputs, a robot
motion: each goes out through `SafetySupervisor`, which judges it against the invariants below
(`INVARIANTS`, data) on the facts the devices report (slot readings, station I/O, the robot's
status) and on its own ledger of what it let through, never on how the controller came to want
it. A command that breaks an invariant is not sent: the refusal is counted, raised as an alarm
named after the invariant, journalled as an event and in the motion log, and the caller gets
`SafetyRefusedError` saying why. It is the second line: the controller's own checks
(supervision, interlocks, the allocator) stay first and should never be caught here.

Stopping is never refused: a charger switched off, an output cleared and the robot's STOP are
the safe state. The supervisor also watches (`must_be_off`): a charger that may be on while an
invariant no longer holds (its data unknown beyond its timeout where its rack still answers,
a BMS limit of 0 or unknown, no pack, a limit above what is allowed) is switched off, whatever
the controller wants. Unknown is never safe, and 0 means 0.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from controller.charging.alarms import Cause, Severity, slot_scope
from controller.charging.slots import SlotBook
from drivers.robot.protocol import MsgType, Target
from drivers.stationio import IoSnapshot

_log = logging.getLogger(__name__)

Fact = bool | float | str | None
Facts = dict[str, Fact]

LIMIT_TOLERANCE_A = 0.05  # a register's resolution (0.1 A) read back
VERIFIED_WITHIN_S = 5.0  # an enable must follow its limit's read-back this closely
CHARGER_OFF_A = 2.0  # below this, with its enable cleared, a charger is off (a handover may go)
REFUSAL_HOLD_S = 60.0  # a refusal alarm lasts this long after the last refusal ...
EVENT_EVERY_S = 10.0  # ... and a repeated refusal is journalled at most this often
STATION = "station"  # the alarm scope of refused motions


# --- commands ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChargerLimit:
    """Write a slot's charge current limit (A)."""

    slot: int
    amps: float

    def __str__(self) -> str:
        return f"slot {self.slot} current limit {self.amps:g} A"


@dataclass(frozen=True, slots=True)
class ChargerEnable:
    """Switch a slot's charger on or off."""

    slot: int
    on: bool

    def __str__(self) -> str:
        return f"slot {self.slot} charge {'on' if self.on else 'off'}"


@dataclass(frozen=True, slots=True)
class Outputs:
    """Set the station's outputs (lift, gate, green light): names set on and cleared."""

    on: frozenset[str]
    off: frozenset[str] = frozenset()

    def __str__(self) -> str:
        parts = [f"{n}=on" for n in sorted(self.on)] + [f"{n}=off" for n in sorted(self.off)]
        return "outputs " + ", ".join(parts)


@dataclass(frozen=True, slots=True)
class RobotMotion:
    """A robot command; `target` and `slot` where it goes or works."""

    kind: MsgType
    target: Target | None = None
    slot: int | None = None

    def __str__(self) -> str:
        where = "" if self.target is None else f" to {self.target.name.lower()}"
        return f"robot {self.kind.name}{where}" + ("" if self.slot is None else f" {self.slot}")


Command = ChargerLimit | ChargerEnable | Outputs | RobotMotion

# Robot commands that move nothing (STOP stops: it is the safe state).
NO_MOTION = frozenset({MsgType.STOP, MsgType.RESET, MsgType.STATUS, MsgType.SYNC})
UNDER_VEHICLE = frozenset({MsgType.UNLOCK, MsgType.REMOVE, MsgType.INSTALL, MsgType.LOCK})


def motions(cmd: Command) -> frozenset[str]:
    """The motions a command starts, as the motion invariants name them."""
    if isinstance(cmd, Outputs):
        return cmd.on
    if isinstance(cmd, RobotMotion) and cmd.kind not in NO_MOTION:
        under = cmd.kind in UNDER_VEHICLE or (cmd.kind is MsgType.MOVE and cmd.target is Target.BAY)
        handover = cmd.kind in {MsgType.STORE, MsgType.FETCH}
        return frozenset(
            {"robot"} | ({"robot_under_vehicle"} if under else set())
            | ({"robot_handover"} if handover else set())
        )  # fmt: skip
    return frozenset()


# --- the invariants ----------------------------------------------------------------------------


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


def _amps(value: Fact) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _fresh(cmd: Command, facts: Facts) -> str | None:
    if isinstance(cmd, ChargerEnable) and not cmd.on:
        return None
    return None if facts.get("data_fresh") is True else f"slot data {facts.get('stale_reason')}"


def _within_limits(cmd: Command, facts: Facts) -> str | None:
    allowed = _amps(facts.get("allowed_a")) or 0.0
    if isinstance(cmd, ChargerLimit):
        if not (math.isfinite(cmd.amps) and cmd.amps >= 0):
            return f"a limit of {cmd.amps} A"
        if cmd.amps > allowed + LIMIT_TOLERANCE_A:
            return f"{cmd.amps:g} A above the {allowed:g} A allowed ({_caps(facts)})"
        return None
    if isinstance(cmd, ChargerEnable) and cmd.on:
        if allowed <= 0:
            return f"no current allowed ({_caps(facts)})"
        limit = _amps(facts.get("limit_a"))
        if limit is not None and limit > allowed + LIMIT_TOLERANCE_A:
            return f"its limit {limit:g} A is above the {allowed:g} A allowed ({_caps(facts)})"
    return None


def _caps(facts: Facts) -> str:
    bms = _amps(facts.get("bms_current_max_a"))
    volts = _amps(facts.get("bms_voltage_max_v"))
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
    off_for, minimum = _amps(facts.get("off_for_s")), _amps(facts.get("min_off_s")) or 0.0
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


@dataclass(frozen=True, slots=True)
class Verdict:
    """The supervisor's judgement of one command, with the facts it was judged on."""

    command: Command
    facts: Facts
    refused: tuple[tuple[str, str], ...]  # (invariant, why not)
    at: float  # the supervisor's clock

    @property
    def allowed(self) -> bool:
        """The command may be sent."""
        return not self.refused

    @property
    def why(self) -> str:
        """The refusal, in words."""
        return f"refused {self.command}: " + "; ".join(f"{n}: {w}" for n, w in self.refused)


@dataclass
class _Episode:
    """Refusals of one invariant for one scope, since the first of a run."""

    message: str
    first: float
    last: float
    count: int = 1
    journalled: float = -math.inf
    cleared: bool = False


@dataclass(frozen=True, slots=True)
class Plant:
    """Where the supervisor reads the facts it judges on: the devices' latest reports."""

    book: SlotBook
    charger_max_a: float
    min_off_s: float
    io_stale_after_s: float = 0.3
    io_heartbeat_timeout_s: float = 1.0
    io: Callable[[], IoSnapshot | None] = lambda: None
    robot_clear: Callable[[], bool | None] = lambda: None
    pack_locked: Callable[[], bool | None] = lambda: None
    # The power allocation of a slot in A; None when no grid limit bounds it.
    allocation: Callable[[int], float | None] = lambda _slot: None
    # The swap has claimed the slot for a handover (a pack about to be stored or fetched
    # there, or just fetched and the slot not yet seen empty).
    handover: Callable[[int], bool | None] = lambda _slot: False


@dataclass
class _Ledger:
    """What the supervisor let through to one charger, and what its readings showed."""

    on: bool = False
    since: float = 0.0  # when `on` began (a verified write, or a reading that showed it)
    limit_a: float | None = None  # the last limit written and read back
    limit_at: float = -math.inf
    switching_on: bool = False  # an enable let through, not yet read back (or failed)


class SafetySupervisor:
    """Judges commands against `INVARIANTS`; keeps the ledger, the counts and the refusals."""

    def __init__(self, plant: Plant, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.plant = plant
        self.clock = clock
        self.started = clock()
        self.counts: Counter[str] = Counter()  # refusals by invariant
        self.hold_s = REFUSAL_HOLD_S  # a refusal alarm lasts this long after the last refusal
        self.checked = 0
        self._ledger: dict[int, _Ledger] = {}
        self._episodes: dict[tuple[str, str], _Episode] = {}
        self._pending: list[tuple[str, dict[str, object]]] = []  # events to journal

    # --- judging -------------------------------------------------------------------------------

    def judge(self, cmd: Command) -> Verdict:
        """The verdict on `cmd` now, with its facts; books nothing (`permit` does)."""
        now = self.clock()
        self.checked += 1
        if isinstance(cmd, (ChargerLimit, ChargerEnable)):
            self.observe(cmd.slot, now)  # the latest reading first: the ledger may lag it
            facts = self._charger_facts(cmd.slot, now)
        else:
            facts = self._motion_facts(cmd)
        if stopping(cmd):
            return Verdict(cmd, facts, (), now)  # the safe state is never refused
        refused = tuple(
            (inv.name, why)
            for inv in INVARIANTS
            if isinstance(cmd, inv.kinds) and (why := inv.check(cmd, facts)) is not None
        )
        return Verdict(cmd, facts, refused, now)

    def permit(self, cmd: Command) -> Verdict:
        """Judge `cmd` and book the verdict (a refusal: counted, alarmed, journalled)."""
        verdict = self.judge(cmd)
        scope = _scope(cmd)
        if verdict.allowed:
            if stopping(cmd):
                return verdict  # a stop proves nothing about what was refused
            for inv in INVARIANTS:  # what held for this command clears its refusals
                if isinstance(cmd, inv.kinds):
                    episode = self._episodes.get((scope, inv.name))
                    if episode is not None:
                        episode.cleared = True
            return verdict
        for name, why in verdict.refused:
            self._book(scope, name, f"refused {cmd}: {why}", verdict.at, verdict.facts)
        return verdict

    def sending(self, cmd: ChargerEnable) -> None:
        """An enable let through is on its way: until it is settled, the charger may be on."""
        if cmd.on:
            self._entry(cmd.slot).switching_on = True

    def failed(self, cmd: ChargerLimit | ChargerEnable) -> None:
        """A charger command went out and its outcome is unknown (no answer, not applied)."""
        if isinstance(cmd, ChargerEnable) and cmd.on:
            entry = self._entry(cmd.slot)
            entry.switching_on = False
            # It may have taken: from now on the charger counts as on until a reading says
            # otherwise (its off-time, if it is off, is counted from that reading).
            if not entry.on:
                entry.on, entry.since = True, self.clock()

    def overrule(self, scope: str, name: str, why: str, *, now: float) -> None:
        """The watch (`must_be_off`) stopped what the controller wanted on: booked as a refusal."""
        self._book(scope, name, f"switched off what the controller wanted on: {why}", now, {})

    def _book(self, scope: str, name: str, message: str, at: float, facts: Facts) -> None:
        self.counts[name] += 1
        key = (scope, name)
        episode = self._episodes.get(key)
        if episode is None or episode.cleared:
            episode = self._episodes[key] = _Episode(message, at, at)
            _log.error("safety: %s (%s)", message, name)
        else:
            episode.count += 1
            episode.last, episode.message = at, message
        if at - episode.journalled >= EVENT_EVERY_S:
            episode.journalled = at
            body = {"invariant": name, "scope": scope, "message": message,
                    "count": episode.count, "facts": facts}  # fmt: skip
            self._pending.append(("command_refused", body))

    def applied(self, cmd: ChargerLimit | ChargerEnable, *, read_back: float | bool) -> None:
        """A charger command went out and was read back: the ledger follows."""
        entry = self._entry(cmd.slot)
        now = self.clock()
        if isinstance(cmd, ChargerEnable):
            entry.switching_on = False
        if isinstance(cmd, ChargerLimit):
            entry.limit_a, entry.limit_at = float(read_back), now
        elif not read_back or not entry.on:
            # Every verified off starts the off-time anew (the contactor may just have opened,
            # whatever the ledger thought); an on, only when it was off.
            entry.on, entry.since = bool(read_back), now

    def observe(self, slot: int, now: float) -> None:
        """Follow a charger that switched itself on or off (a reading after our last write)."""
        r = self.plant.book.view(slot, now).reading
        entry = self._entry(slot)
        if (
            r is not None
            and r.charge_enable is not None
            and r.at > entry.since
            and r.charge_enable != entry.on
        ):
            entry.on, entry.since = r.charge_enable, r.at

    # --- the watch -----------------------------------------------------------------------------

    def must_be_off(self, slot: int, now: float) -> tuple[str, str] | None:
        """Why a charger that may be on must be switched off now (None: nothing requires it).

        Its data unknown beyond its timeout while it answers, no pack, or a BMS that allows
        no current (or is unknown).
        """
        view = self.plant.book.view(slot, now)
        r = view.reading
        if r is None or r.charge_enable is False:
            return None
        if view.stale:
            if view.answers:  # unknown beyond its timeout, yet the charger answers
                return "charger_data_fresh", f"slot data {view.stale_reason}: switched off"
            return None  # nothing can be written; the charger's own watchdog is the guard
        facts = self._charger_facts(slot, now)
        if r.pack_present is not True:
            return "pack_present", "on without a pack reported in the slot"
        bms, volts = _amps(facts["bms_current_max_a"]), _amps(facts["bms_voltage_max_v"])
        if bms is None or bms <= 0 or volts is None or volts <= 0:
            return "current_within_limits", f"on, but the BMS allows no charge ({_caps(facts)})"
        # A limit above what is allowed now (the BMS lowered its own, the power was shared
        # anew) is lowered by the controller, within the gate: no reason to cut the charge.
        return None

    def on_allowed_in(self, slot: int, now: float) -> float:
        """Seconds until the slot's charger may be switched on again (0: now)."""
        self.observe(slot, now)
        entry = self._entry(slot)
        if entry.on:
            return 0.0
        return max(0.0, self.plant.min_off_s - (now - entry.since))

    def on_since(self, slot: int) -> float | None:
        """When the slot's charger was switched on (None: it is off, as far as we know)."""
        entry = self._entry(slot)
        return entry.since if entry.on else None

    # --- reporting -------------------------------------------------------------------------------

    def causes(self, now: float) -> dict[str, dict[str, Cause]]:
        """Active refusal alarms by scope: until a command passes, or `REFUSAL_HOLD_S` after."""
        out: dict[str, dict[str, Cause]] = {}
        for (scope, name), episode in list(self._episodes.items()):
            if episode.cleared or now - episode.last > self.hold_s:
                del self._episodes[(scope, name)]
                continue
            count = f" ({episode.count} refusals)" if episode.count > 1 else ""
            out.setdefault(scope, {})[name] = Cause(Severity.CRITICAL, episode.message + count)
        return out

    def take_events(self) -> list[tuple[str, dict[str, object]]]:
        """Refusal events not yet journalled (the caller commits them)."""
        events, self._pending = self._pending, []
        return events

    # --- facts ---------------------------------------------------------------------------------

    def _entry(self, slot: int) -> _Ledger:
        entry = self._ledger.get(slot)
        if entry is None:
            # Not known: as if switched off when we started (a restart does not reset the
            # contactor's off-time: the daemon switched every charger off on its way out).
            entry = self._ledger[slot] = _Ledger(on=False, since=self.started)
        return entry

    def _charger_facts(self, slot: int, now: float) -> Facts:
        plant = self.plant
        view = plant.book.view(slot, now)
        r = view.fresh
        entry = self._entry(slot)
        bms = None if r is None else r.bms_current_max
        bms_v = None if r is None else r.bms_voltage_max
        alloc = plant.allocation(slot)
        caps = [bms if bms is not None else 0.0, plant.charger_max_a]
        if bms_v is None or bms_v <= 0:
            caps.append(0.0)  # no voltage limit from the BMS: nothing may be charged
        if alloc is not None:
            caps.append(alloc)
        verified = now - entry.limit_at <= VERIFIED_WITHIN_S
        return {
            "data_fresh": r is not None,
            "stale_reason": view.stale_reason,
            "pack_present": None if r is None else r.pack_present,
            "bms_current_max_a": bms,
            "bms_voltage_max_v": bms_v,
            "charger_max_a": plant.charger_max_a,
            "handover": plant.handover(slot),
            "allocation_a": alloc,
            "allowed_a": max(0.0, min(caps)),
            "limit_a": entry.limit_a if verified else None,
            "on": entry.on,
            "off_for_s": None if entry.on else round(now - entry.since, 3),
            "min_off_s": plant.min_off_s,
        }

    def _motion_facts(self, cmd: Command) -> Facts:
        plant = self.plant
        facts: Facts = dict.fromkeys((*PEOPLE, *VEHICLE, "lift_up", "lift_down", "gate_open"))
        snap = plant.io()
        reading = snap.reading if snap is not None else None
        now = self.clock()
        fresh = (
            snap is not None
            and reading is not None
            and snap.online  # a failed poll alone is not unknown: the data's age is
            and now - reading.at <= plant.io_stale_after_s
            and reading.at - reading.heartbeat_since <= plant.io_heartbeat_timeout_s
        )
        if fresh and reading is not None:
            facts.update({k: v for k, v in reading.inputs.items() if k in facts})
            coils = reading.coils
            facts["lift_raise_off"] = not coils.get("lift_raise", True) or (
                isinstance(cmd, Outputs) and "lift_raise" in cmd.off
            )
            facts["lift_lower_off"] = not coils.get("lift_lower", True) or (
                isinstance(cmd, Outputs) and "lift_lower" in cmd.off
            )
        else:
            facts["lift_raise_off"] = facts["lift_lower_off"] = None
        gate = facts["gate_open"]
        facts["gate_closed"] = None if gate is None else not gate
        facts["io_fresh"] = fresh
        facts["robot_clear"] = plant.robot_clear()
        facts["pack_locked"] = plant.pack_locked()
        if isinstance(cmd, Outputs):
            # Both lift outputs at once is never asked for: one of them is the other's "off".
            if "lift_raise" in cmd.on:
                facts["lift_lower_off"] = facts["lift_lower_off"] and "lift_lower" not in cmd.on
            if "lift_lower" in cmd.on:
                facts["lift_raise_off"] = facts["lift_raise_off"] and "lift_raise" not in cmd.on
        if isinstance(cmd, RobotMotion) and cmd.slot is not None:
            self.observe(cmd.slot, now)
            view = plant.book.view(cmd.slot, now)
            r = view.fresh
            entry = self._entry(cmd.slot)
            facts["slot_charger_off"] = (
                None
                if r is None or r.charge_enable is None
                else (
                    not r.charge_enable
                    and abs(r.current or 0.0) <= CHARGER_OFF_A
                    and not entry.on  # no enable let through since (the reading may lag it)
                    and not entry.switching_on
                )
            )
        return facts


def stopping(cmd: Command) -> bool:
    """The command only stops something (never refused)."""
    if isinstance(cmd, ChargerEnable):
        return not cmd.on
    if isinstance(cmd, Outputs):
        return not cmd.on
    return isinstance(cmd, RobotMotion) and cmd.kind is MsgType.STOP


def _scope(cmd: Command) -> str:
    if isinstance(cmd, (ChargerLimit, ChargerEnable)):
        return slot_scope(cmd.slot)
    return STATION


def table() -> str:
    """The invariants as Markdown (docs/architecture.md is generated from it)."""
    kinds = {ChargerLimit: "charger limit", ChargerEnable: "charger on", Outputs: "outputs",
             RobotMotion: "robot"}  # fmt: skip
    rows = ["| invariant | commands | rule |", "|---|---|---|"]
    rows += [
        f"| `{i.name}` | {', '.join(kinds[k] for k in i.kinds)} | {i.rule} |" for i in INVARIANTS
    ]
    return "\n".join(rows)
