"""The CSMS's station-wide charging profiles, as the `ocpp` run-time power limit.

At most one profile per purpose is held (`ChargingStationMaxProfile`,
`ChargingStationExternalConstraints`); a new one of a purpose replaces the old. What is in force
at a moment is the lowest limit of the profiles in force then (OCPP combines the two purposes
as their minimum), and that is the one `ocpp` limit the allocator sees (controller/charging/).

The limit follows the schedules without a gap: each value is set with an end five minutes past
the moment the value changes, and replaced in place at that moment; the last one ends with its
profile. The held profiles are kept in the journal and followed again after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from pydantic import ValidationError

from controller.charging.gridcmds import GridCommands
from controller.charging.requests import MAX_DURATION_S, ClearPowerLimit, SetPowerLimit
from controller.errors import RefusedError
from controller.store.journal import Journal, transaction
from drivers import clock

_log = logging.getLogger(__name__)

SOURCE = "ocpp"
# What the CSMS may set (ChargingStationExternalConstraints is an external system's, K12). The
# code holds one profile per purpose, as if there were several.
PURPOSES = ("ChargingStationMaxProfile",)
# A value's limit outlives the moment it is replaced, so that there is no gap between two (a
# wall clock stepped forward by less than this, less CHUNK_S, opens none either).
OVERLAP_S = 300.0
CHUNK_S = 30.0  # the follower looks at the wall clock at least this often (NTP steps)
META_KEY = "ocpp_profiles"


@dataclass(frozen=True)
class Held:
    """One profile, in epoch seconds: its periods (start, watts) and its end."""

    id: int
    purpose: str
    stack_level: int
    steps: tuple[tuple[float, float], ...]
    end: float | None

    def value(self, at: float) -> float | None:
        """Its limit at `at` (None: not in force)."""
        if not self.steps or at < self.steps[0][0] or (self.end is not None and at >= self.end):
            return None
        return [w for start, w in self.steps if start <= at][-1]

    def moments(self) -> Iterable[float]:
        """When its value changes."""
        yield from (start for start, _ in self.steps)
        if self.end is not None:
            yield self.end


class StationProfiles:
    """The held profiles, their combined limit, and the task that follows them."""

    def __init__(self, grid: GridCommands, journal: Journal) -> None:
        self.grid = grid
        self.journal = journal
        self.held: dict[str, Held] = {}
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()

    # --- the limit ----------------------------------------------------------------------------

    def value(self, at: float) -> float | None:
        """The lowest limit in force at `at`, in W (None: none)."""
        values = [v for h in self.held.values() if (v := h.value(at)) is not None]
        return min(values) if values else None

    def next_change(self, after: float) -> float | None:
        """The next moment after `after` at which some profile's value changes."""
        later = [m for h in self.held.values() for m in h.moments() if m > after]
        return min(later) if later else None

    async def apply(self) -> None:
        """Set (or lift) the `ocpp` limit to what is in force now; raises if it cannot be set.

        One at a time (the handlers' and the follower's): each sets what is in force when it
        runs, so none can undo a later one.
        """
        async with self._lock:
            await self._apply()

    async def _apply(self) -> None:
        now = clock.wall()
        for purpose, held in list(self.held.items()):
            if held.end is not None and held.end <= now:
                del self.held[purpose]
        watts = self.value(now)
        if watts is None:
            await self.lift()
            return
        change = self.next_change(now)
        until: float | None = None
        if change is not None:
            ends = self.value(change) is None and self.next_change(change) is None
            until = change if ends else change + OVERLAP_S
            if until - now >= MAX_DURATION_S:
                until = None  # beyond what a limit may name: the follower lifts it in time
        await self.grid.set_limit(
            SetPowerLimit(
                source=SOURCE,
                kw=watts / 1000,
                until=None if until is None else datetime.fromtimestamp(until, UTC),
                by="ocpp",
            )
        )

    async def lift(self) -> None:
        """No `ocpp` limit (if there is one, whoever left it: a profile ended, another CSMS)."""
        if SOURCE in self.grid.control.limits.runtime:
            with contextlib.suppress(RefusedError):
                await self.grid.clear_limit(ClearPowerLimit(source=SOURCE, by="ocpp"))

    async def replace(self, held: Held) -> None:
        """Hold `held` (replacing its purpose's), apply it, keep it; undone if it cannot apply."""
        async with self._lock:
            before = dict(self.held)
            self.held[held.purpose] = held
            try:
                await self._apply()
            except (RefusedError, ValidationError):
                self.held = before
                raise
            await self._save()
        self.follow()

    async def clear(self, purposes: Iterable[str]) -> None:
        """Drop the profiles of `purposes`; the limit follows what is left."""
        async with self._lock:
            for purpose in purposes:
                self.held.pop(purpose, None)
            await self._apply()
            await self._save()
        self.follow()

    # --- the follower -------------------------------------------------------------------------

    def follow(self) -> None:
        """Have the follower look again (started once; it lives until `close`)."""
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._follow(), name="ocpp-profiles")

    def close(self) -> None:
        """Stop following (the daemon is done)."""
        if self._task is not None:
            self._task.cancel()

    async def _follow(self) -> None:
        """Apply each change as it comes, and what is due whenever woken."""
        while True:
            try:
                await self.apply()
                if not self.held:
                    await self._save()
            except Exception as exc:  # noqa: BLE001 - said; the follower goes on
                _log.error("OCPP: charging profile not applied: %r", exc)
            self._wake.clear()
            # Until the next change, or woken; in chunks, against the wall clock (a clock
            # stepped meanwhile is seen within one).
            while not self._wake.is_set():
                change = self.next_change(clock.wall())
                wait = None if change is None else change - clock.wall()
                if wait is not None and wait <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(None if wait is None else min(wait, CHUNK_S)):
                        await self._wake.wait()

    # --- the journal --------------------------------------------------------------------------

    async def load(self) -> None:
        """The profiles held when the daemon stopped, followed again."""

        def read(conn: sqlite3.Connection) -> str:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (META_KEY,)).fetchone()
            return "{}" if row is None else str(row[0])

        try:
            data = json.loads(await self.journal.call(read))
            self.held = {
                purpose: Held(
                    int(h["id"]),
                    purpose,
                    int(h["stack_level"]),
                    tuple((float(a), float(w)) for a, w in h["steps"]),
                    None if h["end"] is None else float(h["end"]),
                )
                for purpose, h in data.items()
                if purpose in PURPOSES
            }
        except (ValueError, KeyError, TypeError) as exc:
            _log.error("OCPP: the kept charging profiles are unreadable, dropped: %s", exc)
            self.held = {}
        # What is in force now (nothing held: no `ocpp` limit, whoever left one), then onwards.
        self.follow()

    async def _save(self) -> None:
        text = json.dumps({p: asdict(h) for p, h in self.held.items()})

        def write(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (META_KEY, text)
                )

        await self.journal.call(write)
