"""The swap in progress as the journal has it: its context, machine, the inventory and the mode.

Every transition is written ahead: journalled (with whatever was deferred to it) before the
physical command it leads to goes out. Collaborators of the sequencer read and change the swap
through this one object; only the sequencer's task does, so nothing interleaves.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections import deque
from collections.abc import Callable

from controller.errors import RefusedError
from controller.safety.actuators import Actuators
from controller.store.events import EventLog, JournalBatch
from controller.store.journal import Journal
from controller.swap.inventory import Inventory
from controller.swap.machine import SwapMachine, event_to
from controller.swap.phase import STOPPED, Phase
from controller.swap.plan import OperatorNote, StepTime, SwapContext
from controller.swap.requests import MODES, Mode
from drivers import clock

_log = logging.getLogger(__name__)

OVERHEAD_SAMPLES = 10_000
_UNTIMED = STOPPED | {Phase.IDLE, Phase.COMPLETE}  # phases without a step timing


class CurrentSwap:
    """The swap (one at a time), its journal rows, and who listens to its changes."""

    def __init__(self, events: EventLog, actuators: Actuators) -> None:
        self.events = events
        self.actuators = actuators
        self.inventory = Inventory()
        self.ctx = SwapContext()
        self.machine = SwapMachine(self.ctx)
        self.mode: Mode = "auto"
        self.blocking: list[str] = []
        self.changed = asyncio.Event()  # set whenever something publishable changed
        self.entered_at = 0.0  # monotonic time the current phase was entered
        # Called (synchronously) on every transition with (from, to): for tests and tools.
        self.on_phase: list[Callable[[Phase, Phase], None]] = []
        # ... and on every command sent to the machinery, with (phase, what). What went out,
        # with the facts it was sent under, is in the journal's motion log.
        self.on_command: list[Callable[[Phase, str], None]] = []
        self.overheads_ms: deque[float] = deque(maxlen=OVERHEAD_SAMPLES)
        self.event_at: float | None = None  # when the event being handled happened
        self.step_ended_at: float | None = None  # the device event that ended the last step
        self._deferred: JournalBatch | None = None

    @property
    def phase(self) -> Phase:
        """Where the swap is."""
        return self.ctx.state

    def begin(self, ctx: SwapContext) -> None:
        """Take `ctx` as the swap (a new one, or none: `SwapContext()`)."""
        self.ctx = ctx
        self.machine = SwapMachine(ctx)  # at the context's state

    async def load(self, journal: Journal) -> None:
        """Restore the mode, the inventory and the swap in progress from the journal."""

        def read(conn: sqlite3.Connection) -> tuple[Inventory, str | None, str | None]:
            row = conn.execute("SELECT body FROM swap_current WHERE id = 1").fetchone()
            mode = conn.execute("SELECT value FROM meta WHERE key = 'mode'").fetchone()
            return Inventory.load(conn), row[0] if row else None, mode[0] if mode else None

        self.inventory, body, mode = await journal.call(read)
        for known in MODES:
            if mode == known:
                self.mode = known
        if body is not None:
            self.begin(SwapContext.model_validate_json(body))
            if self.ctx.active:
                _log.warning(
                    "swap %s for %s was %s when the controller stopped: recovering",
                    self.ctx.swap_id,
                    self.ctx.vehicle_id,
                    self.ctx.state,
                )

    # --- transitions and the journal -------------------------------------------------------

    async def go(
        self, event: str, batch: JournalBatch | None = None, *, phase: Phase | None = None
    ) -> None:
        """Take a transition: journal it (write-ahead), then enter the new phase.

        `phase`: the target of an event that has several (`resume`).
        """
        ctx = self.ctx
        target = event_to(self.machine, event, phase)
        if target is None:
            raise RefusedError(f"{event} is not allowed while {ctx.state.text}")
        before, now = ctx.state, clock.wall()
        if ctx.timings and ctx.timings[-1].ended_at is None:
            ctx.timings[-1].ended_at = now
        ctx.phase_started_at = now
        ctx.step, ctx.step_label = 0, None
        if target in STOPPED:
            ctx.fault_from = ctx.fault_from if before in STOPPED else before
        if target not in _UNTIMED:
            ctx.timings.append(StepTime(phase=target, started_at=now))
        batch = self._with_deferred(batch or JournalBatch())
        batch.event(
            "swap_phase",
            {"swap_id": ctx.swap_id, "vehicle_id": ctx.vehicle_id, "from": before, "to": target,
             "event": event, "reason": ctx.reason},
        )  # fmt: skip
        # Journalled as it will be in the new phase, with the first command of that phase if
        # it follows at once, or at the end of this step: before anything physical either way.
        if phase is None:
            self.machine.send(event)
        else:
            self.machine.send(event, phase=phase)
        self.entered_at = clock.monotonic()
        self._write(batch)
        self._deferred = batch
        if self.step_ended_at is None:
            self.step_ended_at = self.event_at
        self.changed.set()
        for listener in self.on_phase:
            listener(before, target)
        _log.info("swap %s: %s -> %s (%s)", ctx.swap_id[:8], before, target, event)

    async def persist(self, batch: JournalBatch | None = None) -> None:
        """Journal the swap now (with what was deferred), before a command goes out."""
        batch = self._with_deferred(batch or JournalBatch())
        self.actuators.take_journal(batch)  # the motion log: judged commands, refusals
        self._write(batch)
        await self.events.commit(batch, urgent=True)  # write-ahead: a command waits on it
        self.changed.set()

    async def flush(self) -> None:
        """Commit what was deferred (transitions, effects), if anything."""
        if self._deferred is not None:
            await self.persist()

    def defer(self, batch: JournalBatch) -> None:
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

    def _write(self, batch: JournalBatch) -> None:
        batch.execute(
            "INSERT OR REPLACE INTO swap_current(id, body) VALUES (1, ?)",
            (self.ctx.model_dump_json(),),
        )

    # --- what the swap shows ---------------------------------------------------------------

    def note(self, action: str, by: str | None, detail: str | None) -> None:
        """An operator's (or the controller's own) action on this swap, for its record."""
        self.ctx.operator.append(OperatorNote(at=clock.wall(), action=action, by=by, detail=detail))

    def set_blocking(self, causes: list[str]) -> None:
        """What keeps the swap (or a new one) from going on now, as published."""
        if causes != self.blocking:
            self.blocking = causes
            self.changed.set()

    def sent(self, device: str, what: str) -> None:
        """Book a command sent to the machinery (and the controller's overhead before it).

        What it was sent under is in the motion log (the actuators enter it).
        """
        now = clock.monotonic()
        if self.step_ended_at is not None:
            self.overheads_ms.append((now - self.step_ended_at) * 1000)
            self.step_ended_at = None
        for listener in self.on_command:
            listener(self.ctx.state, f"{device} {what}")
