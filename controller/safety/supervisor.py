"""The safety supervisor: the one gate every command to machinery passes.

A charger's current limit and its enable, the lift, gate and green-light outputs, a robot
motion: each goes out through `SafetySupervisor`, which judges it against the invariants
(`INVARIANTS`, data, in controller/safety/invariants.py) on the facts the devices report (slot
readings, station I/O, the robot's status) and on its own ledger of what it let through, never
on how the controller came to want it. A command that breaks an invariant is not sent: the
refusal is counted, raised as an alarm named after the invariant, journalled as an event and
in the motion log, and the caller gets `SafetyRefusedError` saying why. It is the second line:
the controller's own checks (supervision, interlocks, the allocator) stay first and should
never be caught here.

Stopping is never refused: a charger switched off, an output cleared and the robot's STOP are
the safe state. The supervisor also watches (`must_be_off`): a charger that may be on while an
invariant no longer holds (its data unknown beyond its timeout where its rack still answers,
a BMS limit of 0 or unknown, no pack, a limit above what is allowed) is switched off, whatever
the controller wants. Unknown is never safe, and 0 means 0.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from controller.plant.alarms import Cause, Severity, slot_scope
from controller.plant.slots import SlotBook
from controller.safety.commands import (
    ChargerEnable,
    ChargerLimit,
    Command,
    Facts,
    Outputs,
    RobotMotion,
    stopping,
)
from controller.safety.invariants import (
    CHARGER_OFF_A,
    INVARIANTS,
    PEOPLE,
    VEHICLE,
    VERIFIED_WITHIN_S,
    amps,
    caps,
)
from drivers import clock as clocks
from drivers.stationio import IoSnapshot

_log = logging.getLogger(__name__)

REFUSAL_HOLD_S = 60.0  # a refusal alarm lasts this long after the last refusal ...
EVENT_EVERY_S = 10.0  # ... and a repeated refusal is journalled at most this often
STATION = "station"  # the alarm scope of refused motions


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

    def __init__(self, plant: Plant, *, clock: Callable[[], float] = clocks.monotonic) -> None:
        self.plant = plant
        self.clock = clock
        self.started = clock()
        self.counts: Counter[str] = Counter()  # refusals by invariant
        self.hold_s = REFUSAL_HOLD_S  # a refusal alarm lasts this long after the last refusal
        self.checked = 0
        self._ledger: dict[int, _Ledger] = {}
        self._episodes: dict[tuple[str, str], _Episode] = {}
        self._pending: list[tuple[str, dict[str, object]]] = []  # events to journal
        # Told the scope of every refusal booked (the slot control raises its alarm at once).
        self.on_booked: Callable[[str], None] = lambda _scope: None

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
        self.on_booked(scope)
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
        bms, volts = amps(facts["bms_current_max_a"]), amps(facts["bms_voltage_max_v"])
        if bms is None or bms <= 0 or volts is None or volts <= 0:
            return "current_within_limits", f"on, but the BMS allows no charge ({caps(facts)})"
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

    def expiries(self) -> dict[str, float]:
        """When each scope's refusal alarms lapse next (its clock), if nothing more is refused."""
        out: dict[str, float] = {}
        for (scope, _), episode in self._episodes.items():
            if not episode.cleared:
                at = episode.last + self.hold_s
                out[scope] = min(out.get(scope, at), at)
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


def _scope(cmd: Command) -> str:
    if isinstance(cmd, (ChargerLimit, ChargerEnable)):
        return slot_scope(cmd.slot)
    return STATION
