"""The robot's part of a swap: its commands one at a time, each written ahead and judged.

A phase's plan (or, while aborting, the abort plan recomputed from what is known) gives the next
command; it goes out once the phase's interlocks and the racks' conditions hold and the safety
supervisor allows it, after the journal says it is out. Its completion comes back as an event
on the sequencer's queue; a command whose outcome was not seen is settled from what the robot
itself reports (`proven_done`), never assumed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from controller.errors import DriverError, MismatchError, RefusedError, SafetyRefusedError
from controller.safety.actuators import Actuators
from controller.safety.supervisor import Verdict
from controller.store.events import JournalBatch
from controller.swap import interlocks
from controller.swap.current import CurrentSwap
from controller.swap.handover import Handovers
from controller.swap.phase import PHASE_DONE, ROBOT_PHASES, Phase
from controller.swap.plan import RobotAction, abort_plan, phase_plan, proven_done
from controller.swap.senses import Facts, Senses
from controller.swap.step import Step, Stop
from drivers import clock
from drivers.robot.protocol import MsgType, RobotState, RobotStatus, Target

_log = logging.getLogger(__name__)

MAX_ABORT_COMMANDS = 12  # an abort plan is at most 7 commands; more means it goes round

Result = RobotStatus | DriverError | SafetyRefusedError


@dataclass(frozen=True, slots=True)
class RobotDone:
    """A robot command of the swap's came back (`token`: which one; older ones do not count)."""

    token: int
    action: RobotAction
    result: Result
    at: float


