"""The swap sequencer: one task that drives a swap from authorisation to the vehicle leaving.

Everything that can change what a swap does arrives as an event on one queue (station I/O
polls, robot completions and status reports, requests, the timer), and one consumer handles
them in order, so nothing interleaves inside a transition. After each, the current phase is
evaluated through a table (phase -> the collaborator that runs it) until it stops moving on.

Interlocks (controller/swap/interlocks.py) are evaluated on every event. Before a motion they
hold it back, published as the blocking causes; while it runs, one that fails stops the motion
and faults the swap. Unknown (stale station I/O, a robot not heard from) counts as failing. A
car is never lowered without a locked pack: lowering is interlocked on it, and an abort after
the vehicle's pack came out puts a pack back and locks it first.

The collaborators each hold their own state: the swap as journalled (`current`), what the
station looks like (`senses`), the bay and its outputs (`bay`), the robot's commands
(`robotsteps`), the packs handed over (`handover`, `reconcile`), the reservation, recovery
after a restart, stopping (`stops`), the requests (`handlers`) and the end (`ending`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from controller.charging.control import SlotControl
from controller.config.model import StationConfig
from controller.errors import MismatchError, RefusedError
from controller.safety.actuators import Actuators
from controller.store.events import EventLog, JournalBatch
from controller.store.journal import Journal
from controller.swap import interlocks
from controller.swap.bay import Bay
from controller.swap.current import CurrentSwap
from controller.swap.dispense import ready_counts
from controller.swap.ending import Ending
from controller.swap.handlers import Handlers
from controller.swap.handover import Handovers
from controller.swap.phase import ROBOT_PHASES, STOPPED, Phase
from controller.swap.plan import SwapContext
from controller.swap.reconcile import RackReconciler
from controller.swap.recovery import Recovery
from controller.swap.requests import REQUESTS, Mode, Outcome, SwapRequest
from controller.swap.reservation import Reservation
from controller.swap.robotsteps import RobotDone, RobotSteps
from controller.swap.senses import Facts, Senses
from controller.swap.step import Step, Stop
from controller.swap.stops import Stops
from drivers import clock
from drivers.robot.link import RobotLink
from drivers.robot.protocol import RobotStatus
from drivers.stationio import IoReading, IoSnapshot, StationIoDriver

_log = logging.getLogger(__name__)

_OVER = STOPPED | {Phase.COMPLETE}  # an E-stop or a robot fault no longer interrupts these


@dataclass(frozen=True, slots=True)
class _Io:
    snapshot: IoSnapshot
    at: float


@dataclass(frozen=True, slots=True)
class _Wake:
    at: float


@dataclass
class _Request:
    request: SwapRequest
    reply: asyncio.Future[Outcome]
    at: float = field(default_factory=clock.monotonic)


_Event = _Io | RobotDone | _Wake | _Request
PhaseStep = Callable[[Facts, float], Awaitable[Step]]


class Sequencer:
    """Drives the swap machine; the only writer of the swap's journal rows and of the outputs."""

    def __init__(  # noqa: PLR0917 - the parts it sequences, each needed
        self,
        config: StationConfig,
        journal: Journal,
        events: EventLog,
        control: SlotControl,
        robot: RobotLink,
        io: StationIoDriver,
        actuators: Actuators,
        *,
        poll_slot: Callable[[int], None] | None = None,
    ) -> None:
        self.config, self.journal, self.control, self.io = config, journal, control, io
        self.swap = swap = CurrentSwap(events, actuators)
        self.senses = senses = Senses(
            config, robot, swap, command_out=lambda: self.robot_steps.command_out
        )
        self.handovers = Handovers(config, swap, control, poll_slot=poll_slot or (lambda _: None))
        self.bay = Bay(swap, senses, actuators)
        self.robot_steps = RobotSteps(swap, senses, self.handovers, actuators, done=self._put)
        self.stops = Stops(swap, self.bay, self.robot_steps)
        self.recovery = Recovery(swap, senses, self.robot_steps, self.handovers, self.stops)
        self.reservation = Reservation(config, swap, control, self.handovers)
        self.reconciler = RackReconciler(swap, control, self.handovers)
        self.ending = Ending(swap, control, self.handovers)
        self.handlers = Handlers(
            swap, senses, self.robot_steps, self.stops, self.recovery, self.reservation,
            self.handovers, self.reconciler, self.ending, control, events,
        )  # fmt: skip
        self.last_step = clock.monotonic()
        self._queue: asyncio.Queue[_Event] = asyncio.Queue(maxsize=10_000)
        robot_phase: PhaseStep = self.robot_steps.step
        self._steps: dict[Phase, PhaseStep] = {
            Phase.AUTHORISED: self._open_bay,
            Phase.WAITING_FOR_VEHICLE: self.bay.await_vehicle,
            Phase.POSITIONED: self._positioned,
            Phase.LIFTING: self.bay.lift,
            Phase.LOWERING: self.bay.lift,
            **dict.fromkeys(ROBOT_PHASES | {Phase.ABORTING}, robot_phase),
            Phase.RELEASING: self.bay.releasing,
            Phase.COMPLETE: self._complete,
            **dict.fromkeys(STOPPED, self._stopped),
        }

    # --- what others read -----------------------------------------------------------------

    @property
    def ctx(self) -> SwapContext:
        """The swap's context (read it in the sequencer's task, or between its steps)."""
        return self.swap.ctx

    @property
    def mode(self) -> Mode:
        """Whether new swaps are allowed (`auto`) or refused."""
        return self.swap.mode

    @property
    def blocking(self) -> list[str]:
        """What keeps the swap (or a new one) from going on now."""
        return self.swap.blocking

    @property
    def changed(self) -> asyncio.Event:
        """Set whenever something publishable changed."""
        return self.swap.changed

    @property
    def recovering(self) -> bool:
        """After a restart: checking whether the swap in progress can resume."""
        return self.recovery.active

    def facts(self, now: float | None = None) -> dict[str, bool | None]:
        """Everything the interlocks look at; None where unknown (which is never safe)."""
        return self.senses.facts(now)

    def io_reading(self, now: float) -> tuple[IoReading | None, str]:
        """The station I/O reading if it can be trusted now, else None and why not."""
        return self.senses.io_reading(now)

    def packs_ready(self) -> dict[str, int]:
        """Packs that could be dispensed now, per type (the reserved one is not)."""
        return ready_counts(self.config, self.control, exclude=self.handovers.not_to_dispense())

    # --- inputs (from other tasks; never block) -------------------------------------------

    def on_io(self, snapshot: IoSnapshot) -> None:
        """The station I/O poller's callback."""
        self._put(_Io(snapshot, clock.monotonic()))

    def on_robot_status(self, _status: RobotStatus) -> None:
        """The robot reported (a REPORT, a completion): robot facts may have changed."""
        self._put(_Wake(clock.monotonic()))

    def wake(self) -> None:
        """Something the sequencer looks at changed (slot data, alarms)."""
        self._put(_Wake(clock.monotonic()))

    def _put(self, event: _Event) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            _log.error("swap sequencer is not keeping up; an input was dropped")

    async def submit(self, request: SwapRequest) -> Outcome:
        """Run a request in the sequencer's task; its outcome, or `RefusedError` saying why."""
        reply: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._put(_Request(request, reply))
        return await reply

    async def request(self, name: str, **args: object) -> Outcome:
        """`submit` by the request's name (`start_swap`, ...), its arguments parsed strictly."""
        kind = REQUESTS.get(name)
        if kind is None:
            raise RefusedError(f"unknown request {name!r}")
        return await self.submit(kind.model_validate(args, strict=True))

    # --- lifecycle --------------------------------------------------------------------------

    async def load(self) -> None:
        """Restore the mode, the inventory and the swap in progress from the journal."""
        await self.swap.load(self.journal)

    async def note_orderly_stop(self, *, robot_stopped: bool) -> None:
        """The daemon stops in order: journalled, so that the next start resumes the swap."""
        await self.recovery.note_orderly_stop(robot_stopped=robot_stopped)

    async def run(self) -> None:
        """Consume events for ever (recovering a swap in progress first)."""
        swap = self.swap
        if swap.ctx.active:
            # In the record's operator actions, whatever the phase (a fault's too).
            swap.note("restart", None, swap.phase.value)
            swap.defer(JournalBatch())
            if swap.phase not in STOPPED:
                self.recovery.begin()
        self.last_step = clock.monotonic()
        swap.changed.set()
        every = self.config.swap.evaluate_every_s  # timeouts and staleness: noticed this often
        while True:
            event: _Event | None = None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(every):
                    event = await self._queue.get()
            now = clock.monotonic()
            if now - self.last_step > self.senses.io_stale_after_s:
                # The process did not run for a while (frozen, swapped out, a debugger): say
                # so, rather than blame the station I/O whose data aged meanwhile.
                self.senses.stall = (now - self.last_step, now)
                _log.error("the swap sequencer did not run for %.1f s", now - self.last_step)
            # The overhead is measured from the event that ends a step to the next command.
            swap.event_at = swap.step_ended_at = None
            while event is not None:
                await self._handle(event)
                event = None if self._queue.empty() else self._queue.get_nowait()
            try:
                await self._evaluate()
            except MismatchError as exc:
                await self.stops.fault(f"pack mismatch: {exc}")
            self.last_step = clock.monotonic()
            if self.last_step - now > self.senses.io_stale_after_s:
                # Frozen in the middle of a step (awaiting its write-ahead commit, say): the
                # station I/O aged meanwhile just the same; the next step must know why.
                self.senses.stall = (self.last_step - now, self.last_step)
                _log.error("one swap sequencer step took %.1f s", self.last_step - now)

    async def _handle(self, event: _Event) -> None:
        if isinstance(event, RobotDone):
            try:
                stop = self.robot_steps.finished(event)
            except MismatchError as exc:
                stop = Stop.fault(f"pack mismatch: {exc}")
            if stop is not None:
                await self.stops.apply(stop)
            return
        self.swap.event_at = event.at
        if isinstance(event, _Io):
            self.senses.snapshot = event.snapshot
        elif isinstance(event, _Request):
            await self._run_request(event)

    async def _run_request(self, item: _Request) -> None:
        name = type(item.request).__name__
        try:
            outcome = await self.handlers.handle(item.request)
            await self.swap.flush()  # durable before the reply says so
        except RefusedError as exc:
            _log.info("%s refused: %s", name, exc)
            if not item.reply.done():
                item.reply.set_exception(exc)
        except Exception as exc:
            _log.exception("%s failed", name)
            if not item.reply.done():
                item.reply.set_exception(exc)
            raise
        else:
            if not item.reply.done():
                item.reply.set_result(outcome)

    # --- the step ---------------------------------------------------------------------------

    async def _evaluate(self) -> None:
        """Move the swap on as far as the facts allow (after every event and timer tick)."""
        swap, now = self.swap, clock.monotonic()
        self.handovers.release_emptied(now)
        batch = self.reconciler.reconcile(now)
        if batch:
            # Committed with this evaluation's first write, before any command it sends, or
            # at its end: one fsync where there were two (what the racks report is reported
            # again after a crash, so nothing is lost in between).
            swap.defer(batch)
        facts = self.senses.facts(now)
        if self.recovery.active:
            await self.bay.apply(now, {})
            await self.recovery.check(now)
            await swap.flush()
            return
        causes: list[str] = []
        for _ in range(len(Phase)):  # transitions that follow at once
            phase = swap.phase
            if phase is Phase.IDLE:
                causes = self.senses.station_causes(facts)
                break
            if facts.get("estop_ok") is False and phase not in _OVER:
                await self.stops.emergency_stop()
                continue
            robot_fault = self.senses.robot_fault()
            if robot_fault is not None and phase not in _OVER:
                await self.stops.fault(robot_fault)
                continue
            step = await self._steps[phase](facts, now)
            if isinstance(step, Stop):
                await self.stops.apply(step)
                step = []
            causes = step
            if swap.phase is phase:
                break
            facts = self.senses.facts()
        swap.set_blocking(causes)
        await swap.flush()
        await self.bay.apply(now, self.bay.desired())
        if swap.ctx.active:
            await self._check_timeout()
        await swap.flush()

    async def _open_bay(self, _facts: Facts, _now: float) -> Step:
        await self.swap.go("open_bay")
        return []

    async def _positioned(self, facts: Facts, _now: float) -> Step:
        causes = self.senses.failing(Phase.LIFTING, facts)
        causes += await self.reservation.confirm()
        if causes:
            return causes
        await self.swap.go("lift")
        return []

    async def _complete(self, _facts: Facts, _now: float) -> Step:
        await self.ending.finish()
        return []

    async def _stopped(self, facts: Facts, _now: float) -> Step:
        """fault, estop, recovery_required: a person decides; say what is still wrong."""
        ctx, phase = self.swap.ctx, self.swap.phase
        causes: list[str] = []
        if phase is Phase.ESTOP:
            if facts.get("estop_ok") is True:
                causes.append("E-stop released: reset_fault to make the vehicle safe")
            else:
                causes.append(self.senses.why(interlocks.ESTOP, facts))
        elif phase is Phase.FAULT:
            causes.append(f"fault: {ctx.reason}; reset_fault to make the vehicle safe")
        else:
            causes.append(f"recovery required: {ctx.reason}; recover with resume, abort or clear")
        # What would still stop the vehicle from being made safe (removed once it clears).
        next_phase = Phase.ABORTING if ctx.pack_locked is False else Phase.LOWERING
        causes += [c for c in self.senses.failing(next_phase, facts) if c not in causes]
        return causes

    async def _check_timeout(self) -> None:
        swap = self.swap
        phase = swap.phase
        limit = self.config.swap.step_timeouts_s.model_dump().get(phase.value)
        if limit is None or clock.wall() - swap.ctx.phase_started_at <= limit:
            return
        if phase in {Phase.WAITING_FOR_VEHICLE, Phase.POSITIONED}:
            what = (
                "the vehicle did not arrive"
                if phase is Phase.WAITING_FOR_VEHICLE
                else "the vehicle could not be lifted"
            )
            blocking = f" ({'; '.join(swap.blocking)})" if swap.blocking else ""
            swap.ctx.reason = f"{what} within {limit:g} s{blocking}"
            await swap.go("cancel")
        elif phase is Phase.RELEASING:
            cause = f"the vehicle has not left after {limit:g} s"
            if cause not in swap.blocking:
                swap.set_blocking([*swap.blocking, cause])
        else:
            await self.stops.fault(f"{phase.text} took longer than {limit:g} s")
