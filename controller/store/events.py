"""Events: appended to the journal first, published from it (the outbox) in order.

The outbox that publishes them is in the MQTT room (controller/mqtt/outbox.py).

An event survives a crash, a power cut and a broker outage: it is committed before anything
is published, and the outbox task publishes unpublished events in sequence order whenever the
broker is reachable. Delivery is at least once; `seq` lets a consumer drop a repeat.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from controller.store.journal import Journal, transaction
from drivers import clock

_log = logging.getLogger(__name__)

OUTBOX_BATCH = 100


class EventEnvelope(BaseModel):
    """An event as published on `<root>/events`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seq: int
    at: datetime
    station: str
    kind: str
    data: dict[str, Any]


@dataclass
class JournalBatch:
    """Events and state rows to commit together, in one transaction (one fsync)."""

    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    statements: list[tuple[str, tuple[object, ...]]] = field(default_factory=list)
    calls: list[Callable[[sqlite3.Connection], object]] = field(default_factory=list)

    def event(self, kind: str, data: BaseModel | dict[str, Any]) -> None:
        """Add an event."""
        body = data.model_dump(mode="json") if isinstance(data, BaseModel) else data
        self.events.append((kind, body))

    def execute(self, sql: str, args: tuple[object, ...] = ()) -> None:
        """Add a statement."""
        self.statements.append((sql, args))

    def call(self, fn: Callable[[sqlite3.Connection], object]) -> None:
        """Run `fn(conn)` inside the batch's transaction (on the journal thread)."""
        self.calls.append(fn)

    def __bool__(self) -> bool:
        return bool(self.events or self.statements or self.calls)


class EventLog:
    """Appends events to the journal and wakes the outbox."""

    def __init__(self, journal: Journal, station_id: str) -> None:
        self._journal = journal
        self.station_id = station_id
        self.wake = asyncio.Event()
        self._followers: list[asyncio.Event] = []

    def follow(self, wake: asyncio.Event) -> None:
        """Set `wake` after every commit that added events (another reader of the log)."""
        self._followers.append(wake)

    async def append(self, kind: str, data: BaseModel | dict[str, Any]) -> int:
        """Commit one event; return its sequence number."""
        batch = JournalBatch()
        batch.event(kind, data)
        return (await self.commit(batch))[0]

    async def commit(self, batch: JournalBatch, *, urgent: bool = False) -> list[int]:
        """Commit a batch atomically; return the events' sequence numbers.

        `urgent`: a physical command waits on this commit (the journal runs it first).
        """
        at = clock.wall()
        rows = [
            (at, kind, json.dumps(body, separators=(",", ":"), sort_keys=True))
            for kind, body in batch.events
        ]

        def insert(conn: sqlite3.Connection) -> list[int]:
            seqs: list[int] = []
            with transaction(conn):
                for fn in batch.calls:
                    fn(conn)
                for sql, args in batch.statements:
                    conn.execute(sql, args)
                for row in rows:
                    cur = conn.execute("INSERT INTO events(at, kind, body) VALUES (?, ?, ?)", row)
                    seqs.append(int(cur.lastrowid or 0))
            return seqs

        seqs = await self._journal.call(insert, urgent=urgent)
        if seqs:
            self.wake.set()
            for follower in self._followers:
                follower.set()
        return seqs

    async def unpublished(self, limit: int = OUTBOX_BATCH) -> list[EventEnvelope]:
        """The oldest events not yet published, in order."""
        rows = await self._journal.call(
            lambda c: c.execute(
                "SELECT seq, at, kind, body FROM events WHERE published = 0 ORDER BY seq LIMIT ?",
                (limit,),
            ).fetchall()
        )
        return [
            EventEnvelope(
                seq=seq,
                at=datetime.fromtimestamp(at, UTC),
                station=self.station_id,
                kind=kind,
                data=json.loads(body),
            )
            for seq, at, kind, body in rows
        ]

    async def mark_published(self, up_to_seq: int) -> None:
        """Mark every event up to `up_to_seq` published."""

        def update(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.execute(
                    "UPDATE events SET published = 1 WHERE published = 0 AND seq <= ?",
                    (up_to_seq,),
                )

        # Lost in a power cut, the mark only makes the outbox publish those events again (at
        # least once; subscribers drop a `seq` they have seen).
        await self._journal.call(update, durable=False)
