"""Messages that must reach the CSMS, journalled first and sent in order (the OCPP outbox).

A message is committed to `ocpp_queue` in the same transaction as what caused it (an event
read by the translator, a transaction's new state); the client sends the oldest one whenever
the CSMS is connected and has accepted the boot, and deletes it once the CSMS answered. A
CALLERROR is an answer too: the message is not sent again (OCPP: a message the CSMS refused
is not repeated), and the refusal is logged. Delivery is at least once across a crash.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from controller.store.events import JournalBatch
from controller.store.journal import Journal, transaction
from drivers import clock


@dataclass(frozen=True, slots=True)
class Queued:
    """One message waiting for the CSMS."""

    seq: int
    action: str
    payload: dict[str, Any]
    at: float
    attempts: int = 0  # sent before without an answer it could keep


def enqueue(batch: JournalBatch, action: str, payload: dict[str, Any]) -> None:
    """Add a message to the queue, in the batch's transaction."""
    text = json.dumps(payload, separators=(",", ":"), sort_keys=True)
    batch.execute(
        "INSERT INTO ocpp_queue(action, payload, at) VALUES (?, ?, ?)",
        (action, text, clock.wall()),
    )


class OcppQueue:
    """The journal's `ocpp_queue`, read in order."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self.wake = asyncio.Event()  # set after a commit that may have queued something

    async def head(self, limit: int = 50) -> list[Queued]:
        """The oldest messages, in order."""
        rows = await self._journal.call(
            lambda c: c.execute(
                "SELECT seq, action, payload, at, attempts FROM ocpp_queue ORDER BY seq LIMIT ?",
                (limit,),
            ).fetchall()
        )
        return [Queued(seq, action, json.loads(text), at, n) for seq, action, text, at, n in rows]

    async def attempted(self, seq: int) -> None:
        """Message `seq` was sent once more without an answer that settles it."""

        def count(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.execute("UPDATE ocpp_queue SET attempts = attempts + 1 WHERE seq = ?", (seq,))

        await self._journal.call(count, durable=False)

    async def done(self, seq: int) -> None:
        """The CSMS answered message `seq`: it is not sent again."""

        def delete(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.execute("DELETE FROM ocpp_queue WHERE seq = ?", (seq,))

        # Lost in a power cut, the delete only makes the message go again (at least once).
        await self._journal.call(delete, durable=False)

    async def length(self) -> int:
        """How many messages wait."""
        return int(
            await self._journal.call(
                lambda c: c.execute("SELECT count(*) FROM ocpp_queue").fetchone()[0]
            )
        )
