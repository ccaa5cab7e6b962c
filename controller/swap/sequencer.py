"""The swap sequencer: one task that drives a swap from authorisation to the vehicle leaving.

Everything that can change what a swap does arrives as an event on one queue (station I/O
polls, robot completions and status reports, operator commands, the timer), and one consumer
handles them in order, so nothing interleaves inside a transition. Each transition is
journalled before the physical command it leads to is sent (write-ahead), and each robot
command is journalled as sent before it goes out, so a restart always knows what might have
been in flight.

Interlocks (controller/swap/interlocks.py) are evaluated on every event. Before a motion they hold
it back, published as the blocking causes; while it runs, one that fails stops the motion and
faults the swap. Unknown (stale station I/O, a robot not heard from) counts as failing. A car is
never lowered without a locked pack: lowering is interlocked on it, and an abort after the
vehicle's pack came out puts a pack back and locks it first.

The station's outputs (lift, gate, green light) are a function of the phase: the sequencer
writes them when they differ from what the PLC reports, so a PLC that rebooted with its coils
off gets them back, and a restart begins with every output off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from controller.charging.control import SlotControl
from controller.charging.power import ready_text
from controller.charging.slots import SlotView
from controller.config.model import StationConfig
from controller.errors import (
    BusyError,
    MismatchError,
    NoPackError,
    RefusedError,
    SafetyRefusedError,
)
from controller.safety.actuators import Actuators
from controller.safety.supervisor import Verdict
from controller.store.events import EventLog, JournalBatch
from controller.store.journal import Journal
from controller.store.records import NewSwapRecord, OperatorAction, PackRef, StepTiming, insert_sync
from controller.swap import interlocks
from controller.swap.dispense import choose, ready_counts, slot_free, still_dispensable
from controller.swap.inventory import Inventory, Place
from controller.swap.machine import SwapMachine, event_to
from controller.swap.plan import (
    OperatorNote,
    RobotAction,
    StepTime,
    SwapContext,
    Where,
    abort_plan,
    phase_plan,
    proven_done,
)
from drivers.errors import DriverError
from drivers.robot.link import RobotLink
from drivers.robot.protocol import FaultCode, MsgType, RobotState, RobotStatus, Target
from drivers.stationio import IoReading, IoSnapshot, StationIoDriver

_log = logging.getLogger(__name__)

TICK_S = 0.05  # the timer: timeouts and staleness are noticed at least this often
RECOVERY_WAIT_S = 10.0  # after a restart, how long to wait for the robot and the station I/O
RECOVERY_BUSY_WAIT_S = 60.0  # ... and for a robot still finishing a command
OUTPUT_RETRY_S = 0.25  # a failed or not yet effective output write is retried this often
OUTPUT_TIMEOUT_S = 1.0  # longest an output write may take (it is read back)
CHARGER_OFF_A = 2.0  # a charger below this current, disabled, is off: its pack may be taken
OVERHEAD_SAMPLES = 10_000
MAX_ABORT_COMMANDS = 12  # an abort plan is at most 7 commands; more means it goes round
HANDOVER_SETTLE_S = 2.0  # after a pack was put in or taken out, its charger settles this long
STALLED = "the controller itself was stalled"

Mode = Literal["auto", "maintenance", "out_of_service"]
MODES: tuple[Mode, ...] = ("auto", "maintenance", "out_of_service")
OUTPUTS = ("lift_raise", "lift_lower", "gate_open", "signal_go")
IO_INPUTS = (
    "vehicle_present", "vehicle_in_position", "vehicle_hv_off", "doors_closed",
    "brake_gear_ok", "lift_up", "lift_down", "estop_ok", "light_curtain_clear", "gate_open",
    "plc_ok",
)  # fmt: skip
ROBOT_PHASES = frozenset({"removing", "storing", "fetching", "installing", "locking"})
PHASE_DONE = {
    "removing": "removed", "storing": "stored", "fetching": "fetched", "installing": "installed",
    "locking": "locked",
}  # fmt: skip
WAITING_FOR = (
    interlocks.PRESENT, interlocks.IN_POSITION, interlocks.HV_OFF, interlocks.DOORS,
    interlocks.BRAKE,
)  # fmt: skip
STOPPED_STATES = frozenset({"fault", "estop", "recovery_required"})


@dataclass(frozen=True, slots=True)
class _Io:
    snapshot: IoSnapshot
    at: float


@dataclass(frozen=True, slots=True)
class _RobotDone:
    token: int
    action: RobotAction
    result: RobotStatus | DriverError | SafetyRefusedError
    at: float


@dataclass(frozen=True, slots=True)
class _Wake:
    at: float


@dataclass
class _Command:
    name: str
    args: dict[str, Any]
    reply: asyncio.Future[str]
    at: float = field(default_factory=time.monotonic)


_Event = _Io | _RobotDone | _Wake | _Command


@dataclass
class _Outputs:
    """The outputs as last written, and when."""

    written: dict[str, bool] = field(default_factory=dict)
    at: float = 0.0
    error: str | None = None


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
        assert config.station_io is not None
        self.config = config
        self.journal = journal
        self.events = events
        self.control = control
        self.robot = robot
        self.io = io
        self.actuators = actuators  # every command to machinery goes through it
        self.io_stale_after_s = config.station_io.stale_after
        self.io_heartbeat_timeout_s = config.station_io.heartbeat_timeout_s
        self.poll_slot = poll_slot or (lambda _slot: None)
        self.inventory = Inventory()
        self.ctx = SwapContext()
        self.machine = SwapMachine(self.ctx)
        self.mode: Mode = "auto"
        self.blocking: list[str] = []
        self.changed = asyncio.Event()  # set whenever something publishable changed
        self.last_step = time.monotonic()
        self.io_snapshot: IoSnapshot | None = None
        self.overheads_ms: deque[float] = deque(maxlen=OVERHEAD_SAMPLES)
        # Called (synchronously) on every transition with (from, to): for tests and tools.
        self.on_phase: list[Callable[[str, str], None]] = []
        # ... and on every command sent to the machinery, with (phase, what). What went out,
        # with the facts it was sent under, is in the journal's motion log.
        self.on_command: list[Callable[[str, str], None]] = []
        self._queue: asyncio.Queue[_Event] = asyncio.Queue(maxsize=10_000)
        self._robot_task: asyncio.Task[None] | None = None
        self._robot_token = 0
        self._lift_moving = False
        self._outputs = _Outputs()
        self._recovering = False
        self._recover_since = 0.0
        self._deferred: JournalBatch | None = None
        self._release_when_empty: set[int] = set()
        self._event_at: float | None = None  # when the event being handled happened
        self._step_ended_at: float | None = None  # the device event that ended the last step
        self._reconciled_at: dict[int, float] = {}  # slot -> time of the reading reconciled
        self._handover_at: dict[int, float] = {}  # slot -> when a pack last moved there or out
        self._entered_at = 0.0  # monotonic time the current phase was entered
        self._stall = (0.0, 0.0)  # the last stall of this task: (seconds, when it ended)

    @property
    def recovering(self) -> bool:
        """After a restart: checking whether the swap in progress can resume."""
        return self._recovering

    # --- inputs (from other tasks; never block) ------------------------------------------------

    def on_io(self, snapshot: IoSnapshot) -> None:
        """The station I/O poller's callback."""
        self._put(_Io(snapshot, time.monotonic()))

    def on_robot_status(self, _status: RobotStatus) -> None:
        """The robot reported (a REPORT, a completion): robot facts may have changed."""
        self._put(_Wake(time.monotonic()))

    def wake(self) -> None:
        """Something the sequencer looks at changed (slot data, alarms)."""
        self._put(_Wake(time.monotonic()))

    def _put(self, event: _Event) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            _log.error("swap sequencer is not keeping up; an input was dropped")

    async def request(self, name: str, **args: Any) -> str:
        """Ask for something (start_swap, abort, reset_fault, recover, set_mode).

        Returns what was done; raises `RefusedError` with the reason when not allowed.
        """
        reply: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._put(_Command(name, args, reply))
        return await reply

    # --- lifecycle ---------------------------------------------------------------------------

    async def load(self) -> None:
        """Restore the mode, the inventory and the swap in progress from the journal."""

        def read(conn: sqlite3.Connection) -> tuple[Inventory, str | None, str | None]:
            row = conn.execute("SELECT body FROM swap_current WHERE id = 1").fetchone()
            mode = conn.execute("SELECT value FROM meta WHERE key = 'mode'").fetchone()
            return Inventory.load(conn), row[0] if row else None, mode[0] if mode else None

        self.inventory, body, mode = await self.journal.call(read)
        if mode in MODES:
            self.mode = mode
        if body is not None:
            self.ctx = SwapContext.model_validate_json(body)
            self.machine = SwapMachine(self.ctx)  # at the journalled state
            if self.ctx.active:
                _log.warning(
                    "swap %s for %s was %s when the controller stopped: recovering",
                    self.ctx.swap_id,
                    self.ctx.vehicle_id,
                    self.ctx.state,
                )

    async def run(self) -> None:
        """Consume events for ever (recovering a swap in progress first)."""
        if self.ctx.active:
            # In the record's operator actions, whatever the phase (a fault's too).
            self.ctx.operator.append(
                OperatorNote(at=time.time(), action="restart", detail=self.ctx.state)
            )
            self._defer(JournalBatch())
        if self.ctx.active and self.ctx.state not in STOPPED_STATES:
            self._recovering = True
        self._recover_since = self.last_step = time.monotonic()
        self.changed.set()
        while True:
            event: _Event | None = None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TICK_S):
                    event = await self._queue.get()
            now = time.monotonic()
            if now - self.last_step > self.io_stale_after_s:
                # The process did not run for a while (frozen, swapped out, a debugger): say
                # so, rather than blame the station I/O whose data aged meanwhile.
                self._stall = (now - self.last_step, now)
                _log.error("the swap sequencer did not run for %.1f s", now - self.last_step)
            # The overhead is measured from the event that ends a step to the next command.
            self._event_at = self._step_ended_at = None
            while event is not None:
                await self._handle(event)
                event = None if self._queue.empty() else self._queue.get_nowait()
            try:
                await self._evaluate()
            except MismatchError as exc:
                await self._fault(f"pack mismatch: {exc}")
            self.last_step = time.monotonic()

    async def _handle(self, event: _Event) -> None:
        if isinstance(event, _Io):
            self.io_snapshot = event.snapshot
            self._event_at = event.at
        elif isinstance(event, _RobotDone):
            if event.token == self._robot_token:
                self._robot_task = None
                self._event_at = event.at
                try:
                    await self._robot_finished(event.action, event.result)
                except MismatchError as exc:
                    await self._fault(f"pack mismatch: {exc}")
        elif isinstance(event, _Wake):
            self._event_at = event.at
        else:
            self._event_at = event.at
            await self._run_command(event)

    async def _run_command(self, cmd: _Command) -> None:
        try:
            result = await self._command(cmd.name, cmd.args)
            await self._flush()  # durable before the reply says so
        except RefusedError as exc:
            _log.info("%s refused: %s", cmd.name, exc)
            if not cmd.reply.done():
                cmd.reply.set_exception(exc)
        except Exception as exc:
            _log.exception("%s failed", cmd.name)
            if not cmd.reply.done():
                cmd.reply.set_exception(exc)
            raise
        else:
            if not cmd.reply.done():
                cmd.reply.set_result(result)

    # --- what the station looks like ---------------------------------------------------------

    def io_reading(  # noqa: PLR0911 - one return per reason, in order
        self, now: float
    ) -> tuple[IoReading | None, str]:
        """The station I/O reading if it can be trusted now, else None and why not."""
        snap = self.io_snapshot
        if snap is None or snap.reading is None:
            return None, "station I/O not read yet"
        if not snap.online:
            return None, "station I/O not answering"
        reading = snap.reading
        # A failed poll alone does not make the inputs unknown: their age does, and
        # `stale_after` leaves room for one failing poll (docs/architecture.md).
        if now - reading.at > self.io_stale_after_s:
            stall, resumed = self._stall
            if stall > self.io_stale_after_s and reading.at <= resumed:
                # Old because this process did not run, not because the I/O failed.
                return None, f"{STALLED} for {stall:.1f} s"
            if snap.consecutive_failures:
                return None, "station I/O not answering"
            return None, "station I/O data too old"
        if reading.at - reading.heartbeat_since > self.io_heartbeat_timeout_s:
            return None, "station PLC heartbeat stopped"
        return reading, ""

    def facts(self, now: float | None = None) -> dict[str, bool | None]:
        """Everything the interlocks look at; None where unknown (which is never safe)."""
        now = time.monotonic() if now is None else now
        reading, _ = self.io_reading(now)
        facts: dict[str, bool | None] = dict.fromkeys(IO_INPUTS)
        if reading is not None:
            facts.update(reading.inputs)
        gate = facts.get("gate_open")
        facts["gate_closed"] = None if gate is None else not gate
        facts["robot_clear"] = self._robot_clear()
        facts["pack_locked"] = self.ctx.pack_locked
        return facts

    def _robot_clear(self) -> bool | None:
        status = self.robot.status
        if status is None or not self.robot.ready.is_set():
            return None
        return (
            status.state == RobotState.IDLE
            and not self.robot.busy
            and self._robot_task is None
            and status.position in {Target.HOME, Target.SLOT}
        )

    def _robot_fault(self) -> str | None:
        """The robot reports a fault of its own (none while our command is out: its outcome will).

        Also a STOP latched by someone else (the robot's own panel).
        """
        status = self.robot.status
        if status is None or self._robot_task is not None:
            return None
        if status.state in {RobotState.FAULT, RobotState.STOPPED}:
            try:
                code = FaultCode(status.fault).name.lower()
            except ValueError:
                code = str(status.fault)
            return f"robot {RobotState(status.state).name.lower()} ({code})"
        return None

    def _why(self, cond: interlocks.Condition, facts: Mapping[str, bool | None]) -> str:
        if facts.get(cond.name) is not None:
            return cond.message
        if cond.name == "robot_clear":
            return f"{cond.message} (robot not connected)"
        _, why = self.io_reading(time.monotonic())
        if why.startswith(STALLED):
            return f"{why}: nothing was supervised meanwhile"  # the cause, not a sensor
        return f"{cond.name.replace('_', ' ')} unknown ({why or 'no data'})"

    def _failing(self, phase: str, facts: Mapping[str, bool | None]) -> list[str]:
        return [self._why(c, facts) for c in interlocks.failing(phase, facts)]

    def station_causes(self, facts: Mapping[str, bool | None]) -> list[str]:
        """What stops a swap from starting now (empty: a swap may start)."""
        causes: list[str] = []
        if self.mode != "auto":
            causes.append(f"station in {self.mode.replace('_', ' ')} mode")
        reading, why = self.io_reading(time.monotonic())
        if reading is None:
            causes.append(why)
        else:
            if facts.get("estop_ok") is False:
                causes.append(interlocks.ESTOP.message)
            if facts.get("plc_ok") is False:
                causes.append(interlocks.IO_OK.message)
        status = self.robot.status
        if status is None or not self.robot.ready.is_set():
            causes.append(f"robot link {self.robot.state.value}")
        elif status.state in {RobotState.FAULT, RobotState.STOPPED}:
            causes.append(f"robot {RobotState(status.state).name.lower()}: needs a reset")
        return causes

    def packs_ready(self) -> dict[str, int]:
        """Packs that could be dispensed now, per type (the reserved one is not)."""
        return ready_counts(self.config, self.control, exclude=self._not_to_dispense())

    def _held(self) -> set[int]:
        """Slots the swap holds (a handover in progress, or a slot not yet seen empty)."""
        return set(self.control.swap_held) | self._release_when_empty

    def _not_to_dispense(self) -> set[int]:
        """Slots whose pack is not for a new swap: reserved, held, or just handed over."""
        now = time.monotonic()
        slots = self._held()
        slots |= {s for s, at in self._handover_at.items() if now - at < HANDOVER_SETTLE_S}
        if self.ctx.active:
            slots.add(self.ctx.reserved_slot)
        return slots

    # --- operator and back-end requests ---------------------------------------------------------

    async def _command(self, name: str, args: dict[str, Any]) -> str:
        by = args.get("by")
        if name == "start_swap":
            return await self._start(str(args["vehicle_id"]), str(args["pack_type"]))
        if name == "abort":
            return await self._abort(str(args.get("reason") or "aborted by an operator"), by)
        if name == "reset_fault":
            return await self._reset(by)
        if name == "recover":
            return await self._recover_decision(str(args["decision"]), by)
        if name == "set_mode":
            return await self._set_mode(str(args["mode"]))
        if name == "set_slot":
            return await self._set_slot(int(args["slot"]), enabled=bool(args["enabled"]))
        raise RefusedError(f"unknown request {name!r}")

    async def _start(self, vehicle_id: str, pack_type: str) -> str:
        if self.ctx.active:
            raise BusyError(
                f"busy: swap {self.ctx.swap_id} for {self.ctx.vehicle_id} is"
                f" {self.ctx.state.replace('_', ' ')}"
            )
        if not vehicle_id or not pack_type:
            raise RefusedError("vehicle_id and pack_type are required")
        causes = self.station_causes(self.facts())
        if causes:
            raise RefusedError("; ".join(causes))
        try:
            pick = choose(
                self.config,
                self.control,
                pack_type,
                exclude=self._not_to_dispense(),
                busy=self._held(),
            )
        except NoPackError as exc:
            text = str(exc)
            if not text.startswith("no free slot"):
                when = ready_text(self.control.forecast, pack_type)
                text += f"; {when}" if when else ""
            raise RefusedError(text) from None
        self.ctx = SwapContext(
            vehicle_id=vehicle_id,
            pack_type=pack_type,
            reserved_slot=pick.slot,
            reserved_serial=pick.serial,
            reserved_soc=pick.soc,
            free_slot=pick.free_slot,
        )
        self.machine = SwapMachine(self.ctx)
        self._lift_moving = False
        batch = JournalBatch()
        batch.event(
            "swap_started",
            {
                "swap_id": self.ctx.swap_id,
                "vehicle_id": vehicle_id,
                "pack_type": pack_type,
                "reserved": {"slot": pick.slot, "serial": pick.serial, "soc": pick.soc},
                "free_slot": pick.free_slot,
            },
        )
        await self._go("authorise", batch)
        _log.info(
            "swap %s for %s: pack %s in slot %d reserved; its pack goes to slot %d",
            self.ctx.swap_id,
            vehicle_id,
            pick.serial,
            pick.slot,
            pick.free_slot,
        )
        return self.ctx.swap_id

    async def _abort(self, reason: str, by: str | None) -> str:
        state = self.ctx.state
        if state in {"authorised", "waiting_for_vehicle", "positioned"}:
            self._note("abort", by, reason)
            self.ctx.reason = reason
            await self._go("cancel")
            return "cancelled: nothing had moved"
        if state in {"lifting", "removing", "storing", "fetching", "installing", "locking"}:
            await self._stop_motion()
            self._note("abort", by, reason)
            self.ctx.reason, self.ctx.aborting = reason, True
            try:
                status = await self._robot_reset()
            except RefusedError as exc:
                await self._fault(f"aborting: {exc}")
                return f"fault: {exc}"
            batch = JournalBatch()
            why = self._settle_in_flight(status, batch) if status is not None else None
            if why is not None:
                await self._hold(why, batch)
                return f"recovery required: {why}"
            await self._go("abort", batch)
            return "aborting: the vehicle gets a locked pack back, then it is lowered"
        if state in {"fault", "estop"}:
            return await self._reset(by, reason)
        if state == "recovery_required":
            return await self._recover_decision("abort", by)
        raise RefusedError(
            {
                "idle": "no swap in progress",
                "aborting": "already aborting",
                "lowering": "the vehicle has a locked pack and is being lowered",
                "releasing": "the vehicle has a locked pack and is being released",
                "complete": "the swap is complete",
            }.get(state, f"cannot abort while {state}")
        )

    async def _reset(self, by: str | None, detail: str | None = None) -> str:
        state = self.ctx.state
        if state not in {"fault", "estop"}:
            # Outside a swap's fault: the robot's own latch (a STOP, a fault), if it has one.
            status = self.robot.status
            if status is None or status.state not in {RobotState.FAULT, RobotState.STOPPED}:
                raise RefusedError(
                    f"nothing to reset: the swap is {state.replace('_', ' ')} and the robot"
                    " is not faulted or stopped"
                )
            await self._robot_reset(checked=True)
            if self.ctx.active:
                self._note("reset_fault", by, "robot reset")
                await self._persist()
            return "robot reset (no motion): " + (
                "recover with resume, abort or clear" if state == "recovery_required" else "idle"
            )
        facts = self.facts()
        if facts.get("estop_ok") is not True:
            raise RefusedError(self._why(interlocks.ESTOP, facts))
        status = await self._robot_reset()
        self._note("reset_fault", by, detail or self.ctx.reason)
        self.ctx.aborting = True
        batch = JournalBatch()
        if status is not None:
            why = self._settle_in_flight(status, batch)
            if why is not None:
                await self._hold(why, batch)
                return f"recovery required: {why}"
        await self._go("reset", batch)
        return "aborting: the vehicle gets a locked pack back, then it is lowered"

    async def _robot_reset(self, *, checked: bool = False) -> RobotStatus | None:
        """RESET a faulted or stopped robot (no motion: it clears the latch); its status.

        `checked`: refused unless the E-stop chain is closed, on fresh station I/O.
        """
        if not self.robot.ready.is_set():
            raise RefusedError(f"robot link {self.robot.state.value}: cannot reset it")
        if checked:
            facts = self.facts()
            if facts.get("estop_ok") is not True:
                raise RefusedError(f"robot not reset: {self._why(interlocks.ESTOP, facts)}")
        status = self.robot.status
        if status is not None and status.state in {RobotState.FAULT, RobotState.STOPPED}:
            try:
                status = await self.actuators.robot_command(MsgType.RESET)
            except DriverError as exc:
                raise RefusedError(f"robot reset failed: {exc}") from exc
        return status

    async def _recover_decision(self, decision: str, by: str | None) -> str:
        if self.ctx.state != "recovery_required":
            raise RefusedError(
                f"no recovery pending: the swap is {self.ctx.state.replace('_', ' ')}"
            )
        if decision in {"resume", "abort"}:
            await self._robot_reset(checked=True)  # a latched STOP or fault first (no motion)
        if decision == "resume":
            # Look again: the operator may have put the robot or the lift right by hand.
            self._note("recover", by, "resume")
            state = "aborting" if self.ctx.aborting else (self.ctx.fault_from or "aborting")
            if event_to(self.machine, f"resume_{state}") is None:
                raise RefusedError(f"{state.replace('_', ' ')} cannot resume: abort or clear")
            self.ctx.reason = None
            await self._go(f"resume_{state}")
            self._recovering = True
            self._recover_since = time.monotonic()
            return f"checking whether {state.replace('_', ' ')} can resume"
        if decision == "abort":
            status = self.robot.status
            if status is None or status.state != RobotState.IDLE:
                raise RefusedError("the robot must be idle (connected, reset) to abort")
            batch = JournalBatch()
            why = self._settle_in_flight(status, batch) or self._robot_disagrees(status)
            if why is not None:
                raise RefusedError(f"{why}: check by hand, then clear")
            self._note("recover", by, "abort")
            self.ctx.aborting = True
            await self._go("recover_abort", batch)
            return "aborting: the vehicle gets a locked pack back, then it is lowered"
        if decision == "clear":
            # The operator has put everything in order by hand and says so: the swap ends,
            # and the inventory is learnt again from what the devices report.
            self._note("recover", by, "clear")
            self.ctx.outcome = "failed"
            self.ctx.reason = self.ctx.reason or "cleared by an operator"
            await self._finish_swap("recover_clear", self._forget_swap_packs())
            self._reconciled_at.clear()
            return "cleared: the station is idle"
        raise RefusedError(f"unknown decision {decision!r}: resume, abort or clear")

    async def _set_slot(self, slot: int, *, enabled: bool) -> str:
        ctx = self.ctx
        involved = {ctx.reserved_slot, ctx.free_slot} if ctx.active else set()
        if not enabled and slot in involved | self._held():
            raise RefusedError(
                f"slot {slot} is part of swap {ctx.swap_id}: take it out of service after it"
            )
        try:
            await self.control.set_slot_enabled(slot, enabled=enabled)
        except RefusedError as exc:
            raise RefusedError(str(exc)) from None
        self.changed.set()
        return f"slot {slot} {'in service' if enabled else 'out of service'}"

    async def _set_mode(self, mode: str) -> str:
        if mode not in MODES:
            raise RefusedError(f"unknown mode {mode!r}: {', '.join(MODES)}")
        if mode == self.mode:
            return f"already {mode}"
        batch = JournalBatch()
        batch.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('mode', ?)", (mode,))
        batch.event("mode_changed", {"from": self.mode, "to": mode})
        await self.events.commit(batch)
        self.mode = mode
        self.changed.set()
        # A swap in progress runs to its end: new swaps are refused.
        return f"mode {mode}" + (" (the swap in progress goes on)" if self.ctx.active else "")

    # --- the step ------------------------------------------------------------------------------

    async def _evaluate(self) -> None:
        """Move the swap on as far as the facts allow (after every event and timer tick)."""
        now = time.monotonic()
        self._release_emptied(now)
        batch = self._reconcile_racks(now)
        if batch:
            # Committed with this evaluation's first write, before any command it sends, or
            # at its end: one fsync where there were two (what the racks report is reported
            # again after a crash, so nothing is lost in between).
            self._defer(batch)
        facts = self.facts(now)
        if self._recovering:
            await self._apply_outputs(now, {})
            await self._recover(now)
            await self._flush()
            return
        causes: list[str] = []
        for _ in range(len(SwapMachine.states)):  # transitions that follow at once
            state = self.ctx.state
            if state == "idle":
                causes = self.station_causes(facts)
                break
            if facts.get("estop_ok") is False and state not in {*STOPPED_STATES, "complete"}:
                await self._emergency_stop()
                continue
            robot_fault = self._robot_fault()
            if robot_fault is not None and state not in {*STOPPED_STATES, "complete"}:
                await self._fault(robot_fault)
                continue
            causes = await self._step(state, facts, now)
            if self.ctx.state == state:
                break
            facts = self.facts()
        self._set_blocking(causes)
        await self._flush()
        await self._apply_outputs(now, self._desired())
        if self.ctx.active:
            await self._check_timeout()
        await self._flush()

    async def _step(  # noqa: PLR0911 - one branch per phase
        self, state: str, facts: dict[str, bool | None], now: float
    ) -> list[str]:
        """One evaluation of the current phase; returns its blocking causes."""
        if state == "authorised":
            await self._go("open_bay")
            return []
        if state == "waiting_for_vehicle":
            return await self._await_vehicle(facts)
        if state == "positioned":
            return await self._positioned(facts)
        if state in {"lifting", "lowering"}:
            return await self._lift(state, facts)
        if state in ROBOT_PHASES or state == "aborting":
            return await self._robot_phase(state, facts, now)
        if state == "releasing":
            return await self._releasing(facts)
        if state == "complete":
            await self._finish_swap()
            return []
        # fault, estop, recovery_required: an operator decides; say what is still wrong.
        return self._stopped_causes(state, facts)

    def _stopped_causes(self, state: str, facts: Mapping[str, bool | None]) -> list[str]:
        ctx = self.ctx
        causes: list[str] = []
        if state == "estop":
            if facts.get("estop_ok") is True:
                causes.append("E-stop released: reset_fault to make the vehicle safe")
            else:
                causes.append(self._why(interlocks.ESTOP, facts))
        elif state == "fault":
            causes.append(f"fault: {ctx.reason}; reset_fault to make the vehicle safe")
        else:
            causes.append(f"recovery required: {ctx.reason}; recover with resume, abort or clear")
        # What would still stop the vehicle from being made safe (removed once it clears).
        phase = "aborting" if ctx.pack_locked is False else "lowering"
        causes += [c for c in self._failing(phase, facts) if c not in causes]
        return causes

    async def _await_vehicle(self, facts: Mapping[str, bool | None]) -> list[str]:
        missing = [c for c in WAITING_FOR if facts.get(c.name) is not True]
        if missing:
            return ["waiting for the vehicle: " + ", ".join(self._why(c, facts) for c in missing)]
        reading, _ = self.io_reading(time.monotonic())
        seen = reading.vehicle_id if reading is not None else None
        if seen is None:
            return ["cannot read the vehicle's id"]
        if seen != self.ctx.vehicle_id:
            return [f"wrong vehicle in the bay: {seen}, the swap is for {self.ctx.vehicle_id}"]
        await self._go("vehicle_ready")
        return []

    async def _positioned(self, facts: Mapping[str, bool | None]) -> list[str]:
        causes = self._failing("lifting", facts)
        causes += await self._confirm_reservation()
        if causes:
            return causes
        await self._go("lift")
        return []

    def _reservation_problem(self) -> tuple[str, bool] | None:
        """Why the reserved pack (or the free slot) cannot be used now; and whether only unknown.

        Unknown (stale data): wait. Known (the pack unfit): reserve anew. A check: it changes
        nothing.
        """
        ctx = self.ctx
        now = time.monotonic()
        why = still_dispensable(
            self.config, self.control, ctx.reserved_slot, ctx.reserved_serial, ctx.pack_type
        )
        if why is not None:
            return f"reserved pack {ctx.reserved_serial} in slot {ctx.reserved_slot}: {why}", (
                self.control.book.view(ctx.reserved_slot, now).stale
            )
        if not slot_free(self.control, ctx.free_slot):
            stale = self.control.book.view(ctx.free_slot, now).stale
            return f"slot {ctx.free_slot} for the returned pack is not free", stale
        return None

    async def _confirm_reservation(self) -> list[str]:
        """Before anything moves, the reservation is checked again: what blocks it, if any.

        Data that went unknown (a rack offline) is waited for: the reservation stands. A pack
        or slot known unfit now is replaced by another, in the open: journalled (event
        `swap_reserved`) with what it replaces and why, and shown in `state`.
        """
        problem = self._reservation_problem()
        if problem is None:
            return []
        why, unknown = problem
        if unknown:
            return [f"{why}: waiting for its data (the reservation stands)"]
        ctx = self.ctx
        try:
            pick = choose(
                self.config,
                self.control,
                ctx.pack_type,
                exclude=self._not_to_dispense() - {ctx.reserved_slot},
                busy=self._held(),
            )
        except NoPackError as exc:
            return [f"{why}; {exc}"]
        before = {"slot": ctx.reserved_slot, "serial": ctx.reserved_serial,
                  "free_slot": ctx.free_slot}  # fmt: skip
        ctx.reserved_slot, ctx.reserved_serial = pick.slot, pick.serial
        ctx.reserved_soc, ctx.free_slot = pick.soc, pick.free_slot
        batch = JournalBatch()
        batch.event(
            "swap_reserved",
            {"swap_id": ctx.swap_id, "why": why, "instead_of": before,
             "reserved": {"slot": pick.slot, "serial": pick.serial, "soc": pick.soc},
             "free_slot": pick.free_slot},
        )  # fmt: skip
        await self._persist(batch)
        _log.warning(
            "swap %s: %s; reserved %s in slot %d instead", ctx.swap_id[:8], why, pick.serial,
            pick.slot,
        )  # fmt: skip
        return []

    async def _lift(self, state: str, facts: Mapping[str, bool | None]) -> list[str]:
        up = state == "lifting"
        end = "lift_up" if up else "lift_down"
        if facts.get(end) is True:
            # Only a reading sent after this phase began tells where the lift is now: one
            # from before may show the lift down from before it moved (a fault a moment
            # after the raise, then lowering on the abort path). Until then it goes on as if
            # not there yet: interlocks checked, the lift driven toward its end.
            reading, _ = self.io_reading(time.monotonic())
            if reading is not None and reading.at >= self._entered_at:
                self._lift_moving = False
                await self._go("lifted" if up else "lowered")
                return []
        failing = self._failing(state, facts)
        if failing:
            if self._lift_moving:
                await self._fault(f"{failing[0]} while {'raising' if up else 'lowering'} the lift")
            return failing
        if not self._lift_moving:
            self._lift_moving = True
            self._sent("lift", "raise" if up else "lower")
        return []

    async def _releasing(self, facts: Mapping[str, bool | None]) -> list[str]:
        reading, _ = self.io_reading(time.monotonic())
        other = reading is not None and reading.vehicle_id not in {None, self.ctx.vehicle_id}
        if facts.get("vehicle_present") is False or other:
            batch = JournalBatch()
            if self.ctx.vehicle_pack != "none":
                serial = self.ctx.installed_serial or self.ctx.old_serial
                if serial is not None:
                    self.inventory.forget(
                        serial, batch, why=f"left in vehicle {self.ctx.vehicle_id}"
                    )
            await self._go("released", batch)
            return []
        failing = self._failing("releasing", facts)
        if failing:
            return failing
        return ["waiting for the vehicle to leave"]

    def _desired(self) -> dict[str, bool]:
        """The outputs the current phase wants (everything else off)."""
        state = self.ctx.state
        out = dict.fromkeys(OUTPUTS, False)
        if state == "waiting_for_vehicle":
            out["gate_open"] = True  # drive in (the green light means: drive out)
        elif state == "releasing" and self._failing("releasing", self.facts()) == []:
            out["gate_open"] = out["signal_go"] = True
        elif state == "lifting" and self._lift_moving:
            out["lift_raise"] = True
        elif state == "lowering" and self._lift_moving:
            out["lift_lower"] = True
        return out

    async def _apply_outputs(
        self, now: float, desired: Mapping[str, bool], *, stopping: bool = False
    ) -> None:
        """Write the outputs that differ from the wanted ones (from what we wrote or the PLC).

        Not while the station I/O is unreachable (a write would only wait out its timeout),
        except to stop: that is always tried.
        """
        want = {name: desired.get(name, False) for name in OUTPUTS}
        reading, _ = self.io_reading(now)
        out = self._outputs
        changed = {k: v for k, v in want.items() if out.written.get(k) != v}
        if not changed:
            # Written already: check that the PLC holds them (it may have rebooted).
            if reading is None or reading.at <= out.at or now - out.at < OUTPUT_RETRY_S:
                return
            changed = {k: v for k, v in want.items() if reading.coils.get(k) != v}
            if not changed:
                return
        elif not stopping and (
            reading is None or (out.error is not None and now - out.at < OUTPUT_RETRY_S)
        ):
            return
        try:
            # Judged just before it goes out; its motion-log entry is committed with the next
            # journal write (the outputs follow the phase, which is journalled write-ahead).
            async with asyncio.timeout(OUTPUT_TIMEOUT_S):
                await self.actuators.outputs(changed)
        except SafetyRefusedError as exc:
            out.at, out.error = time.monotonic(), str(exc)
            out.written = {**out.written, **{k: not v for k, v in changed.items()}}
            _log.error("station I/O: %s", exc)
            return
        except (DriverError, TimeoutError) as exc:
            out.at, out.error = time.monotonic(), str(exc) or "no answer"
            out.written = {**out.written, **{k: not v for k, v in changed.items()}}
            _log.warning("station I/O: cannot set %s: %s", _coils_text(changed), out.error)
            return
        out.written, out.at, out.error = {**out.written, **changed}, time.monotonic(), None

    async def _check_timeout(self) -> None:
        state = self.ctx.state
        limits = self.config.swap.step_timeouts_s.model_dump()
        limit = limits.get(state)
        if limit is None or time.time() - self.ctx.phase_started_at <= limit:
            return
        if state in {"waiting_for_vehicle", "positioned"}:
            what = (
                "the vehicle did not arrive"
                if state == "waiting_for_vehicle"
                else ("the vehicle could not be lifted")
            )
            self.ctx.reason = f"{what} within {limit:g} s" + (
                f" ({'; '.join(self.blocking)})" if self.blocking else ""
            )
            await self._go("cancel")
        elif state == "releasing":
            cause = f"the vehicle has not left after {limit:g} s"
            if cause not in self.blocking:
                self._set_blocking([*self.blocking, cause])
        else:
            await self._fault(f"{state.replace('_', ' ')} took longer than {limit:g} s")

    # --- robot phases ----------------------------------------------------------------------------

    async def _robot_phase(  # noqa: PLR0911 - one return per outcome, in order
        self, phase: str, facts: Mapping[str, bool | None], now: float
    ) -> list[str]:
        if self._robot_task is not None:
            failing = self._failing(phase, facts)
            if failing:
                await self._fault(f"{failing[0]} during '{self.ctx.step_label}'")
            return []
        if phase == "aborting":
            status = self.robot.status
            if status is not None and bool(status.holding) != (
                self.inventory.on_robot() is not None
            ):
                await self._hold(self._robot_disagrees(status) or "the robot disagrees")
                return []
            plan = abort_plan(self.ctx, self._where(), status)
            if not plan:
                await self._go("made_safe")
                return []
            if plan[0].kind is MsgType.STATUS:
                await self._hold(f"cannot make the vehicle safe: {plan[0].label}")
                return []
            if self.ctx.step >= MAX_ABORT_COMMANDS:
                await self._hold(f"the abort did not converge in {MAX_ABORT_COMMANDS} commands")
                return []
            action = plan[0]
        else:
            plan = phase_plan(phase, self.ctx)
            if self.ctx.step >= len(plan):
                causes = self._phase_complete(phase, now)
                if causes is None:
                    await self._go(PHASE_DONE[phase])
                    return []
                return causes
            action = plan[self.ctx.step]
        causes = self._failing(phase, facts) + self._action_causes(action, now)
        if self.robot.status is None or not self.robot.ready.is_set():
            causes.append(f"robot link {self.robot.state.value}")
        if causes:
            return causes
        return await self._send_robot(action)

    def _action_causes(  # noqa: PLR0911 - one return per check, in order
        self, action: RobotAction, now: float
    ) -> list[str]:
        """What must hold in the racks before a handover there (slot data fresh, charger off)."""
        kind, slot = action.kind, action.slot
        if slot is None or kind not in {MsgType.STORE, MsgType.FETCH}:
            return []
        self.control.hold_for_swap(slot, "a pack is being handed over")
        view = self.control.book.view(slot, now)
        r = view.reading
        if view.stale or r is None:
            self.poll_slot(slot)
            return [f"slot {slot}: {view.stale_reason or 'no data'}"]
        if kind is MsgType.STORE:
            if r.pack_present is not False:
                return [f"slot {slot} is not reported empty: cannot store the pack there"]
            return []
        expected = self._expected_in(slot)
        if not r.pack_present:
            raise MismatchError(f"slot {slot} reports no pack, {expected} expected there")
        if r.pack_serial is None:
            return [f"slot {slot}: pack serial not read yet"]
        if r.pack_serial != expected:
            raise MismatchError(f"slot {slot} reports pack {r.pack_serial}, {expected} expected")
        if r.charge_enable is not False or abs(r.current or 0.0) > CHARGER_OFF_A:
            self.poll_slot(slot)
            return [f"slot {slot}: waiting for the charger to switch off"]
        return []

    def _release_emptied(self, now: float) -> None:
        """Give a slot a pack was fetched from back to charging once it reports empty."""
        for slot in list(self._release_when_empty):
            view = self.control.book.view(slot, now)
            since = self._handover_at.get(slot, 0.0)
            empty = view.fresh is not None and view.fresh.pack_present is False
            late = now - since > self.config.swap.pack_detect_timeout_s
            if (empty and self._polled_after(view, since)) or late:
                self._release_when_empty.discard(slot)
                self.control.release_from_swap(slot)

    def _polled_after(self, view: SlotView, since: float) -> bool:
        """The slot's reading comes from a poll that began after `since` (monotonic)."""
        return view.reading is not None and view.reading.at > since

    def _expected_in(self, slot: int) -> str:
        entry = self.inventory.in_slot(slot)
        if entry is not None:
            return entry.serial
        return self.ctx.reserved_serial if slot == self.ctx.reserved_slot else "?"

    def _phase_complete(self, phase: str, now: float) -> list[str] | None:
        """Checks at the end of a phase; None when it is complete, else what it waits for."""
        ctx = self.ctx
        if phase != "storing" or ctx.stored_verified:
            return None
        # The returned pack must be reported by its slot's charger, from its own BMS.
        slot = ctx.free_slot
        view = self.control.book.view(slot, now)
        r = view.reading
        if (
            view.stale
            or r is None
            or not self._polled_after(view, self._handover_at.get(slot, 0.0))
        ):
            self.poll_slot(slot)
            return [f"slot {slot}: waiting for the charger to report the stored pack"] + (
                [f"slot {slot}: {view.stale_reason}"] if view.stale else []
            )
        if not r.pack_present or r.pack_serial is None:
            # A charger takes a moment to detect a pack and read its BMS.
            limit = self.config.swap.pack_detect_timeout_s
            if now - self._handover_at.get(slot, now) > limit:
                raise MismatchError(
                    f"slot {slot} reports {'no pack' if not r.pack_present else 'no serial'}"
                    f" {limit:g} s after {ctx.old_serial} was stored"
                )
            self.poll_slot(slot)
            return [f"slot {slot}: waiting for the charger to detect the stored pack"]
        if r.pack_serial != ctx.old_serial:
            raise MismatchError(
                f"slot {slot} reports pack {r.pack_serial}, the robot stored {ctx.old_serial}"
            )
        if r.pack_type is not None and r.pack_type != ctx.pack_type:
            raise MismatchError(
                f"the vehicle's pack {ctx.old_serial} is of type {r.pack_type}, the swap is for"
                f" type {ctx.pack_type}"
            )
        ctx.stored_verified, ctx.old_soc, ctx.old_type = True, r.soc, r.pack_type
        self.control.release_from_swap(slot)
        return None

    async def _send_robot(self, action: RobotAction) -> list[str]:
        """Send a robot command (write-ahead); the safety supervisor's refusal if refused."""
        ctx = self.ctx
        verdict = self.actuators.judge_robot(action.kind, action.body)
        if not verdict.allowed:
            await self._persist()  # the refusal: motion log, event
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
        await self._persist(batch)
        self._robot_token += 1
        token = self._robot_token
        self._sent("robot", action.kind.name)
        self._robot_task = asyncio.create_task(
            self._robot_call(token, action, verdict),
            name=f"swap-robot-{action.kind.name.lower()}",
        )
        return []

    async def _robot_call(self, token: int, action: RobotAction, verdict: Verdict) -> None:
        result: RobotStatus | DriverError | SafetyRefusedError
        try:
            result = await self.actuators.robot_command(action.kind, action.body, verdict=verdict)
        except (DriverError, SafetyRefusedError) as exc:
            result = exc
        self._put(_RobotDone(token, action, result, time.monotonic()))

    async def _robot_finished(
        self, action: RobotAction, result: RobotStatus | DriverError | SafetyRefusedError
    ) -> None:
        ctx = self.ctx
        if isinstance(result, (DriverError, SafetyRefusedError)):
            await self._fault(f"robot could not {action.label}: {result}")
            return
        batch = JournalBatch()
        try:
            self._apply_effect(action, result, batch)
        except MismatchError:
            ctx.step_sent = False  # what it did is known (and wrong): not in flight any more
            raise
        ctx.step_sent = False
        ctx.step += 1  # in aborting: how many commands the abort took
        self._step_ended_at = self._event_at
        # Journalled with the next command (before it is sent), or at the end of this step.
        self._defer(batch)

    def _apply_effect(self, action: RobotAction, status: RobotStatus, batch: JournalBatch) -> None:
        """A robot command ran: update the inventory, checking the handover."""
        ctx, inv = self.ctx, self.inventory
        kind = action.kind
        held = status.pack_serial
        if kind is MsgType.UNLOCK:
            ctx.vehicle_pack_locked = False
        elif kind is MsgType.REMOVE:
            if held is None:
                raise MismatchError("the robot reports no pack serial after removing the vehicle's")
            self._check_not_in_a_slot(held)
            ctx.old_serial, ctx.vehicle_pack, ctx.vehicle_pack_locked = held, "none", False
            inv.put(held, Place.ROBOT, batch, why=f"removed from vehicle {ctx.vehicle_id}")
        elif kind is MsgType.STORE:
            entry = inv.on_robot()
            slot = action.slot or status.slot
            if entry is None:
                raise MismatchError("the robot stored a pack the inventory did not place on it")
            inv.put(entry.serial, Place.SLOT, batch, slot=slot, why=f"stored in slot {slot}")
            self._handover_at[slot] = time.monotonic()
            self.poll_slot(slot)
        elif kind is MsgType.FETCH:
            slot = action.slot or status.slot
            expected = self._expected_in(slot)
            if held is None:
                raise MismatchError(
                    f"the robot reports no pack serial after fetching from slot {slot}"
                )
            if held != expected:
                raise MismatchError(f"fetched pack {held} from slot {slot}, expected {expected}")
            inv.put(held, Place.ROBOT, batch, why=f"fetched from slot {slot}")
            self._handover_at[slot] = time.monotonic()
            # Its charger stays held off until it reports the slot empty (its last reading
            # still shows the pack: it would be switched on at an empty slot).
            self._release_when_empty.add(slot)
        elif kind is MsgType.INSTALL:
            entry = inv.on_robot()
            if entry is None:
                raise MismatchError("the robot installed a pack the inventory did not place on it")
            ctx.installed_serial, ctx.vehicle_pack, ctx.vehicle_pack_locked = (
                entry.serial, "installed", False
            )  # fmt: skip
            inv.put(
                entry.serial, Place.VEHICLE, batch, vehicle_id=ctx.vehicle_id,
                why=f"installed in vehicle {ctx.vehicle_id}",
            )  # fmt: skip
        elif kind is MsgType.LOCK:
            torque = status.torque_dnm / 10
            cfg = self.config.swap
            if not status.locked or not cfg.lock_torque_min_nm <= torque <= cfg.lock_torque_max_nm:
                raise MismatchError(
                    f"lock not verified: locked={bool(status.locked)}, torque {torque:.1f} N*m"
                    f" (needed {cfg.lock_torque_min_nm:g}..{cfg.lock_torque_max_nm:g})"
                )
            ctx.vehicle_pack_locked, ctx.lock_torque_nm = True, torque

    def _check_not_in_a_slot(self, serial: str) -> None:
        entry = self.inventory.get(serial)
        if entry is None or entry.place is not Place.SLOT or entry.slot is None:
            return
        view = self.control.book.view(entry.slot, time.monotonic())
        if view.fresh is not None and view.fresh.pack_serial == serial:
            raise MismatchError(
                f"the vehicle's pack {serial} is also reported by slot {entry.slot}"
            )

    def _settle_in_flight(self, status: RobotStatus, batch: JournalBatch) -> str | None:
        """The robot command journalled as sent: apply its effect if the robot shows it ran.

        Returns why it cannot be told, or None when settled (ran, or proven not to have run).
        """
        action = RobotAction.recall(self.ctx)
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
                self._apply_effect(action, status, batch)
            except MismatchError as exc:
                return f"after '{action.label}': {exc}"
            if self.ctx.state in ROBOT_PHASES:
                self.ctx.step += 1
        self.ctx.step_sent = False
        return None

    def _robot_disagrees(self, status: RobotStatus) -> str | None:
        """Why the robot's own report contradicts the inventory, if it does."""
        on_robot = self.inventory.on_robot()
        held = status.pack_serial
        if bool(status.holding) != (on_robot is not None):
            holds = f"holds {held or 'a pack'}" if status.holding else "holds nothing"
            known = f"it holds {on_robot.serial}" if on_robot else "it holds nothing"
            return f"the robot {holds}, the journal says {known}"
        if held is not None and on_robot is not None and held != on_robot.serial:
            return f"the robot holds {held}, the journal says {on_robot.serial}"
        return None

    def _where(self) -> Where:
        ctx, inv = self.ctx, self.inventory
        in_free = inv.in_slot(ctx.free_slot)
        in_reserved = inv.in_slot(ctx.reserved_slot)
        robot = inv.on_robot()
        return Where(
            robot_holds=robot.serial if robot else None,
            old_in_free_slot=in_free is not None and in_free.serial == ctx.old_serial,
            new_in_reserved_slot=in_reserved is not None
            and in_reserved.serial == ctx.reserved_serial,
        )

    # --- transitions, faults, the journal --------------------------------------------------------

    async def _go(self, event: str, batch: JournalBatch | None = None) -> None:
        """Take a transition: journal it (write-ahead), then enter the new phase."""
        ctx = self.ctx
        target = event_to(self.machine, event)
        if target is None:
            raise RefusedError(f"{event} is not allowed while {ctx.state.replace('_', ' ')}")
        before, now = ctx.state, time.time()
        if ctx.timings and ctx.timings[-1].ended_at is None:
            ctx.timings[-1].ended_at = now
        ctx.phase_started_at = now
        ctx.step, ctx.step_label = 0, None
        if target in STOPPED_STATES:
            ctx.fault_from = ctx.fault_from if before in STOPPED_STATES else before
        if target not in {*STOPPED_STATES, "idle", "complete"}:
            ctx.timings.append(StepTime(phase=target, started_at=now))
        batch = self._with_deferred(batch or JournalBatch())
        batch.event(
            "swap_phase",
            {"swap_id": ctx.swap_id, "vehicle_id": ctx.vehicle_id, "from": before, "to": target,
             "event": event, "reason": ctx.reason},
        )  # fmt: skip
        # Journalled as it will be in the new phase, with the first command of that phase if
        # it follows at once, or at the end of this step: before anything physical either way.
        self.machine.send(event)
        self._entered_at = time.monotonic()
        self._write(ctx, batch)
        self._deferred = batch
        if self._step_ended_at is None:
            self._step_ended_at = self._event_at
        self.changed.set()
        for listener in self.on_phase:
            listener(before, target)
        _log.info("swap %s: %s -> %s (%s)", ctx.swap_id[:8], before, target, event)

    async def _persist(self, batch: JournalBatch | None = None) -> None:
        batch = self._with_deferred(batch or JournalBatch())
        self.actuators.take_journal(batch)  # the motion log: judged commands, refusals
        self._write(self.ctx, batch)
        await self.events.commit(batch, urgent=True)  # write-ahead: a command waits on it
        self.changed.set()

    async def _flush(self) -> None:
        """Commit what was deferred (transitions, effects), if anything."""
        if self._deferred is not None:
            await self._persist()

    def _defer(self, batch: JournalBatch) -> None:
        """Journal `batch` with the next write (always before the next physical command)."""
        self._deferred = self._with_deferred(batch)

    def _with_deferred(self, batch: JournalBatch) -> JournalBatch:
        deferred, self._deferred = self._deferred, None
        if deferred is None:
            return batch
        return JournalBatch(
            events=deferred.events + batch.events,
            statements=deferred.statements + batch.statements,
            calls=deferred.calls + batch.calls,
        )

    @staticmethod
    def _write(ctx: SwapContext, batch: JournalBatch) -> None:
        batch.execute(
            "INSERT OR REPLACE INTO swap_current(id, body) VALUES (1, ?)", (ctx.model_dump_json(),)
        )

    async def _fault(self, reason: str) -> None:
        state = self.ctx.state
        if state in {"idle", "complete", *STOPPED_STATES}:
            _log.error("swap: %s (while %s)", reason, state)
            return
        await self._stop_motion()  # safety first, the journal next
        self.ctx.reason = reason
        _log.error("swap %s fault while %s: %s", self.ctx.swap_id[:8], state, reason)
        await self._go("fail")

    async def _emergency_stop(self) -> None:
        await self._stop_motion()
        self.ctx.reason = "E-stop pressed"
        _log.error("swap %s: E-stop while %s", self.ctx.swap_id[:8], self.ctx.state)
        await self._go("emergency_stop")

    async def _hold(self, reason: str, batch: JournalBatch | None = None) -> None:
        await self._stop_motion()
        self.ctx.reason = reason
        _log.error("swap %s: recovery required: %s", self.ctx.swap_id[:8], reason)
        await self._go("hold", batch)

    async def _stop_motion(self) -> None:
        """Everything that moves stops now: the lift, the robot."""
        self._lift_moving = False
        running, self._robot_task = self._robot_task, None
        self._robot_token += 1  # a result still coming no longer counts
        stops: list[Any] = [self._apply_outputs(time.monotonic(), {}, stopping=True)]
        if running is not None or self.robot.busy or self.robot.maybe_moving:
            stops.append(self._stop_robot())
        await asyncio.gather(*stops)

    async def _stop_robot(self) -> None:
        self._sent("robot", "STOP")
        try:
            await self.actuators.robot_stop()
        except DriverError as exc:
            _log.error("robot STOP failed: %s", exc)

    def _sent(self, device: str, what: str) -> None:
        """Book a command sent to the machinery (and the controller's overhead before it).

        What it was sent under is in the motion log (the actuators enter it).
        """
        now = time.monotonic()
        if self._step_ended_at is not None:
            self.overheads_ms.append((now - self._step_ended_at) * 1000)
            self._step_ended_at = None
        for listener in self.on_command:
            listener(self.ctx.state, f"{device} {what}")

    def _note(self, action: str, by: str | None, detail: str | None) -> None:
        self.ctx.operator.append(OperatorNote(at=time.time(), action=action, by=by, detail=detail))

    def _set_blocking(self, causes: list[str]) -> None:
        if causes != self.blocking:
            self.blocking = causes
            self.changed.set()

    # --- the end of a swap -----------------------------------------------------------------------

    async def _finish_swap(self, event: str = "finish", batch: JournalBatch | None = None) -> None:
        """Record the swap (in the transition's transaction) and go idle."""
        ctx = self.ctx
        if ctx.outcome is None:
            completed = (
                ctx.vehicle_pack == "installed" and ctx.installed_serial == ctx.reserved_serial
            )
            restarted = any(note.action == "restart" for note in ctx.operator)
            # `recovered`: completed, after a restart of the controller resumed it.
            ctx.outcome = ("recovered" if restarted else "completed") if completed else "aborted"
        record = _record_of(ctx, time.time())
        batch = batch or JournalBatch()
        batch.call(lambda conn: insert_sync(conn, record))
        batch.event(
            f"swap_{ctx.outcome}",
            {"swap_id": ctx.swap_id, "vehicle_id": ctx.vehicle_id, "reason": ctx.reason,
             "pack_out": ctx.old_serial, "pack_in": ctx.installed_serial},
        )  # fmt: skip
        for slot in {ctx.free_slot, ctx.reserved_slot} - self._release_when_empty:
            self.control.release_from_swap(slot)
        self.blocking = []  # idle is published without the swap's last causes
        await self._go(event, batch)
        await self._flush()  # the record is durable before the station shows idle
        _log.info(
            "swap %s %s%s", ctx.swap_id[:8], ctx.outcome, f": {ctx.reason}" if ctx.reason else ""
        )
        self.ctx = SwapContext()
        self.machine = SwapMachine(self.ctx)
        self._lift_moving = False
        self._set_blocking([])

    def _forget_swap_packs(self) -> JournalBatch:
        """After an operator's clear: the packs on the robot or in the vehicle are unknown."""
        batch = JournalBatch()
        for entry in list(self.inventory.packs.values()):
            if entry.place in {Place.ROBOT, Place.VEHICLE}:
                self.inventory.forget(entry.serial, batch, why="cleared by an operator")
        status = self.robot.status
        if status is not None and status.pack_serial is not None:
            self.inventory.put(status.pack_serial, Place.ROBOT, batch, why="the robot holds it")
        return batch

    # --- the inventory follows the racks ---------------------------------------------------------

    def _reconcile_racks(self, now: float) -> JournalBatch:
        """Place packs where the chargers report them (outside the swap's own handovers)."""
        batch = JournalBatch()
        busy = set(self.control.swap_held)
        for view in self.control.book.views(now):
            r = view.fresh
            if r is None or view.slot in busy:
                continue
            # A charger takes a moment to notice a pack come or go: after a handover, its
            # slot is left to the swap for a while.
            if not self._polled_after(
                view, self._handover_at.get(view.slot, -1e9) + HANDOVER_SETTLE_S
            ):
                continue
            if self._reconciled_at.get(view.slot) == r.at:
                continue
            self._reconciled_at[view.slot] = r.at
            here = self.inventory.in_slot(view.slot)
            if r.pack_present and r.pack_serial is not None:
                if here is not None and here.serial == r.pack_serial:
                    if r.pack_type and here.pack_type != r.pack_type:
                        self.inventory.put(
                            here.serial, Place.SLOT, batch, slot=view.slot,
                            pack_type=r.pack_type, why="type reported",
                        )  # fmt: skip
                    continue
                entry = self.inventory.get(r.pack_serial)
                if entry is not None and entry.place is not Place.SLOT and self.ctx.active:
                    _log.warning(
                        "slot %d reports pack %s, which the swap has in %s",
                        view.slot, r.pack_serial, entry.where(),
                    )  # fmt: skip
                    continue
                if here is not None:
                    self.inventory.forget(
                        here.serial, batch, why=f"slot {view.slot} reports {r.pack_serial}"
                    )
                self.inventory.put(
                    r.pack_serial, Place.SLOT, batch, slot=view.slot, pack_type=r.pack_type,
                    why=f"reported by slot {view.slot}",
                )  # fmt: skip
            elif r.pack_present is False and here is not None:
                self.inventory.forget(here.serial, batch, why=f"slot {view.slot} reports no pack")
        return batch

    # --- recovery after a restart ----------------------------------------------------------------

    def _moves_next(self, status: RobotStatus) -> bool:
        """The swap's next robot command is a move (all a robot between positions may take)."""
        ctx = self.ctx
        if ctx.state == "aborting":
            plan = abort_plan(ctx, self._where(), status)
        else:
            plan = phase_plan(ctx.state, ctx)[ctx.step :]
        return bool(plan) and plan[0].kind in {MsgType.MOVE, MsgType.HOME}

    async def note_orderly_stop(self, *, robot_stopped: bool) -> None:
        """The daemon stops in order: say so in the journal, for the restart.

        Called after the safe state (the sequencer's task already ended): a STOP sent to the
        robot then is known to be ours, and the next start resets it and recovers.
        """
        if self.ctx.active and robot_stopped:
            self.ctx.stopped_on_shutdown = True
            self._note("shutdown", None, f"orderly stop while {self.ctx.state}: robot stopped")
            await self._persist()

    async def _recover(self, now: float) -> None:
        """A swap was in progress when the controller stopped: resume on proof, else hold."""
        waited = now - self._recover_since
        status = self.robot.status
        reading, why = self.io_reading(now)
        if status is None or not self.robot.ready.is_set() or reading is None:
            missing = ([] if reading is not None else [why]) + (
                [] if status is not None and self.robot.ready.is_set()
                else [f"robot link {self.robot.state.value}"]
            )  # fmt: skip
            if waited < RECOVERY_WAIT_S:
                self._set_blocking([f"recovering after a restart: waiting ({'; '.join(missing)})"])
                return
            self._recovering = False
            await self._hold(f"after a restart, cannot read {' and '.join(missing)}")
            return
        if (status.state == RobotState.BUSY or self.robot.busy) and waited < RECOVERY_BUSY_WAIT_S:
            self._set_blocking(["recovering after a restart: the robot is finishing a command"])
            return
        self._recovering = False
        if self.ctx.stopped_on_shutdown and status.state == RobotState.STOPPED:
            # The STOP was the orderly stop's own: its latch is reset (no motion) and the
            # swap recovered like after any restart, from what the robot reports.
            try:
                status = await self._robot_reset(checked=True) or status
            except RefusedError as exc:
                await self._hold(f"after an orderly stop: {exc}")
                return
        self.ctx.stopped_on_shutdown = False
        batch = JournalBatch()
        verdict = self._verdict(status, batch)
        if verdict is not None:
            await self._hold(verdict, batch)
            return
        ctx = self.ctx
        batch.event("swap_recovered", {"swap_id": ctx.swap_id, "state": ctx.state})
        await self._persist(batch)
        _log.warning("swap %s recovered after a restart: resuming %s", ctx.swap_id[:8], ctx.state)

    def _verdict(  # noqa: PLR0911 - one return per check, in order
        self, status: RobotStatus, batch: JournalBatch
    ) -> str | None:
        """None if the swap can resume where it is (context settled), else why not."""
        ctx = self.ctx
        state = ctx.state
        if state in {"authorised", "waiting_for_vehicle", "positioned", "releasing", "complete"}:
            return None  # nothing of the swap's was moving, or it is over
        if status.state in {RobotState.FAULT, RobotState.STOPPED}:
            return f"the robot is {RobotState(status.state).name.lower()} (fault {status.fault})"
        why = self._settle_in_flight(status, batch)
        if why is not None:
            return why
        disagreement = self._robot_disagrees(status)
        if disagreement is not None:
            return disagreement
        if state in {"lifting", "lowering"}:
            if state == "lowering" and not ctx.pack_locked:
                return "lowering, but the vehicle's pack is not known to be locked"
            return None  # the lift's position is watched, its interlocks checked again
        if status.position == Target.BETWEEN and not self._moves_next(status):
            return "the robot stopped between positions"
        for slot in self.control.swap_held:
            self._handover_at[slot] = time.monotonic()
        return None


