"""The power requests (controller/charging/requests.py), answered: limits, prices, the offer.

Whatever a request changes is journalled (with an event) before it takes effect, so a limit
survives a restart until it ends; the control step that follows applies it (lower before
raise, as for every budget change). Refusals raise `RefusedError` with the reason.
"""

from __future__ import annotations

import itertools
import math
import sqlite3
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from controller.charging.limits import MAX_RUNTIME_SOURCES, RunLimit
from controller.charging.requests import (
    MAX_DURATION_S,
    ClearPowerLimit,
    Outcome,
    PowerRequest,
    SetPowerLimit,
    SetTariff,
)
from controller.charging.tariff import MAX_AHEAD_S, Interval
from controller.errors import RefusedError
from controller.store.events import JournalBatch
from drivers import clock as clocks

if TYPE_CHECKING:
    from controller.charging.control import SlotControl


class GridCommands:
    """Answers the power requests for one `SlotControl`."""

    def __init__(self, control: SlotControl) -> None:
        self.control = control
        self._handlers: Mapping[type[PowerRequest], Callable[[Any], Awaitable[Outcome]]] = {
            SetPowerLimit: self.set_limit,
            ClearPowerLimit: self.clear_limit,
            SetTariff: self.set_tariff,
        }

    async def submit(self, request: PowerRequest) -> Outcome:
        """Run a request (dispatched by its type)."""
        for kind in type(request).__mro__:  # an interface's envelope subclasses the request
            handler = self._handlers.get(kind)
            if handler is not None:
                return await handler(request)
        raise RefusedError(f"{type(request).__name__} is not a power request")

    async def load(self) -> None:
        """Restore run-time limits (those not ended) and day-ahead prices from the journal."""
        c = self.control

        def read(conn: sqlite3.Connection) -> tuple[list[RunLimit], list[Interval]]:
            limits = [
                RunLimit(str(s), float(kw), None if u is None else float(u), float(at), by)
                for s, kw, u, at, by in conn.execute(
                    "SELECT source, kw, until, set_at, by FROM power_limits"
                )
            ]
            prices = [
                Interval(float(a), float(b), float(p))
                for a, b, p in conn.execute("SELECT start, end, price FROM tariff_prices")
            ]
            return limits, prices

        limits, prices = await c.journal.call(read)
        now = clocks.wall()
        c.limits.runtime = {r.source: r for r in limits}
        ended = c.limits.prune(now)
        if ended:
            batch = JournalBatch()
            for r in ended:
                batch.execute(
                    "DELETE FROM power_limits WHERE source = ? AND set_at = ?", (r.source, r.set_at)
                )
                batch.event("power_limit_ended", {"source": r.source, "kw": r.kw})
            await c.events.commit(batch)
        c.tariff.set_ahead([iv for iv in prices if iv.end > now], now)

    async def set_limit(self, request: SetPowerLimit) -> Outcome:
        """A run-time limit: journalled, then applied by the next control step.

        An order applies first and its cost is predicted after (from the station as it was);
        a request `if_within_offer` is judged first, and refused with its cost when outside.
        """
        c = self.control
        now = clocks.wall()
        until = _until(request, now)
        if request.source not in c.limits.runtime and len(c.limits.runtime) >= MAX_RUNTIME_SOURCES:
            raise RefusedError(
                f"{MAX_RUNTIME_SOURCES} sources already hold a limit: clear one first"
            )
        before = c.foresight.inputs()  # the station as it is, before the limit
        offer = None
        if request.if_within_offer:
            if until is None:
                raise RefusedError(
                    "an offer is for a while: give duration_s or until with if_within_offer"
                )
            offer = await c.foresight.assess_limit(request.kw, until - now, before)
            if not offer.within:
                raise RefusedError(f"outside the flexibility offer: {offer.text}")
        limit = RunLimit(request.source, request.kw, until, now, request.by)
        batch = JournalBatch()
        batch.execute(
            "INSERT OR REPLACE INTO power_limits(source, kw, until, set_at, by)"
            " VALUES (?, ?, ?, ?, ?)",
            (limit.source, limit.kw, limit.until, limit.set_at, limit.by),
        )
        batch.event(
            "power_limit_set",
            {"source": limit.source, "kw": limit.kw, "until": _iso(until), "by": limit.by},
        )
        await c.events.commit(batch)
        c.limits.runtime[limit.source] = limit
        c.limits_changed()
        if offer is None:
            # In force already: what it costs is said after (an hour when it has no end).
            lasts = (until or now + 3600.0) - now
            offer = await c.foresight.assess_limit(request.kw, lasts, before)
        at = clocks.localnow()
        bind = c.limits.binding(at)
        result: dict[str, Any] = {
            "limit_kw": None if bind is None else bind[1],
            "binding": None if bind is None else bind[0],
            "until": _iso(until),
            "within_offer": offer.within,
            "predicted": offer.predicted,
        }
        ends = f" until {_iso(until)}" if until is not None else " until lifted"
        binds = f"; binding: {bind[0]} at {bind[1]:g} kW" if bind is not None else ""
        return Outcome(f"{request.source} limit {request.kw:g} kW{ends}{binds}", result)

    async def clear_limit(self, request: ClearPowerLimit) -> Outcome:
        """Lift a source's run-time limit."""
        c = self.control
        limit = c.limits.runtime.get(request.source)
        if limit is None:
            held = ", ".join(sorted(c.limits.runtime)) or "none"
            raise RefusedError(f"no run-time limit from {request.source!r} (held: {held})")
        batch = JournalBatch()
        batch.execute(
            "DELETE FROM power_limits WHERE source = ? AND set_at = ?",
            (request.source, limit.set_at),
        )
        batch.event("power_limit_cleared", {"source": request.source, "by": request.by})
        await c.events.commit(batch)
        c.limits.runtime.pop(request.source, None)
        c.limits_changed()
        bind = c.limits.binding(clocks.localnow())
        now = f"{bind[0]} at {bind[1]:g} kW" if bind is not None else "no limit"
        return Outcome(f"{request.source} limit lifted; now {now}")

    async def set_tariff(self, request: SetTariff) -> Outcome:
        """Day-ahead prices, journalled, over the configured schedule."""
        c = self.control
        now = clocks.wall()
        intervals = sorted(
            (Interval(p.start.timestamp(), p.end.timestamp(), p.price) for p in request.prices),
            key=lambda iv: iv.start,
        )
        for a, b in itertools.pairwise(intervals):
            if b.start < a.end:
                raise RefusedError("prices: intervals overlap")
        bad = next((iv for iv in intervals if iv.end <= iv.start), None)
        if bad is not None:
            raise RefusedError("prices: an interval ends before it starts")
        if intervals[-1].end <= now:
            raise RefusedError("prices: every interval has ended")
        if intervals[-1].end > now + MAX_AHEAD_S:
            raise RefusedError(f"prices: at most {MAX_AHEAD_S / 86400:g} days ahead")
        batch = JournalBatch()
        batch.execute("DELETE FROM tariff_prices WHERE end <= ?", (now,))
        for iv in intervals:
            batch.execute(
                "DELETE FROM tariff_prices WHERE start < ? AND end > ?", (iv.end, iv.start)
            )
            batch.execute(
                "INSERT INTO tariff_prices(start, end, price) VALUES (?, ?, ?)",
                (iv.start, iv.end, iv.price),
            )
        batch.event("tariff_set", {"intervals": len(intervals), "by": request.by})
        await c.events.commit(batch)
        c.tariff.set_ahead(intervals, now)  # once journalled
        c.limits_changed()
        return Outcome(f"{len(intervals)} price(s) set", {"held": len(c.tariff.ahead)})


def _until(request: SetPowerLimit, now: float) -> float | None:
    ends = []
    if request.duration_s is not None:
        ends.append(now + request.duration_s)
    if request.until is not None:
        ends.append(request.until.timestamp())
    if not ends:
        return None
    until = min(ends)
    if not math.isfinite(until) or until > now + MAX_DURATION_S:
        raise RefusedError(f"until: at most {MAX_DURATION_S / 86400:g} days ahead")
    if until <= now:
        raise RefusedError(f"until {_iso(until)} has passed")
    return until


def _iso(wall: float | None) -> str | None:
    return None if wall is None else datetime.fromtimestamp(wall).astimezone().isoformat()
