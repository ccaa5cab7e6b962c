"""The operator's and the back end's requests to the swap: one handler per request type.

Each runs in the sequencer's task (between two evaluations, so nothing interleaves) and answers
with a frozen `Outcome` built there, or raises `RefusedError` saying why it was not done.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from controller.charging.control import SlotControl
from controller.errors import BusyError, NoPackError, RefusedError
from controller.store.events import EventLog, JournalBatch
from controller.swap import interlocks
from controller.swap.current import CurrentSwap
from controller.swap.ending import Ending
from controller.swap.handover import Handovers
from controller.swap.phase import ABORTABLE, BEFORE_MOTION, RESUMABLE, Phase
from controller.swap.plan import SwapContext
from controller.swap.reconcile import RackReconciler
from controller.swap.recovery import Recovery
from controller.swap.requests import (
    Abort,
    Outcome,
    Recover,
    ResetFault,
    SetMode,
    SetSlot,
    StartSwap,
    SwapRequest,
)
from controller.swap.reservation import Reservation
from controller.swap.robotsteps import RobotSteps
from controller.swap.senses import Senses
from controller.swap.stops import Stops
from drivers.robot.protocol import RobotState

_log = logging.getLogger(__name__)

MAKING_SAFE = "aborting: the vehicle gets a locked pack back, then it is lowered"
_NO_ABORT = {
    Phase.IDLE: "no swap in progress",
    Phase.ABORTING: "already aborting",
    Phase.LOWERING: "the vehicle has a locked pack and is being lowered",
    Phase.RELEASING: "the vehicle has a locked pack and is being released",
    Phase.COMPLETE: "the swap is complete",
}


class Handlers:
    """Runs requests against the swap; `handle` dispatches on the request's type."""

    def __init__(  # noqa: PLR0917 - the collaborators a request may need, each one
        self,
        swap: CurrentSwap,
        senses: Senses,
        robot: RobotSteps,
        stops: Stops,
        recovery: Recovery,
        reservation: Reservation,
        handovers: Handovers,
        reconciler: RackReconciler,
        ending: Ending,
        control: SlotControl,
        events: EventLog,
    ) -> None:
        self.swap, self.senses, self.robot, self.stops = swap, senses, robot, stops
        self.recovery, self.reservation, self.handovers = recovery, reservation, handovers
        self.reconciler, self.ending = reconciler, ending
        self.control, self.events = control, events
        self._table: dict[type[SwapRequest], Callable[[Any], Awaitable[Outcome]]] = {
            StartSwap: self.start,
            Abort: self.abort,
            ResetFault: self.reset_fault,
            Recover: self.recover,
            SetMode: self.set_mode,
            SetSlot: self.set_slot,
        }

    # Why no new swap may start (a restart the CSMS asked for is pending), or None. Read when a
    # start_swap runs, in the sequencer's task: one already queued is refused too.
    no_new_swaps: str | None = None

    async def handle(self, request: SwapRequest) -> Outcome:
        """Run `request` (by its type: an interface's subclass of it runs the same)."""
        for kind in type(request).__mro__:
            handler = self._table.get(kind)
            if handler is not None:
                return await handler(request)
        raise RefusedError(f"unknown request {type(request).__name__}")

    async def start(self, request: StartSwap) -> Outcome:
        """Authorise a swap: reserve the best charged pack and a free slot."""
        ctx = self.swap.ctx
        if ctx.active:
            raise BusyError(f"busy: swap {ctx.swap_id} for {ctx.vehicle_id} is {ctx.state.text}")
        if self.no_new_swaps is not None:
            raise RefusedError(self.no_new_swaps)
        causes = self.senses.station_causes(self.senses.facts())
        if causes:
            raise RefusedError("; ".join(causes))
        try:
            pick = self.reservation.choose(request.pack_type)
        except NoPackError:
            # A car waiting for a pack: the demand-aware forecast counts it (outlook.py).
            self.control.foresight.note_waiting(request.vehicle_id, request.pack_type)
            raise
        self.control.foresight.note_served(request.vehicle_id)
        ctx = SwapContext(
            vehicle_id=request.vehicle_id,
            pack_type=request.pack_type,
            reserved_slot=pick.slot,
            reserved_serial=pick.serial,
            reserved_soc=pick.soc,
            free_slot=pick.free_slot,
        )
        self.swap.begin(ctx)
        batch = JournalBatch()
        batch.event(
            "swap_started",
            {"swap_id": ctx.swap_id, "vehicle_id": ctx.vehicle_id, "pack_type": ctx.pack_type,
             "reserved": {"slot": pick.slot, "serial": pick.serial, "soc": pick.soc},
             "free_slot": pick.free_slot, "by": request.by},
        )  # fmt: skip
        await self.swap.go("authorise", batch)
        _log.info(
            "swap %s for %s: pack %s in slot %d reserved; its pack goes to slot %d",
            ctx.swap_id, ctx.vehicle_id, pick.serial, pick.slot, pick.free_slot,
        )  # fmt: skip
        return Outcome(
            f"swap {ctx.swap_id} for {ctx.vehicle_id}: pack {pick.serial} in slot {pick.slot}"
            f" reserved; the vehicle's pack goes to slot {pick.free_slot}",
            {"swap_id": ctx.swap_id, "reserved_slot": pick.slot, "reserved_serial": pick.serial,
             "free_slot": pick.free_slot},
        )  # fmt: skip

    async def abort(self, request: Abort) -> Outcome:
        """Cancel before anything moved; later, stop and make the vehicle safe first."""
        phase, by = self.swap.phase, request.by
        reason = request.reason or "aborted by an operator"
        ctx = self.swap.ctx
        if phase in BEFORE_MOTION:
            self.swap.note("abort", by, reason)
            ctx.reason = reason
            await self.swap.go("cancel")
            return Outcome("cancelled: nothing had moved")
        if phase in ABORTABLE:
            await self.stops.motion()
            self.swap.note("abort", by, reason)
            ctx.reason, ctx.aborting = reason, True
            try:
                status = await self.robot.reset()
            except RefusedError as exc:
                await self.stops.fault(f"aborting: {exc}")
                return Outcome(f"fault: {exc}")
            batch = JournalBatch()
            why = self.robot.settle_in_flight(status, batch) if status is not None else None
            if why is not None:
                await self.stops.hold(why, batch)
                return Outcome(f"recovery required: {why}")
            await self.swap.go("abort", batch)
            return Outcome(MAKING_SAFE)
        if phase in {Phase.FAULT, Phase.ESTOP}:
            return await self._reset(by, reason)
        if phase is Phase.RECOVERY_REQUIRED:
            return await self._decide("abort", by)
        raise RefusedError(_NO_ABORT.get(phase, f"cannot abort while {phase.text}"))

    async def reset_fault(self, request: ResetFault) -> Outcome:
        """After a fault or a released E-stop: reset the robot, make the vehicle safe."""
        return await self._reset(request.by)

    async def _reset(self, by: str | None, detail: str | None = None) -> Outcome:
        phase = self.swap.phase
        if phase not in {Phase.FAULT, Phase.ESTOP}:
            return await self._reset_robot_only(phase, by)
        facts = self.senses.facts()
        if facts.get("estop_ok") is not True:
            raise RefusedError(self.senses.why(interlocks.ESTOP, facts))
        status = await self.robot.reset()
        self.swap.note("reset_fault", by, detail or self.swap.ctx.reason)
        self.swap.ctx.aborting = True
        batch = JournalBatch()
        if status is not None:
            why = self.robot.settle_in_flight(status, batch)
            if why is not None:
                await self.stops.hold(why, batch)
                return Outcome(f"recovery required: {why}")
        await self.swap.go("reset", batch)
        return Outcome(MAKING_SAFE)

    async def _reset_robot_only(self, phase: Phase, by: str | None) -> Outcome:
        """Outside a swap's fault: the robot's own latch (a STOP, a fault), if it has one."""
        status = self.senses.robot.status
        if status is None or status.state not in {RobotState.FAULT, RobotState.STOPPED}:
            raise RefusedError(
                f"nothing to reset: the swap is {phase.text} and the robot is not faulted or"
                " stopped"
            )
        await self.robot.reset(checked=True)
        if self.swap.ctx.active:
            self.swap.note("reset_fault", by, "robot reset")
            await self.swap.persist()
        pending = phase is Phase.RECOVERY_REQUIRED
        after = "recover with resume, abort or clear" if pending else Phase.IDLE.value
        return Outcome(f"robot reset (no motion): {after}")

    async def recover(self, request: Recover) -> Outcome:
        """After `recovery_required`: the operator's decision."""
        return await self._decide(request.decision, request.by)

    async def _decide(self, decision: str, by: str | None) -> Outcome:
        ctx = self.swap.ctx
        if ctx.state is not Phase.RECOVERY_REQUIRED:
            raise RefusedError(f"no recovery pending: the swap is {ctx.state.text}")
        if decision in {"resume", "abort"}:
            await self.robot.reset(checked=True)  # a latched STOP or fault first (no motion)
        if decision == "resume":
            return await self._resume(by)
        if decision == "abort":
            return await self._recover_abort(by)
        if decision == "clear":
            # The operator has put everything in order by hand and says so: the swap ends,
            # and the inventory is learnt again from what the devices report.
            self.swap.note("recover", by, "clear")
            ctx.outcome = "failed"
            ctx.reason = ctx.reason or "cleared by an operator"
            await self.ending.finish(
                "recover_clear", self.reconciler.forget_swap_packs(self.senses.robot)
            )
            self.reconciler.forget_readings()
            return Outcome("cleared: the station is idle")
        raise RefusedError(f"unknown decision {decision!r}: resume, abort or clear")

    async def _resume(self, by: str | None) -> Outcome:
        # Look again: the operator may have put the robot or the lift right by hand.
        ctx = self.swap.ctx
        self.swap.note("recover", by, "resume")
        phase = Phase.ABORTING if ctx.aborting else (ctx.fault_from or Phase.ABORTING)
        if phase not in RESUMABLE:
            raise RefusedError(f"{phase.text} cannot resume: abort or clear")
        ctx.reason = None
        await self.swap.go("resume", phase=phase)
        self.recovery.begin()
        return Outcome(f"checking whether {phase.text} can resume")

    async def _recover_abort(self, by: str | None) -> Outcome:
        status = self.senses.robot.status
        if status is None or status.state != RobotState.IDLE:
            raise RefusedError("the robot must be idle (connected, reset) to abort")
        batch = JournalBatch()
        why = self.robot.settle_in_flight(status, batch) or self.handovers.robot_disagrees(status)
        if why is not None:
            raise RefusedError(f"{why}: check by hand, then clear")
        self.swap.note("recover", by, "abort")
        self.swap.ctx.aborting = True
        await self.swap.go("recover_abort", batch)
        return Outcome(MAKING_SAFE)

    async def set_slot(self, request: SetSlot) -> Outcome:
        """Take a slot out of service or back (not one the swap in progress uses)."""
        slot, ctx = request.slot, self.swap.ctx
        involved = {ctx.reserved_slot, ctx.free_slot} if ctx.active else set()
        if not request.enabled and slot in involved | self.handovers.held():
            raise RefusedError(
                f"slot {slot} is part of swap {ctx.swap_id}: take it out of service after it"
            )
        await self.control.operator.set_slot_enabled(slot, enabled=request.enabled)
        self.swap.changed.set()
        return Outcome(f"slot {slot} {'in service' if request.enabled else 'out of service'}")

    async def set_mode(self, request: SetMode) -> Outcome:
        """Allow new swaps (`auto`) or refuse them; a swap in progress runs to its end."""
        mode = request.mode
        if mode == self.swap.mode:
            return Outcome(f"already {mode}")
        batch = JournalBatch()
        batch.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('mode', ?)", (mode,))
        batch.event("mode_changed", {"from": self.swap.mode, "to": mode})
        await self.events.commit(batch)
        self.swap.mode = mode
        self.swap.changed.set()
        going_on = " (the swap in progress goes on)" if self.swap.ctx.active else ""
        return Outcome(f"mode {mode}{going_on}")
