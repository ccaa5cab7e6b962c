"""What a swap is doing and what it does next: its journalled context, and the robot's plans.

Pure functions over the swap's context and what the station observes: which robot commands a
phase runs, what proves that a command ran (for recovery after a restart), and how an abort
brings the vehicle back to a locked pack. The sequencer does the I/O.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from controller.swap.phase import Phase
from drivers import clock
from drivers.robot.protocol import (
    Empty,
    MoveArgs,
    MsgType,
    Payload,
    RobotState,
    RobotStatus,
    SlotArgs,
    Target,
)

Outcome = Literal["completed", "aborted", "failed", "recovered"]


class StepTime(BaseModel):
    """When a phase started and ended (wall clock)."""

    model_config = ConfigDict(extra="forbid")

    phase: Phase
    started_at: float
    ended_at: float | None = None


class OperatorNote(BaseModel):
    """Something an operator did to this swap."""

    model_config = ConfigDict(extra="forbid")

    at: float
    action: str
    by: str | None = None
    detail: str | None = None


VehiclePack = Literal["own", "none", "installed"]


class SwapContext(BaseModel):
    """The active swap, as journalled before every physical command (write-ahead)."""

    model_config = ConfigDict(extra="forbid")

    swap_id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    state: Phase = Phase.IDLE  # the swap machine's (python-statemachine reads and writes it)
    vehicle_id: str = ""
    pack_type: str = ""
    reserved_slot: int = 0
    reserved_serial: str = ""
    reserved_soc: float | None = None
    reserved_soh: float | None = None  # as its charger reported it before the fetch
    free_slot: int = 0
    # The vehicle's pack: its own (as it arrived), none (removed), or the installed one.
    vehicle_pack: VehiclePack = "own"
    # The vehicle's pack is locked: its own pack until UNLOCK is sent (write-ahead: unknown
    # counts as unlocked), an installed one once a LOCK was verified (locked, torque in range).
    vehicle_pack_locked: bool = True
    lock_torque_nm: float | None = None
    old_serial: str | None = None  # the vehicle's own pack, once the robot has it
    old_type: str | None = None  # ... as its charger reports it, once stored
    old_soc: float | None = None
    old_soh: float | None = None
    stored_verified: bool = False  # the charger of the free slot reports the stored pack
    aborting: bool = False  # an abort was asked for (by an operator, or a fault's reset)
    installed_serial: str | None = None
    step: int = 0  # the robot command of the phase, 0-based
    step_sent: bool = False  # that command was sent; its outcome is not known yet
    step_label: str | None = None
    step_kind: str | None = None  # the command sent (MsgType name), with its arguments:
    step_target: int | None = None  # Target of a MOVE
    step_slot: int | None = None  # slot of a MOVE, STORE or FETCH
    outcome: Outcome | None = None
    reason: str | None = None
    fault_from: Phase | None = None  # the phase a fault or E-stop interrupted
    # The daemon's orderly stop sent the robot a STOP during this swap: after the restart the
    # robot's STOPPED latch is ours, not a fault's, and is reset (no motion) before recovery.
    stopped_on_shutdown: bool = False
    started_at: float = Field(default_factory=clock.wall)
    phase_started_at: float = Field(default_factory=clock.wall)
    timings: list[StepTime] = Field(default_factory=list)
    operator: list[OperatorNote] = Field(default_factory=list)

    @property
    def active(self) -> bool:
        """A swap is in progress."""
        return self.state is not Phase.IDLE

    @property
    def pack_locked(self) -> bool:
        """The vehicle holds a pack and it is locked in."""
        return self.vehicle_pack != "none" and self.vehicle_pack_locked


@dataclass(frozen=True, slots=True)
class RobotAction:
    """One robot command of a plan, with what proves it ran."""

    kind: MsgType
    body: Payload
    label: str

    @property
    def slot(self) -> int | None:
        """The rack slot the action goes to or works on, if any."""
        if isinstance(self.body, SlotArgs):
            return self.body.slot
        if isinstance(self.body, MoveArgs) and self.body.target == Target.SLOT:
            return self.body.slot
        return None

    def remember(self, ctx: SwapContext) -> None:
        """Write this action into the context (journalled before it is sent)."""
        ctx.step_sent, ctx.step_label, ctx.step_kind = True, self.label, self.kind.name
        ctx.step_target = int(self.body.target) if isinstance(self.body, MoveArgs) else None
        ctx.step_slot = self.body.slot if isinstance(self.body, (MoveArgs, SlotArgs)) else None

    @staticmethod
    def recall(ctx: SwapContext) -> RobotAction | None:
        """The action the context says was sent, if any."""
        if not ctx.step_sent or ctx.step_kind is None:
            return None
        kind = MsgType[ctx.step_kind]
        body: Payload = Empty()
        if kind is MsgType.MOVE:
            body = MoveArgs(ctx.step_target or 0, ctx.step_slot or 0)
        elif kind in {MsgType.STORE, MsgType.FETCH}:
            body = SlotArgs(ctx.step_slot or 1)
        return RobotAction(kind, body, ctx.step_label or kind.name.lower())

    @staticmethod
    def move_bay() -> RobotAction:
        """Go under the bay."""
        return RobotAction(MsgType.MOVE, MoveArgs(Target.BAY), "move to the bay")

    @staticmethod
    def move_slot(slot: int) -> RobotAction:
        """Go to a rack slot."""
        return RobotAction(MsgType.MOVE, MoveArgs(Target.SLOT, slot), f"move to slot {slot}")

    @staticmethod
    def home() -> RobotAction:
        """Park at home, clear of the bay."""
        return RobotAction(MsgType.HOME, Empty(), "park at home")


def phase_plan(phase: Phase, ctx: SwapContext) -> list[RobotAction]:
    """The robot commands a phase runs, in order (none outside the robot's phases)."""
    plan = _PLANS.get(phase)
    return plan(ctx) if plan is not None else []


def _removing(_ctx: SwapContext) -> list[RobotAction]:
    return [
        RobotAction.move_bay(),
        RobotAction(MsgType.UNLOCK, Empty(), "unlock the vehicle's pack"),
        RobotAction(MsgType.REMOVE, Empty(), "remove the vehicle's pack"),
    ]


def _storing(ctx: SwapContext) -> list[RobotAction]:
    return [
        RobotAction.move_slot(ctx.free_slot),
        RobotAction(MsgType.STORE, SlotArgs(ctx.free_slot), f"store in slot {ctx.free_slot}"),
    ]


def _fetching(ctx: SwapContext) -> list[RobotAction]:
    slot = ctx.reserved_slot
    return [
        RobotAction.move_slot(slot),
        RobotAction(MsgType.FETCH, SlotArgs(slot), f"fetch from slot {slot}"),
    ]


def _installing(_ctx: SwapContext) -> list[RobotAction]:
    return [RobotAction.move_bay(), RobotAction(MsgType.INSTALL, Empty(), "install the pack")]


def _locking(_ctx: SwapContext) -> list[RobotAction]:
    return [RobotAction(MsgType.LOCK, Empty(), "lock the pack"), RobotAction.home()]


_PLANS: dict[Phase, Callable[[SwapContext], list[RobotAction]]] = {
    Phase.REMOVING: _removing,
    Phase.STORING: _storing,
    Phase.FETCHING: _fetching,
    Phase.INSTALLING: _installing,
    Phase.LOCKING: _locking,
}


@dataclass(frozen=True, slots=True)
class Where:
    """Where the packs of this swap are now, as the inventory knows it."""

    robot_holds: str | None
    old_in_free_slot: bool
    new_in_reserved_slot: bool


def abort_plan(ctx: SwapContext, where: Where, robot: RobotStatus | None) -> list[RobotAction]:
    """Robot commands that bring the vehicle back to a locked pack and park the robot.

    Recomputed after every command from what is known then, so it never relies on a command
    having had an effect that was not observed. An empty plan means: safe to lower. A plan
    whose only action is STATUS means: nothing the robot can do, an operator must decide.
    """
    at = Target(robot.position) if robot is not None else None
    to_bay = [] if at is Target.BAY else [RobotAction.move_bay()]
    lock = RobotAction(MsgType.LOCK, Empty(), "lock the pack")
    if ctx.vehicle_pack != "none":
        if ctx.vehicle_pack_locked:
            return [] if at in {Target.HOME, Target.SLOT} else [RobotAction.home()]
        return [*to_bay, lock, RobotAction.home()]
    install = [RobotAction(MsgType.INSTALL, Empty(), "install the pack"), lock, RobotAction.home()]
    if where.robot_holds is not None:
        return [*to_bay, *install]
    # Nothing in the vehicle nor on the robot: bring back the vehicle's own pack, else the new.
    if where.old_in_free_slot:
        slot, what = ctx.free_slot, "the vehicle's own pack"
    elif where.new_in_reserved_slot:
        slot, what = ctx.reserved_slot, "the charged pack"
    else:
        return [RobotAction(MsgType.STATUS, Empty(), "no pack to put back into the vehicle")]
    at_slot = at is Target.SLOT and robot is not None and robot.slot == slot
    return [
        *([] if at_slot else [RobotAction.move_slot(slot)]),
        RobotAction(MsgType.FETCH, SlotArgs(slot), f"fetch {what} from slot {slot}"),
        RobotAction.move_bay(),
        *install,
    ]


def proven_done(  # noqa: PLR0911 - one return per command kind
    action: RobotAction, robot: RobotStatus
) -> bool | None:
    """Did `action` run? True, False, or None when the robot cannot tell (it is busy).

    For a command whose outcome was not seen (a restart, a fault, a STOP, a lost reply).
    Decided from the robot's own report only, never assumed: a move ran if the robot is
    there (a stopped one is between positions: it did not); a handover ran if what the
    robot holds says so; a lock ran if the robot reports the pack locked.
    """
    if robot.state == RobotState.BUSY:
        return None  # still at it
    # Idle, faulted or stopped, the robot's sensors say where it is and what it holds.
    kind, body = action.kind, action.body
    if kind in {MsgType.MOVE, MsgType.HOME}:
        target = body.target if isinstance(body, MoveArgs) else Target.HOME
        slot = body.slot if isinstance(body, MoveArgs) else 0
        return robot.position == target and (target != Target.SLOT or robot.slot == slot)
    if kind is MsgType.UNLOCK:
        return not robot.locked
    if kind is MsgType.LOCK:
        return bool(robot.locked)
    if kind is MsgType.REMOVE:
        return bool(robot.holding)
    if kind is MsgType.STORE:
        return not robot.holding
    if kind is MsgType.FETCH:
        return bool(robot.holding)  # which pack it holds is checked like after any FETCH
    if kind is MsgType.INSTALL:
        return not robot.holding
    return None
