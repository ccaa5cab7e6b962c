"""Swap records: the append-only, tamper-evident record of every swap.

Every swap, whatever its outcome, ends as one `SwapRecord` in the journal's `swap_records`
table. Records form a hash chain: each one carries the SHA-256 of its predecessor
(`prev_hash`) and its own (`hash`), computed over its canonical JSON (`canonical_json`), so
that changing, removing or reordering a record is detected by `RecordStore.verify`. The table
itself refuses UPDATE and DELETE (triggers), and accepts only the next link of the chain.

Canonical form: `json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
allow_nan=False)` encoded as UTF-8, over the record without its `hash` field (`seq` and
`prev_hash` included). Datetimes are UTC, ISO 8601 with six fractional digits and a "Z"
(`2024-05-01T09:30:00.000000Z`); a float is written as Python writes it (`85.0`). The `body`
column holds exactly these bytes, so `hash == sha256(body)`. See docs/records.md.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Annotated, Any, Literal, TextIO

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    PlainSerializer,
    ValidationError,
)

from controller.errors import RecordError, SwapstationError
from controller.store.journal import Journal, transaction

_log = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
"""The `prev_hash` of record 1."""

PAGE_SIZE = 500
"""Records fetched per trip to the journal thread by `verify` and `export`."""

CSV_COLUMNS: tuple[str, ...] = (
    "seq",
    "swap_id",
    "vehicle_id",
    "pack_type",
    "outcome",
    "reason",
    "started_at",
    "ended_at",
    "duration_s",
    "pack_out_serial",
    "pack_out_type",
    "pack_out_soc",
    "pack_in_serial",
    "pack_in_type",
    "pack_in_soc",
    "slot_out",
    "slot_in",
    "steps",
    "operator_actions",
    "prev_hash",
    "hash",
)

Outcome = Literal["completed", "aborted", "failed", "recovered"]
ExportFormat = Literal["csv", "jsonl"]
_Row = tuple[int, str, str, str, str]  # seq, swap_id, body, prev_hash, hash


def format_utc(value: datetime) -> str:
    """The canonical text of a datetime: UTC, microseconds, "Z" (`...T09:30:00.000000Z`)."""
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


UtcDatetime = Annotated[
    AwareDatetime,
    AfterValidator(_to_utc),
    PlainSerializer(format_utc, return_type=str, when_used="json"),
]
"""A timezone-aware datetime, normalised to UTC; naive datetimes are refused."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PackRef(_Frozen):
    """A battery pack, as it was at the swap."""

    serial: str
    pack_type: str | None = None
    soc: FiniteFloat | None = None


class StepTiming(_Frozen):
    """One step of the swap sequence and how long it took."""

    step: str
    started_at: UtcDatetime
    ended_at: UtcDatetime | None = None
    duration_s: FiniteFloat | None = None


class OperatorAction(_Frozen):
    """Something a person did during the swap (acknowledge, retry, abort, ...)."""

    at: UtcDatetime
    action: str
    by: str | None = None
    detail: str | None = None


class _SwapFields(_Frozen):
    swap_id: str = Field(min_length=1)
    vehicle_id: str
    pack_type: str
    outcome: Outcome
    reason: str | None = None
    started_at: UtcDatetime
    ended_at: UtcDatetime
    pack_out: PackRef | None = None
    pack_in: PackRef | None = None
    slot_out: int | None = None
    slot_in: int | None = None
    steps: list[StepTiming] = Field(default_factory=list)
    operator_actions: list[OperatorAction] = Field(default_factory=list)


class NewSwapRecord(_SwapFields):
    """A swap to record, as the caller gives it; the store adds `seq`, `prev_hash`, `hash`.

    `swap_id` is chosen by the caller (a UUID, `str(uuid.uuid4())`) and compared exactly: it
    is what makes an append idempotent. `pack_out` is the pack taken out of the vehicle and
    `slot_out` the slot it went into; `pack_in` is the pack installed into the vehicle and
    `slot_in` the slot it came from.
    """


