"""Stopping a swap: all motion first, then the journal, then the phase that waits for a person."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

from controller.store.events import JournalBatch
from controller.swap.bay import Bay
from controller.swap.current import CurrentSwap
from controller.swap.phase import STOPPED, Phase
from controller.swap.robotsteps import RobotSteps
from controller.swap.step import Stop
from drivers import clock

_log = logging.getLogger(__name__)

_ENDED = STOPPED | {Phase.IDLE, Phase.COMPLETE}


class Stops:
    """Faults, E-stops and holds: everything that moves stops now, then the swap says why."""

    def __init__(self, swap: CurrentSwap, bay: Bay, robot: RobotSteps) -> None:
        self.swap = swap
        self.bay = bay
        self.robot = robot

    async def motion(self) -> None:
        """Everything that moves stops now: the lift and the outputs, the robot (at once)."""
        self.bay.lift_moving = False
        stops: list[Awaitable[object]] = [self.bay.apply(clock.monotonic(), {}, stopping=True)]
        if self.robot.abandon():
            stops.append(self.robot.stop_robot())
        await asyncio.gather(*stops)

    async def apply(self, stop: Stop) -> None:
        """Carry out a step's stop."""
        if stop.event == "fail":
            await self.fault(stop.reason)
        else:
            await self.hold(stop.reason, stop.batch)

    async def fault(self, reason: str) -> None:
        """A fault: motion stops, the swap waits in `fault` with the cause (not in a stop)."""
        phase = self.swap.phase
        if phase in _ENDED:
            _log.error("swap: %s (while %s)", reason, phase)
            return
        await self.motion()  # safety first, the journal next
        self.swap.ctx.reason = reason
        _log.error("swap %s fault while %s: %s", self.swap.ctx.swap_id[:8], phase, reason)
        await self.swap.go("fail")

    async def emergency_stop(self) -> None:
        """The E-stop chain opened: motion stops, the swap waits in `estop`."""
        await self.motion()
        self.swap.ctx.reason = "E-stop pressed"
        _log.error("swap %s: E-stop while %s", self.swap.ctx.swap_id[:8], self.swap.phase)
        await self.swap.go("emergency_stop")

    async def hold(self, reason: str, batch: JournalBatch | None = None) -> None:
        """Nothing can be proved: motion stops, an operator decides (`recovery_required`)."""
        await self.motion()
        self.swap.ctx.reason = reason
        _log.error("swap %s: recovery required: %s", self.swap.ctx.swap_id[:8], reason)
        await self.swap.go("hold", batch)
