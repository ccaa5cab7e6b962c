"""The motion log: every command to machinery, the facts it was judged on and the verdict.

One row per command the safety supervisor judged (`controller/safety/supervisor.py`): robot
commands, station outputs, chargers switched on or off, and every refusal. Rows are append-only
and hash-chained like the swap records (`controller/store/records.py`, docs/records.md): each
body is the canonical JSON of the entry without its hash, `hash = sha256(body)`, and
`prev_hash` is the previous row's hash (64 zeros for the first).
`swapctl records motion` exports them, per swap.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from controller.safety.commands import motions
from controller.safety.supervisor import Verdict
from controller.store.records import GENESIS_HASH, UtcDatetime, canonical_json

Device = Literal["charger", "outputs", "robot"]
FactValue = bool | int | float | str | None


class Refusal(BaseModel):
    """An invariant that refused the command, and why."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    invariant: str
    why: str


class NewMotionEntry(BaseModel):
    """A command as judged, before it takes its place in the chain."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    at: UtcDatetime
    device: Device
    command: str
    motions: list[str] = Field(default_factory=list)  # what it starts moving (none: a stop)
    slot: int | None = None
    swap_id: str | None = None
    phase: str | None = None
    facts: dict[str, FactValue] = Field(default_factory=dict)
    verdict: Literal["allowed", "refused"]
    refused: list[Refusal] = Field(default_factory=list)


class MotionEntry(NewMotionEntry):
    """A link of the motion log's chain."""

    seq: int
    prev_hash: str
    hash: str


def entry_of(verdict: Verdict, device: Device, *, slot: int | None, swap_id: str | None,
             phase: str | None, wall: float) -> NewMotionEntry:  # fmt: skip
    """The log entry of a verdict (`wall`: the Unix time it was judged)."""
    facts = {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v)
        for k, v in verdict.facts.items()
    }
    return NewMotionEntry(
        at=datetime.fromtimestamp(wall, UTC),
        device=device,
        command=str(verdict.command),
        motions=sorted(motions(verdict.command)),
        slot=slot,
        swap_id=swap_id,
        phase=phase,
        facts=facts,
        verdict="allowed" if verdict.allowed else "refused",
        refused=[Refusal(invariant=n, why=w) for n, w in verdict.refused],
    )


def insert_sync(conn: sqlite3.Connection, entries: Iterable[NewMotionEntry]) -> int:
    """Append entries to the chain inside the caller's transaction; return the last seq."""
    last = conn.execute("SELECT seq, hash FROM motion_log ORDER BY seq DESC LIMIT 1").fetchone()
    seq, prev = (int(last[0]), str(last[1])) if last else (0, GENESIS_HASH)
    for entry in entries:
        seq += 1
        body = canonical_json({**entry.model_dump(mode="json"), "seq": seq, "prev_hash": prev})
        digest = hashlib.sha256(body.encode()).hexdigest()
        conn.execute(
            "INSERT INTO motion_log(seq, swap_id, body, prev_hash, hash) VALUES (?, ?, ?, ?, ?)",
            (seq, entry.swap_id, body, prev, digest),
        )
        prev = digest
    return seq


def verify_sync(conn: sqlite3.Connection) -> tuple[int, str | None]:
    """Check every link in seq order: (rows checked, the first problem or None)."""
    prev, expected = GENESIS_HASH, 1
    rows = conn.execute("SELECT seq, swap_id, body, prev_hash, hash FROM motion_log ORDER BY seq")
    for seq, swap_id, body, prev_col, digest in rows:
        problem = None
        if seq != expected:
            problem = f"seq {expected} missing"
        elif hashlib.sha256(str(body).encode()).hexdigest() != digest:
            problem = "hash does not match its content"
        else:
            try:
                entry = MotionEntry.model_validate({**json.loads(body), "hash": digest})
            except (ValueError, ValidationError):
                problem = "not a valid motion log entry"
            else:
                if (entry.seq, entry.swap_id, entry.prev_hash) != (seq, swap_id, prev_col):
                    problem = "columns seq, swap_id, prev_hash do not match its body"
                elif entry.prev_hash != prev:
                    problem = f"prev_hash does not match row {seq - 1}"
        if problem is not None:
            return expected - 1, f"motion log row {seq}: {problem}"
        prev, expected = str(digest), expected + 1
    return expected - 1, None


def select_sync(conn: sqlite3.Connection, swap_id: str | None = None) -> list[MotionEntry]:
    """The entries of one swap (or all), in order."""
    sql = "SELECT body, hash FROM motion_log"
    args: tuple[str, ...] = ()
    if swap_id is not None:
        sql, args = sql + " WHERE swap_id = ?", (swap_id,)
    return [
        MotionEntry.model_validate({**json.loads(body), "hash": digest})
        for body, digest in conn.execute(sql + " ORDER BY seq", args)
    ]
