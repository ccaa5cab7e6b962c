"""After a restart with a swap in progress: resume where the devices prove it safe, else hold.

The robot and the station I/O are waited for (a while), a robot still finishing a command is
let finish, the command journalled as sent is settled from what the robot reports, and the
inventory is checked against what it holds. A STOP the daemon's own orderly stop sent is reset
(no motion) first. Anything that cannot be proved leads to `recovery_required`.
"""

from __future__ import annotations

import logging

from controller.errors import RefusedError
from controller.store.events import JournalBatch
from controller.swap.current import CurrentSwap
from controller.swap.handover import Handovers
from controller.swap.phase import LIFT_PHASES, Phase
from controller.swap.robotsteps import RobotSteps
from controller.swap.senses import Senses
from controller.swap.stops import Stops
from drivers import clock
from drivers.robot.protocol import RobotState, RobotStatus, Target

_log = logging.getLogger(__name__)

RECOVERY_WAIT_S = 10.0  # after a restart, how long to wait for the robot and the station I/O
RECOVERY_BUSY_WAIT_S = 60.0  # ... and for a robot still finishing a command
# Nothing of the swap's was moving, or it is over: nothing to prove.
_AT_REST = frozenset(
    {Phase.AUTHORISED, Phase.WAITING_FOR_VEHICLE, Phase.POSITIONED, Phase.RELEASING,
     Phase.COMPLETE}
)  # fmt: skip


class Recovery:
    """Decides, after a restart (or an operator's `resume`), whether the swap may go on."""

    def __init__(
        self,
        swap: CurrentSwap,
        senses: Senses,
        robot: RobotSteps,
        handovers: Handovers,
        stops: Stops,
    ) -> None:
        self.swap = swap
        self.senses = senses
        self.robot = robot
        self.handovers = handovers
        self.stops = stops
        self.active = False  # checking whether the swap in progress can resume
        self._since = 0.0

    def begin(self) -> None:
        """Check again from now (a restart; an operator's `resume`)."""
        self.active = True
        self._since = clock.monotonic()

    async def note_orderly_stop(self, *, robot_stopped: bool) -> None:
        """The daemon stops in order: say so in the journal, for the restart.

        Called after the safe state (the sequencer's task already ended): a STOP sent to the
        robot then is known to be ours, and the next start resets it and recovers.
        """
        ctx = self.swap.ctx
        if ctx.active and robot_stopped:
            ctx.stopped_on_shutdown = True
            self.swap.note("shutdown", None, f"orderly stop while {ctx.state}: robot stopped")
            await self.swap.persist()

    async def check(self, now: float) -> None:
        """Resume on proof, hold when it cannot be had, or go on waiting (and say for what)."""
        waited = now - self._since
        link = self.senses.robot
        status = link.status
        reading, why = self.senses.io_reading(now)
        if status is None or not link.ready.is_set() or reading is None:
            missing = ([] if reading is not None else [why]) + (
                [] if self.senses.robot_connected() else [f"robot link {link.state.value}"]
            )
            if waited < RECOVERY_WAIT_S:
                self.swap.set_blocking(
                    [f"recovering after a restart: waiting ({'; '.join(missing)})"]
                )
                return
            self.active = False
            await self.stops.hold(f"after a restart, cannot read {' and '.join(missing)}")
            return
        if (status.state == RobotState.BUSY or link.busy) and waited < RECOVERY_BUSY_WAIT_S:
            self.swap.set_blocking(["recovering after a restart: the robot is finishing a command"])
            return
        self.active = False
        ctx = self.swap.ctx
        if ctx.stopped_on_shutdown and status.state == RobotState.STOPPED:
            # The STOP was the orderly stop's own: its latch is reset (no motion) and the
            # swap recovered like after any restart, from what the robot reports.
            try:
                status = await self.robot.reset(checked=True) or status
            except RefusedError as exc:
                await self.stops.hold(f"after an orderly stop: {exc}")
                return
        ctx.stopped_on_shutdown = False
        batch = JournalBatch()
        verdict = self._verdict(status, batch)
        if verdict is not None:
            await self.stops.hold(verdict, batch)
            return
        batch.event("swap_recovered", {"swap_id": ctx.swap_id, "state": ctx.state})
        await self.swap.persist(batch)
        _log.warning("swap %s recovered after a restart: resuming %s", ctx.swap_id[:8], ctx.state)

    def _verdict(  # noqa: PLR0911 - one return per check, in order
        self, status: RobotStatus, batch: JournalBatch
    ) -> str | None:
        """None if the swap can resume where it is (context settled), else why not."""
        ctx = self.swap.ctx
        phase = ctx.state
        if phase in _AT_REST:
            return None
        if status.state in {RobotState.FAULT, RobotState.STOPPED}:
            return f"the robot is {RobotState(status.state).name.lower()} (fault {status.fault})"
        why = self.robot.settle_in_flight(status, batch)
        if why is not None:
            return why
        disagreement = self.handovers.robot_disagrees(status)
        if disagreement is not None:
            return disagreement
        if phase in LIFT_PHASES:
            if phase is Phase.LOWERING and not ctx.pack_locked:
                return "lowering, but the vehicle's pack is not known to be locked"
            return None  # the lift's position is watched, its interlocks checked again
        if status.position == Target.BETWEEN and not self.robot.moves_next(status):
            return "the robot stopped between positions"
        self.handovers.settled()
        return None
