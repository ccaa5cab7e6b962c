"""The only way to the machinery: chargers, station outputs, the robot.

Each command is judged by the safety supervisor (`controller/safety/supervisor.py`), entered
in the motion log (`controller/safety/motionlog.py`) with the facts it was judged on, and sent
only when allowed;
a refused one raises `SafetyRefusedError` and goes nowhere. Stops are never refused. Nothing
else in the controller writes to a device (`tests/system/test_architecture.py` checks it).

Log entries and refusal events wait here until the next journal commit of the slot control or
the swap sequencer takes them (`take_journal`); a robot command is judged before the swap's
write-ahead commit (`judge_robot`), so its entry is durable before it goes out.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Mapping
from typing import Any

from controller.errors import SafetyRefusedError
from controller.plant.alarms import slot_scope
from controller.safety.commands import ChargerEnable, ChargerLimit, Command, Outputs, RobotMotion
from controller.safety.motionlog import Device, NewMotionEntry, entry_of, insert_sync
from controller.safety.supervisor import EVENT_EVERY_S, SafetySupervisor, Verdict
from controller.store.events import JournalBatch
from drivers import clock as clocks
from drivers.rack import RackDriver
from drivers.robot.link import RobotLink
from drivers.robot.protocol import MoveArgs, MsgType, Payload, RobotStatus, SlotArgs, Target
from drivers.stationio import StationIoDriver

_log = logging.getLogger(__name__)

MAX_PENDING = 10_000  # entries kept for the next commit; beyond, the oldest are dropped (logged)

# (swap id, phase) of the swap in progress, for the log
Context = Callable[[], tuple[str | None, str | None]]


class Actuators:
    """Judge, log, send."""

    def __init__(
        self,
        safety: SafetySupervisor,
        racks: Mapping[str, RackDriver],
        rack_of: Mapping[int, str],
        *,
        io: StationIoDriver | None = None,
        robot: RobotLink | None = None,
    ) -> None:
        self.safety = safety
        self.racks = dict(racks)
        self.rack_of = dict(rack_of)
        self.io = io
        self.robot = robot
        self.context: Context = lambda: (None, None)
        self._entries: list[NewMotionEntry] = []
        self._refused_at: dict[str, float] = {}

    # --- chargers -----------------------------------------------------------------------------

    async def charger_limit(self, slot: int, amps: float) -> float:
        """Write a slot's current limit, verified; return what the charger holds (A)."""
        cmd = ChargerLimit(slot, amps)
        self._pass(cmd, log=False)
        back = await self.racks[self.rack_of[slot]].write_limit(slot, amps)
        self.safety.applied(cmd, read_back=back)
        return back

    async def charger_enable(self, slot: int, *, on: bool, verify: bool = True) -> None:
        """Switch a slot's charger on (after its limit, see `charger_limit`) or off, verified.

        `verify=False`, for an off only (at shutdown, in a hurry): not read back.
        """
        cmd = ChargerEnable(slot, on)
        self._pass(cmd, log=True)
        self.safety.sending(cmd)
        try:
            back = await self.racks[self.rack_of[slot]].write_enable(
                slot, on=on, verify=verify or on
            )
        except BaseException:
            self.safety.failed(cmd)
            raise
        self.safety.applied(cmd, read_back=back)

    def overrule(self, slot: int, name: str, why: str) -> None:
        """The supervisor's watch switches off what the controller wanted on: booked, logged."""
        self.safety.overrule(slot_scope(slot), name, why, now=self.safety.clock())
        verdict = Verdict(ChargerEnable(slot, on=True), {"watch": True}, ((name, why),),
                          self.safety.clock())  # fmt: skip
        self._log(verdict)

    # --- station outputs ----------------------------------------------------------------------

    def judge_outputs(self, values: Mapping[str, bool] | Outputs) -> Verdict:
        """Judge an outputs command and log the verdict (before the caller's commit)."""
        cmd = values if isinstance(values, Outputs) else _outputs(values)
        verdict = self.safety.permit(cmd)
        self._log(verdict)
        return verdict

    async def outputs(self, values: Mapping[str, bool], *, verdict: Verdict | None = None) -> None:
        """Set and clear station outputs (lift, gate, green light), verified by read-back.

        `verdict`: from `judge_outputs` a moment ago (else it is judged now). Raises
        `SafetyRefusedError` when refused (nothing is written).
        """
        if self.io is None:
            raise RuntimeError("no station I/O configured")
        verdict = self._recheck(verdict, _outputs(values), self.judge_outputs)
        if not verdict.allowed:
            stops = {k: v for k, v in values.items() if not v}
            if stops:  # what it clears is never held back by what it sets
                await self.io.set_coils(**stops)
            raise SafetyRefusedError(verdict)
        await self.io.set_coils(**values)

    # --- the robot ----------------------------------------------------------------------------

    def judge_robot(self, kind: MsgType, body: Payload | None = None) -> Verdict:
        """Judge a robot command and log the verdict (before the caller's write-ahead commit)."""
        verdict = self.safety.permit(_robot_motion(kind, body))
        self._log(verdict)
        return verdict

    async def robot_command(
        self, kind: MsgType, body: Payload | None = None, *, verdict: Verdict | None = None
    ) -> RobotStatus:
        """Send a robot command judged by `judge_robot` (or judge it now); its status after.

        Raises `SafetyRefusedError` when refused (nothing is sent).
        """
        robot = self._robot()
        verdict = self._recheck(
            verdict, _robot_motion(kind, body), lambda _c: self.judge_robot(kind, body)
        )
        if not verdict.allowed:
            raise SafetyRefusedError(verdict)
        return await robot.command(kind, body)

    async def robot_stop(self) -> RobotStatus:
        """STOP the robot now (never refused; logged after it went out)."""
        robot = self._robot()
        verdict = self.safety.judge(RobotMotion(MsgType.STOP))
        try:
            return await robot.stop()
        finally:
            self._log(verdict)

    # --- the journal --------------------------------------------------------------------------

    def take_journal(self, batch: JournalBatch) -> None:
        """Add the pending log entries and refusal events to `batch` (committed by the caller)."""
        entries, self._entries = self._entries, []
        if entries:
            batch.call(lambda conn: _insert(conn, entries))
        for kind, body in self.safety.take_events():
            batch.event(kind, body)

    @property
    def pending(self) -> bool:
        """Entries or events wait for a commit."""
        return bool(self._entries)

    # --- internals ----------------------------------------------------------------------------

    def _pass(self, cmd: Command, *, log: bool) -> None:
        verdict = self.safety.permit(cmd)
        if log or not verdict.allowed:
            self._log(verdict)
        if not verdict.allowed:
            raise SafetyRefusedError(verdict)

    def _recheck(
        self, verdict: Verdict | None, cmd: Command, judge_and_log: Callable[[Any], Verdict]
    ) -> Verdict:
        """The verdict to send `cmd` on, judged again now (facts move during a commit).

        A verdict that still holds is not logged twice; one that no longer does is booked.
        """
        if verdict is None or verdict.command != cmd or not verdict.allowed:
            return judge_and_log(cmd)
        if self.safety.judge(cmd).allowed:
            return verdict
        return judge_and_log(cmd)  # refused now: booked and logged

    def _log(self, verdict: Verdict) -> None:
        cmd = verdict.command
        if not verdict.allowed:
            # A refused command asked again and again (the sequencer retries every step) is
            # entered once per EVENT_EVERY_S: the supervisor counts every refusal.
            last = self._refused_at.get(str(cmd))
            if last is not None and verdict.at - last < EVENT_EVERY_S:
                return
            if len(self._refused_at) > MAX_PENDING:
                self._refused_at.clear()
            self._refused_at[str(cmd)] = verdict.at
        device: Device = (
            "charger"
            if isinstance(cmd, (ChargerLimit, ChargerEnable))
            else "outputs"
            if isinstance(cmd, Outputs)
            else "robot"
        )
        slot = cmd.slot if isinstance(cmd, (ChargerLimit, ChargerEnable, RobotMotion)) else None
        swap_id, phase = self.context()
        wall = clocks.wall() - (self.safety.clock() - verdict.at)
        self._entries.append(
            entry_of(verdict, device, slot=slot, swap_id=swap_id, phase=phase, wall=wall)
        )
        if len(self._entries) > MAX_PENDING:
            del self._entries[: len(self._entries) - MAX_PENDING]
            _log.error("motion log: nothing committed it for a while; oldest entries dropped")

    def _robot(self) -> RobotLink:
        if self.robot is None:
            raise RuntimeError("no robot configured")
        return self.robot


def _outputs(values: Mapping[str, bool]) -> Outputs:
    return Outputs(
        frozenset(k for k, v in values.items() if v),
        frozenset(k for k, v in values.items() if not v),
    )


def _robot_motion(kind: MsgType, body: Payload | None) -> RobotMotion:
    if isinstance(body, MoveArgs):
        target = Target(body.target)
        return RobotMotion(kind, target, body.slot if target is Target.SLOT else None)
    if isinstance(body, SlotArgs):
        return RobotMotion(kind, None, body.slot)
    return RobotMotion(kind)


def _insert(conn: sqlite3.Connection, entries: list[NewMotionEntry]) -> None:
    insert_sync(conn, entries)