class SwapRecord(_SwapFields):
    """A recorded swap: a link of the hash chain."""

    seq: int
    prev_hash: str
    hash: str

    @property
    def duration_s(self) -> float:
        """Seconds from start to end of the swap."""
        return (self.ended_at - self.started_at).total_seconds()


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of a chain verification.

    `count` is the number of records in the store (all of them, also when the chain is
    broken); `first_bad_seq` and `problem` say where and what the first problem is.
    `last_hash` is the hash of the last record of an intact chain (None if there is none):
    kept elsewhere, it shows later whether the tail was removed or rewritten.
    """

    ok: bool
    count: int
    first_bad_seq: int | None = None
    problem: str | None = None
    last_hash: str | None = None


def canonical_json(obj: Any) -> str:
    """The canonical JSON text of a JSON-able value: sorted keys, no whitespace, UTF-8."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def record_hash(record_dict: Mapping[str, Any]) -> str:
    """Hex SHA-256 of a record's canonical JSON, its `hash` field left out.

    `record_dict` is the JSON form of a record (a stored body parsed with `json.loads`, a line
    of a JSON Lines export, or `model_dump(mode="json")`), with `seq` and `prev_hash`.
    """
    body = {key: value for key, value in record_dict.items() if key != "hash"}
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


def insert_sync(conn: sqlite3.Connection, new: NewSwapRecord) -> SwapRecord:
    """Append `new` on `conn`, inside the caller's transaction; return the stored record.

    For a caller that writes the record together with other rows, on the journal thread
    (`Journal.call`) within `controller.store.journal.transaction`. Idempotent by `swap_id`: a swap
    recorded already (before a crash, say) is returned as it was stored, and nothing is added.
    """
    if not conn.in_transaction:
        raise SwapstationError("insert_sync must run inside a transaction (journal.transaction)")
    row = conn.execute(
        "SELECT seq, swap_id, body, prev_hash, hash FROM swap_records WHERE swap_id = ?",
        (new.swap_id,),
    ).fetchone()
    if row is not None:
        existing = _from_row(row)
        if existing.model_dump(exclude={"seq", "prev_hash", "hash"}) != new.model_dump():
            _log.warning(
                "swap %s is recorded already (record %d) with other content; the record stays"
                " as it was",
                new.swap_id,
                existing.seq,
            )
        return existing
    last = conn.execute("SELECT seq, hash FROM swap_records ORDER BY seq DESC LIMIT 1").fetchone()
    seq, prev_hash = (int(last[0]) + 1, str(last[1])) if last else (1, GENESIS_HASH)
    content = {**new.model_dump(mode="json"), "seq": seq, "prev_hash": prev_hash}
    body = canonical_json(content)
    digest = hashlib.sha256(body.encode()).hexdigest()
    conn.execute(
        "INSERT INTO swap_records(seq, swap_id, body, prev_hash, hash) VALUES (?, ?, ?, ?, ?)",
        (seq, new.swap_id, body, prev_hash, digest),
    )
    return SwapRecord.model_validate({**content, "hash": digest})


def _from_row(row: _Row) -> SwapRecord:
    seq, _, body, _, digest = row
    try:
        return SwapRecord.model_validate({**json.loads(body), "hash": digest})
    except (ValueError, TypeError) as exc:  # ValidationError is a ValueError
        raise RecordError(
            f"record {seq}: not a valid swap record ({_first_line(exc)});"
            " run `swapctl records verify`"
        ) from exc