class RobotSteps:
    """Sends the swap's robot commands and books what they did."""

    def __init__(
        self,
        swap: CurrentSwap,
        senses: Senses,
        handovers: Handovers,
        actuators: Actuators,
        *,
        done: Callable[[RobotDone], None],
    ) -> None:
        self.swap = swap
        self.senses = senses
        self.handovers = handovers
        self.actuators = actuators
        self.robot = senses.robot
        self._done = done  # puts a completion on the sequencer's queue
        self._task: asyncio.Task[None] | None = None
        self._token = 0

    @property
    def command_out(self) -> bool:
        """A command of the swap's is out: its outcome is not known yet."""
        return self._task is not None

    async def step(self, facts: Facts, now: float) -> Step:  # noqa: PLR0911 - one per outcome
        """A robot phase (or aborting): the next command, when it may go; or what it waits for."""
        phase = self.swap.phase
        if self._task is not None:
            failing = self.senses.failing(phase, facts)
            if failing:
                return Stop.fault(f"{failing[0]} during '{self.swap.ctx.step_label}'")
            return []
        if phase is Phase.ABORTING:
            plan = self._abort_next()
            if isinstance(plan, Stop):
                return plan
            if plan is None:
                await self.swap.go("made_safe")
                return []
            action = plan
        else:
            actions = phase_plan(phase, self.swap.ctx)
            if self.swap.ctx.step >= len(actions):
                causes = self.handovers.phase_complete(phase, now)
                if causes is None:
                    batch = JournalBatch()
                    self.handovers.handed_over(phase, batch)
                    await self.swap.go(PHASE_DONE[phase], batch)
                    return []
                return causes
            action = actions[self.swap.ctx.step]
        causes = self.senses.failing(phase, facts) + self.handovers.causes(action, now)
        if not self.senses.robot_connected():
            causes.append(f"robot link {self.robot.state.value}")
        if causes:
            return causes
        return await self._send(action)

    def _abort_next(self) -> RobotAction | Stop | None:
        """The abort plan's next command; None when the vehicle is safe; a hold if stuck."""
        status = self.robot.status
        if status is not None and bool(status.holding) != (
            self.swap.inventory.on_robot() is not None
        ):
            return Stop.hold(self.handovers.robot_disagrees(status) or "the robot disagrees")
        plan = abort_plan(self.swap.ctx, self.handovers.where(), status)
        if not plan:
            return None
        if plan[0].kind is MsgType.STATUS:
            return Stop.hold(f"cannot make the vehicle safe: {plan[0].label}")
        if self.swap.ctx.step >= MAX_ABORT_COMMANDS:
            return Stop.hold(f"the abort did not converge in {MAX_ABORT_COMMANDS} commands")
        return plan[0]

    async def _send(self, action: RobotAction) -> list[str]:
        """Send a robot command (write-ahead); the safety supervisor's refusal if refused."""
        ctx = self.swap.ctx
        verdict = self.actuators.judge_robot(action.kind, action.body)
        if not verdict.allowed:
            await self.swap.persist()  # the refusal: motion log, event
            return [f"safety supervisor: {verdict.why}"]
        # Write-ahead: the journal says the command is out before it is.
        action.remember(ctx)
        if action.kind is MsgType.UNLOCK:
            ctx.vehicle_pack_locked = False  # from now on unknown, so: not locked
        batch = JournalBatch()
        batch.event(
            "swap_step",
            {"swap_id": ctx.swap_id, "phase": ctx.state, "robot": action.kind.name,
             "what": action.label},
        )  # fmt: skip
        await self.swap.persist(batch)
        self._token += 1
        self.swap.sent("robot", action.kind.name)
        self._task = asyncio.create_task(
            self._call(self._token, action, verdict),
            name=f"swap-robot-{action.kind.name.lower()}",
        )
        return []

    async def _call(self, token: int, action: RobotAction, verdict: Verdict) -> None:
        result: Result
        try:
            result = await self.actuators.robot_command(action.kind, action.body, verdict=verdict)
        except (DriverError, SafetyRefusedError) as exc:
            result = exc
        self._done(RobotDone(token, action, result, clock.monotonic()))

    def finished(self, done: RobotDone) -> Stop | None:
        """A command came back: book its effect (deferred to the next write), or fault.

        Ignored if it is not the command out (one the swap gave up on). Raises
        `MismatchError` when what the robot reports contradicts what the swap knows.
        """
        if done.token != self._token:
            return None
        self._task = None
        self.swap.event_at = done.at
        ctx = self.swap.ctx
        if isinstance(done.result, SafetyRefusedError):
            # Refused at the last moment (the facts moved while the write-ahead was committed,
            # or the process was frozen meanwhile): nothing went out, so the step is neither
            # done nor failed. It is judged again, as before it was sent; the phase's timeout
            # still bounds the wait.
            ctx.step_sent = False
            _log.warning("robot %s not sent: %s", done.action.label, done.result)
            return None
        if isinstance(done.result, DriverError):
            return Stop.fault(f"robot could not {done.action.label}: {done.result}")
        batch = JournalBatch()
        try:
            self.handovers.apply_effect(done.action, done.result, batch)
        finally:
            ctx.step_sent = False  # what it did is known now (even when wrong)
        ctx.step += 1  # in aborting: how many commands the abort took
        self.swap.step_ended_at = self.swap.event_at
        # Journalled with the next command (before it is sent), or at the end of this step.
        self.swap.defer(batch)
        return None

    def settle_in_flight(self, status: RobotStatus, batch: JournalBatch) -> str | None:
        """The robot command journalled as sent: apply its effect if the robot shows it ran.

        Returns why it cannot be told, or None when settled (ran, or proven not to have run).
        """
        ctx = self.swap.ctx
        action = RobotAction.recall(ctx)
        if action is None:
            return None
        done = proven_done(action, status)
        if done is None:
            where = Target(status.position).name.lower()
            return (
                f"cannot tell whether '{action.label}' ran: the robot is"
                f" {RobotState(status.state).name.lower()} at {where}"
            )
        if done:
            try:
                self.handovers.apply_effect(action, status, batch)
            except MismatchError as exc:
                return f"after '{action.label}': {exc}"
            if ctx.state in ROBOT_PHASES:
                ctx.step += 1
        ctx.step_sent = False
        return None

    def moves_next(self, status: RobotStatus) -> bool:
        """The swap's next robot command is a move (all a robot between positions may take)."""
        ctx = self.swap.ctx
        if ctx.state is Phase.ABORTING:
            plan = abort_plan(ctx, self.handovers.where(), status)
        else:
            plan = phase_plan(ctx.state, ctx)[ctx.step :]
        return bool(plan) and plan[0].kind in {MsgType.MOVE, MsgType.HOME}

    # --- no motion: reset, stop --------------------------------------------------------------

    async def reset(self, *, checked: bool = False) -> RobotStatus | None:
        """RESET a faulted or stopped robot (no motion: it clears the latch); its status.

        `checked`: refused unless the E-stop chain is closed, on fresh station I/O.
        """
        if not self.robot.ready.is_set():
            raise RefusedError(f"robot link {self.robot.state.value}: cannot reset it")
        if checked:
            facts = self.senses.facts()
            if facts.get("estop_ok") is not True:
                raise RefusedError(f"robot not reset: {self.senses.why(interlocks.ESTOP, facts)}")
        status = self.robot.status
        if status is not None and status.state in {RobotState.FAULT, RobotState.STOPPED}:
            try:
                status = await self.actuators.robot_command(MsgType.RESET)
            except DriverError as exc:
                raise RefusedError(f"robot reset failed: {exc}") from exc
        return status

    def abandon(self) -> bool:
        """Give up the command out (its result no longer counts); whether STOP is needed."""
        running, self._task = self._task, None
        self._token += 1  # a result still coming no longer counts
        return running is not None or self.robot.busy or self.robot.maybe_moving

    async def stop_robot(self) -> bool:
        """Send STOP (never refused); whether it went out."""
        self.swap.sent("robot", "STOP")
        try:
            await self.actuators.robot_stop()
        except DriverError as exc:
            _log.error("robot STOP failed: %s", exc)
            return False
        return True