def _coils_text(values: Mapping[str, bool]) -> str:
    return ", ".join(f"{k}={'on' if v else 'off'}" for k, v in values.items())


def _record_of(ctx: SwapContext, now: float) -> NewSwapRecord:
    def dt(t: float) -> datetime:
        return datetime.fromtimestamp(t, UTC)

    pack_out = (
        PackRef(serial=ctx.old_serial, pack_type=ctx.old_type or ctx.pack_type, soc=ctx.old_soc)
        if ctx.old_serial
        else None
    )
    pack_in = (
        PackRef(serial=ctx.installed_serial, pack_type=ctx.pack_type, soc=ctx.reserved_soc)
        if ctx.installed_serial
        else None
    )
    return NewSwapRecord(
        swap_id=ctx.swap_id,
        vehicle_id=ctx.vehicle_id,
        pack_type=ctx.pack_type,
        outcome=ctx.outcome or "completed",
        reason=ctx.reason,
        started_at=dt(ctx.started_at),
        ended_at=dt(now),
        pack_out=pack_out,
        pack_in=pack_in,
        slot_out=ctx.free_slot if ctx.stored_verified else None,
        slot_in=ctx.reserved_slot if ctx.installed_serial == ctx.reserved_serial else None,
        steps=[
            StepTiming(
                step=t.phase,
                started_at=dt(t.started_at),
                ended_at=dt(t.ended_at) if t.ended_at else None,
                duration_s=(t.ended_at - t.started_at) if t.ended_at else None,
            )
            for t in ctx.timings
        ],
        operator_actions=[
            OperatorAction(at=dt(n.at), action=n.action, by=n.by, detail=n.detail)
            for n in ctx.operator
        ],
    )