def _first_line(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        return f"{where}: {error['msg']}" if where else error["msg"]
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _page(conn: sqlite3.Connection, after: int, limit: int) -> list[_Row]:
    rows = conn.execute(
        "SELECT seq, swap_id, body, prev_hash, hash FROM swap_records"
        " WHERE seq > ? ORDER BY seq LIMIT ?",
        (after, limit),
    ).fetchall()
    return [(int(s), str(i), str(b), str(p), str(h)) for s, i, b, p, h in rows]


class _Chain:
    """Checks rows one by one, in seq order."""

    def __init__(self) -> None:
        self.expected = 1
        self.prev_hash = GENESIS_HASH

    def check(self, row: _Row) -> tuple[int, str] | None:
        """None if `row` is the intact next link, else (the bad seq, the problem)."""
        seq, swap_id, body, prev_hash_col, digest = row
        if seq > self.expected:
            return self.expected, f"seq {self.expected} missing"
        if seq < self.expected:
            return seq, f"record {seq}: seq out of order (expected {self.expected})"
        problem = self._content_problem(seq, swap_id, body, prev_hash_col, digest)
        if problem is not None:
            return seq, f"record {seq}: {problem}"
        self.expected += 1
        self.prev_hash = digest
        return None

    def _content_problem(  # noqa: PLR0911 - one return per check, in the order they run
        self, seq: int, swap_id: str, body: str, prev_hash_col: str, digest: str
    ) -> str | None:
        try:
            content = json.loads(body)
        except ValueError:
            return "body is not JSON"
        if not isinstance(content, dict):
            return "body is not a JSON object"
        if record_hash(content) != digest:
            return "hash does not match its content"
        if canonical_json(content) != body:
            return "body is not in canonical form"
        if (content.get("seq"), content.get("swap_id"), content.get("prev_hash")) != (
            seq,
            swap_id,
            prev_hash_col,
        ):
            return "columns seq, swap_id, prev_hash do not match its body"
        if content["prev_hash"] != self.prev_hash:
            if seq == 1:
                return "prev_hash is not 64 zeros (the start of the chain)"
            return f"prev_hash does not match record {seq - 1}"
        try:
            SwapRecord.model_validate({**content, "hash": digest})
        except ValidationError as exc:
            return f"not a valid swap record ({_first_line(exc)})"
        return None


class RecordStore:
    """Swap records in the journal: append, read, verify, export.

    Every database access runs on the journal's thread; `verify` and `export` read in pages
    of `page_size`, each page its own short read, so that a reader on a read-only journal
    (`Journal.open(..., read_only=True)`) never holds a snapshot that would keep the daemon
    from checkpointing, and memory stays bounded whatever the number of records.
    """

    def __init__(self, journal: Journal, *, page_size: int = PAGE_SIZE) -> None:
        self._journal = journal
        self._page_size = page_size

    async def append(self, new: NewSwapRecord) -> SwapRecord:
        """Record a swap in one transaction; idempotent by `swap_id` (see `insert_sync`)."""

        def run(conn: sqlite3.Connection) -> SwapRecord:
            with transaction(conn):
                return insert_sync(conn, new)

        return await self._journal.call(run)

    async def get(self, swap_id: str) -> SwapRecord | None:
        """The record of a swap, or None."""
        row = await self._journal.call(
            lambda c: c.execute(
                "SELECT seq, swap_id, body, prev_hash, hash FROM swap_records WHERE swap_id = ?",
                (swap_id,),
            ).fetchone()
        )
        return None if row is None else _from_row(row)

    async def last(self, n: int) -> list[SwapRecord]:
        """The last `n` records, oldest first (in seq order)."""
        if n <= 0:
            return []
        rows = await self._journal.call(
            lambda c: c.execute(
                "SELECT seq, swap_id, body, prev_hash, hash FROM"
                " (SELECT * FROM swap_records ORDER BY seq DESC LIMIT ?) ORDER BY seq",
                (n,),
            ).fetchall()
        )
        return [_from_row(row) for row in rows]

    async def count(self) -> int:
        """The number of records."""
        row = await self._journal.call(
            lambda c: c.execute("SELECT count(*) FROM swap_records").fetchone()
        )
        return int(row[0])

    async def verify(self) -> VerifyResult:
        """Recompute every hash and link in seq order; report the first problem.

        Checks, per record: seq follows its predecessor without a gap; the hash matches the
        content; the body is canonical and agrees with the seq, swap_id and prev_hash columns;
        prev_hash is the previous record's hash (64 zeros for record 1); the body is a valid
        record. What the chain cannot show is a removed tail (or a rewritten one): compare the
        last hash with a copy kept elsewhere for that.
        """
        chain = _Chain()
        seen = 0
        async for rows in self._pages(after=-(2**63)):
            for row in rows:
                bad = chain.check(row)
                if bad is not None:
                    return VerifyResult(False, await self.count(), *bad)
                seen += 1
        return VerifyResult(True, seen, last_hash=chain.prev_hash if seen else None)

    async def head(self) -> tuple[int, str]:
        """The last record's seq and hash: (0, 64 zeros) while there is none."""
        row = await self._journal.call(
            lambda c: c.execute(
                "SELECT seq, hash FROM swap_records ORDER BY seq DESC LIMIT 1"
            ).fetchone()
        )
        return (0, GENESIS_HASH) if row is None else (int(row[0]), str(row[1]))

    async def export(self, fmt: ExportFormat, out: TextIO, since_seq: int = 0) -> int:
        """Write the records with seq > `since_seq` to `out`; return how many.

        `jsonl`: one record per line, the model's JSON. `csv`: a header, then one flat row
        per record (`CSV_COLUMNS`). Pages are formatted and written on a worker thread, so a
        slow `out` does not hold up the event loop nor the journal thread.
        """
        if fmt not in ("csv", "jsonl"):
            raise ValueError(f"unknown export format {fmt!r}: csv or jsonl")
        if fmt == "csv":
            await asyncio.to_thread(out.write, _csv_text([list(CSV_COLUMNS)]))
        written = 0
        async for rows in self._pages(after=since_seq):
            written += await asyncio.to_thread(_write_page, fmt, rows, out)
        await asyncio.to_thread(out.flush)
        return written

    async def _pages(self, after: int) -> AsyncIterator[list[_Row]]:
        while True:
            rows = await self._journal.call(partial(_page, after=after, limit=self._page_size))
            if not rows:
                return
            yield rows
            after = rows[-1][0]


def _write_page(fmt: ExportFormat, rows: list[_Row], out: TextIO) -> int:
    records = [_from_row(row) for row in rows]
    if fmt == "jsonl":
        out.write("".join(record.model_dump_json() + "\n" for record in records))
    else:
        out.write(_csv_text([csv_row(record) for record in records]))
    return len(records)


def _csv_text(rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)  # RFC 4180: quoted as needed, CRLF line ends
    return buffer.getvalue()


def csv_row(record: SwapRecord) -> list[str]:
    """A record as the flat CSV row of `CSV_COLUMNS` (None is an empty cell)."""

    def text(value: object) -> str:
        if value is None:
            return ""
        if isinstance(value, datetime):
            return format_utc(value)
        return str(value)

    steps = ";".join(f"{s.step}={text(s.duration_s)}" for s in record.steps)
    actions = ";".join(
        " ".join([format_utc(a.at), a.action, a.by or "-", *([a.detail] if a.detail else [])])
        for a in record.operator_actions
    )
    out, into = record.pack_out, record.pack_in
    values: list[object] = [
        record.seq,
        record.swap_id,
        record.vehicle_id,
        record.pack_type,
        record.outcome,
        record.reason,
        record.started_at,
        record.ended_at,
        record.duration_s,
        out.serial if out else None,
        out.pack_type if out else None,
        out.soc if out else None,
        into.serial if into else None,
        into.pack_type if into else None,
        into.soc if into else None,
        record.slot_out,
        record.slot_in,
        steps,
        actions,
        record.prev_hash,
        record.hash,
    ]
    return [text(v) for v in values]
