"""Swap records: hash chain, idempotent append, append-only table, verify, export, CLI, crashes."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from controller.errors import JournalTooNewError, StorageError, SwapstationError
from controller.store.journal import FILENAME, MIGRATIONS, Journal, transaction
from controller.store.records import (
    CSV_COLUMNS,
    GENESIS_HASH,
    NewSwapRecord,
    OperatorAction,
    PackRef,
    RecordStore,
    StepTiming,
    SwapRecord,
    VerifyResult,
    canonical_json,
    insert_sync,
    record_hash,
)
from tests.support import REPO, run_swapctl, station_toml

T0 = datetime(2024, 5, 1, 9, 30, tzinfo=UTC)
TRIGGERS = (
    "swap_records_append_only_insert",
    "swap_records_no_update",
    "swap_records_no_delete",
)


def swap_id(i: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"swapstation-test/{i}"))


def new_record(i: int, **changes: Any) -> NewSwapRecord:
    start = T0 + timedelta(minutes=10 * i)
    fields: dict[str, Any] = {
        "swap_id": swap_id(i),
        "vehicle_id": f"VIN{i:05d}",
        "pack_type": "P48",
        "outcome": "completed",
        "reason": None,
        "started_at": start,
        "ended_at": start + timedelta(seconds=95.5),
        "pack_out": PackRef(serial=f"OUT{i}", pack_type="P48", soc=12.5),
        "pack_in": PackRef(serial=f"IN{i}", pack_type="P48", soc=97.0),
        "slot_out": 3,
        "slot_in": 7,
        "steps": [
            StepTiming(
                step="unlock",
                started_at=start,
                ended_at=start + timedelta(seconds=4.25),
                duration_s=4.25,
            ),
            StepTiming(step="extract", started_at=start + timedelta(seconds=4.25)),
        ],
        "operator_actions": (
            [
                OperatorAction(
                    at=start + timedelta(seconds=30), action="acknowledge", by="op-7", detail="ok"
                )
            ]
            if i % 2 == 0
            else []
        ),
    }
    fields.update(changes)
    return NewSwapRecord(**fields)


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    j = await Journal.open(tmp_path / "state")
    yield j
    await j.close()


async def _filled(journal: Journal, n: int, **kw: Any) -> tuple[RecordStore, list[SwapRecord]]:
    store = RecordStore(journal, **kw)
    return store, [await store.append(new_record(i)) for i in range(1, n + 1)]


def _raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def _drop_triggers(conn: sqlite3.Connection) -> None:
    """What an attacker with write access to the file does first."""
    for name in TRIGGERS:
        conn.execute(f"DROP TRIGGER {name}")


# --- the chain ----------------------------------------------------------------------------


async def test_append_assigns_seq_and_chains_hashes(journal: Journal) -> None:
    store, records = await _filled(journal, 3)
    assert [r.seq for r in records] == [1, 2, 3]
    assert records[0].prev_hash == GENESIS_HASH
    assert records[1].prev_hash == records[0].hash
    assert records[2].prev_hash == records[1].hash
    for r in records:
        assert r.hash == record_hash(r.model_dump(mode="json"))
        assert r.model_dump(exclude={"seq", "prev_hash", "hash"}) == new_record(r.seq).model_dump()
    assert len({r.hash for r in records}) == 3

    rows = await journal.call(
        lambda c: c.execute(
            "SELECT seq, swap_id, body, prev_hash, hash FROM swap_records ORDER BY seq"
        ).fetchall()
    )
    for (seq, sid, body, prev_hash, digest), r in zip(rows, records, strict=True):
        assert (seq, sid, prev_hash, digest) == (r.seq, r.swap_id, r.prev_hash, r.hash)
        assert hashlib.sha256(body.encode()).hexdigest() == digest  # body is the hashed text
        assert body == canonical_json(r.model_dump(mode="json", exclude={"hash"}))
        assert "hash" not in json.loads(body)

    assert await store.get(records[1].swap_id) == records[1]
    assert await store.get(swap_id(99)) is None
    assert await store.last(2) == records[1:]
    assert await store.last(10) == records
    assert await store.last(0) == []
    assert await store.count() == 3
    assert await store.head() == (3, records[2].hash)
    assert await store.verify() == VerifyResult(True, 3, last_hash=records[2].hash)


async def test_an_empty_store_verifies(journal: Journal) -> None:
    store = RecordStore(journal)
    assert await store.verify() == VerifyResult(True, 0)
    assert await store.head() == (0, GENESIS_HASH)


async def test_canonical_form_is_pinned(journal: Journal) -> None:
    """The exact bytes that are hashed: a change here breaks every stored chain."""
    store = RecordStore(journal)
    start = datetime(2024, 5, 1, 11, 30, tzinfo=timezone(timedelta(hours=2)))  # 09:30 UTC
    record = await store.append(
        NewSwapRecord(
            swap_id="6f1c1f0e-4a43-4f4e-9d0b-5b1e0f6a8c11",
            vehicle_id="VIN-Ä1",
            pack_type="P48",
            outcome="recovered",
            reason="resumed after restart",
            started_at=start,
            ended_at=start + timedelta(seconds=61, microseconds=500),
            pack_out=PackRef(serial="S1", soc=12),
            pack_in=None,
            slot_out=4,
            steps=[StepTiming(step="unlock", started_at=start, duration_s=1.5)],
            operator_actions=[OperatorAction(at=start, action="resume")],
        )
    )
    body = await journal.call(
        lambda c: c.execute("SELECT body FROM swap_records WHERE seq = 1").fetchone()[0]
    )
    assert body == (
        '{"ended_at":"2024-05-01T09:31:01.000500Z","operator_actions":[{"action":"resume",'
        '"at":"2024-05-01T09:30:00.000000Z","by":null,"detail":null}],"outcome":"recovered",'
        '"pack_in":null,"pack_out":{"pack_type":null,"serial":"S1","soc":12.0},'
        '"pack_type":"P48","prev_hash":"' + "0" * 64 + '","reason":"resumed after restart",'
        '"seq":1,"slot_in":null,"slot_out":4,"started_at":"2024-05-01T09:30:00.000000Z",'
        '"steps":[{"duration_s":1.5,"ended_at":null,"started_at":"2024-05-01T09:30:00.000000Z",'
        '"step":"unlock"}],"swap_id":"6f1c1f0e-4a43-4f4e-9d0b-5b1e0f6a8c11",'
        '"vehicle_id":"VIN-Ä1"}'
    )
    assert record.hash == hashlib.sha256(body.encode("utf-8")).hexdigest()
    assert record.started_at.utcoffset() == timedelta(0)
    assert json.loads(record.model_dump_json())["started_at"] == "2024-05-01T09:30:00.000000Z"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"started_at": datetime(2024, 5, 1, 9, 30)}, "timezone"),  # noqa: DTZ001 - the point
        ({"pack_out": PackRef(serial="S", soc=1.0), "colour": "red"}, "Extra inputs"),
        ({"outcome": "exploded"}, "completed"),
        ({"swap_id": ""}, "at least 1 character"),
    ],
)
def test_models_refuse_bad_input(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        new_record(1, **changes)


def test_models_are_frozen_and_refuse_nan() -> None:
    with pytest.raises(ValidationError, match="finite"):
        PackRef(serial="S", soc=float("nan"))
    record = new_record(1)
    with pytest.raises(ValidationError, match="frozen"):
        record.vehicle_id = "X"  # type: ignore[misc]
    assert set(NewSwapRecord.model_fields) == set(SwapRecord.model_fields) - {
        "seq",
        "prev_hash",
        "hash",
    }


async def test_append_is_idempotent_by_swap_id(
    journal: Journal, caplog: pytest.LogCaptureFixture
) -> None:
    store, records = await _filled(journal, 2)
    again = await store.append(new_record(1))
    assert again == records[0]
    assert await store.count() == 2
    assert "recorded already" not in caplog.text
    # Same swap, other content (a bug in the caller): the record stays as it was, loudly.
    with caplog.at_level(logging.WARNING):
        other = await store.append(new_record(2, outcome="failed", reason="changed my mind"))
    assert other == records[1]
    assert f"swap {swap_id(2)} is recorded already (record 2) with other content" in caplog.text
    assert await store.count() == 2
    assert (await store.verify()).ok


async def test_insert_sync_joins_the_callers_transaction(journal: Journal) -> None:
    store = RecordStore(journal)

    def with_event(fail: bool) -> Callable[[sqlite3.Connection], SwapRecord]:
        def run(conn: sqlite3.Connection) -> SwapRecord:
            with transaction(conn):
                record = insert_sync(conn, new_record(1))
                conn.execute(
                    "INSERT INTO events(at, kind, body) VALUES (?, 'swap_recorded', ?)",
                    (time.time(), json.dumps({"seq": record.seq})),
                )
                if fail:
                    raise RuntimeError("something else failed")
                return record

        return run

    with pytest.raises(RuntimeError):
        await journal.call(with_event(fail=True))
    assert await store.count() == 0
    assert await journal.call(lambda c: c.execute("SELECT count(*) FROM events").fetchone()[0]) == 0

    record = await journal.call(with_event(fail=False))
    assert await store.get(record.swap_id) == record
    assert await journal.call(lambda c: c.execute("SELECT count(*) FROM events").fetchone()[0]) == 1

    with pytest.raises(SwapstationError, match="inside a transaction"):
        await journal.call(lambda c: insert_sync(c, new_record(2)))


# --- append-only in the database ------------------------------------------------------------


async def test_the_table_refuses_update_delete_and_out_of_chain_inserts(
    journal: Journal,
) -> None:
    store, records = await _filled(journal, 3)
    conn = _raw(journal.path)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="append-only: UPDATE refused"):
            conn.execute("UPDATE swap_records SET body = '{}' WHERE seq = 2")
        with pytest.raises(sqlite3.IntegrityError, match="append-only: UPDATE refused"):
            conn.execute("UPDATE swap_records SET hash = hash")
        with pytest.raises(sqlite3.IntegrityError, match="append-only: DELETE refused"):
            conn.execute("DELETE FROM swap_records WHERE seq = 3")
        with pytest.raises(sqlite3.IntegrityError, match="append-only: DELETE refused"):
            conn.execute("DELETE FROM swap_records")
        bad_inserts = [
            # INSERT OR REPLACE would delete the old row without firing the DELETE trigger.
            ("INSERT OR REPLACE", 2, swap_id(50), records[0].hash),
            ("INSERT OR REPLACE", 4, records[0].swap_id, records[2].hash),
            ("INSERT", 5, swap_id(50), records[2].hash),  # a gap
            ("INSERT", 4, swap_id(50), GENESIS_HASH),  # not linked to the last record
        ]
        for verb, seq, sid, prev in bad_inserts:
            with pytest.raises(sqlite3.IntegrityError, match="append-only: insert the next"):
                conn.execute(
                    f"{verb} INTO swap_records(seq, swap_id, body, prev_hash, hash)"
                    " VALUES (?, ?, '{}', ?, ?)",
                    (seq, sid, prev, "f" * 64),
                )
    finally:
        conn.close()
    assert await store.last(10) == records
    assert (await store.verify()).ok


def _rehash(conn: sqlite3.Connection, seq: int, **changes: Any) -> None:
    """Rewrite a record and its own hash consistently (a careful attacker)."""
    body = json.loads(
        conn.execute("SELECT body FROM swap_records WHERE seq = ?", (seq,)).fetchone()[0]
    )
    body.update(changes)
    text = canonical_json(body)
    conn.execute(
        "UPDATE swap_records SET body = ?, hash = ?, prev_hash = ? WHERE seq = ?",
        (text, hashlib.sha256(text.encode()).hexdigest(), body["prev_hash"], seq),
    )


def _reformat(conn: sqlite3.Connection, seq: int) -> None:
    body = conn.execute("SELECT body FROM swap_records WHERE seq = ?", (seq,)).fetchone()[0]
    conn.execute(
        "UPDATE swap_records SET body = ? WHERE seq = ?",
        (json.dumps(json.loads(body), indent=1, sort_keys=True, ensure_ascii=False), seq),
    )


def _sql(statement: str) -> Callable[[sqlite3.Connection], None]:
    def run(conn: sqlite3.Connection) -> None:
        conn.execute(statement)

    return run


TAMPERINGS: list[tuple[str, Callable[[sqlite3.Connection], None], int, str]] = [
    (
        "edited-body",
        _sql("UPDATE swap_records SET body = replace(body, 'VIN00003', 'VIN99999') WHERE seq = 3"),
        3,
        "record 3: hash does not match its content",
    ),
    (
        "edited-hash",
        _sql(f"UPDATE swap_records SET hash = '{'a' * 64}' WHERE seq = 3"),
        3,
        "record 3: hash does not match its content",
    ),
    (
        "rewritten-and-rehashed",
        lambda c: _rehash(c, 3, outcome="failed"),
        4,
        "record 4: prev_hash does not match record 3",
    ),
    (
        "first-record-relinked",
        lambda c: _rehash(c, 1, prev_hash="f" * 64),
        1,
        "record 1: prev_hash is not 64 zeros (the start of the chain)",
    ),
    ("deleted", _sql("DELETE FROM swap_records WHERE seq = 2"), 2, "seq 2 missing"),
    ("deleted-first", _sql("DELETE FROM swap_records WHERE seq = 1"), 1, "seq 1 missing"),
    (
        "swap-id-column",
        _sql(f"UPDATE swap_records SET swap_id = '{swap_id(77)}' WHERE seq = 5"),
        5,
        "record 5: columns seq, swap_id, prev_hash do not match its body",
    ),
    ("reformatted-body", lambda c: _reformat(c, 2), 2, "record 2: body is not in canonical form"),
    (
        "invalid-but-hashed",
        lambda c: _rehash(c, 5, outcome="exploded"),
        5,
        "record 5: not a valid swap record (outcome: Input should be 'completed', 'aborted',"
        " 'failed' or 'recovered')",
    ),
]


@pytest.mark.parametrize(
    ("tamper", "bad_seq", "problem"),
    [pytest.param(fn, seq, problem, id=name) for name, fn, seq, problem in TAMPERINGS],
)
async def test_verify_finds_the_first_tampered_record(
    journal: Journal, tamper: Callable[[sqlite3.Connection], None], bad_seq: int, problem: str
) -> None:
    store, _ = await _filled(journal, 5, page_size=2)
    conn = _raw(journal.path)
    try:
        _drop_triggers(conn)
        tamper(conn)
    finally:
        conn.close()
    count = await store.count()
    assert await store.verify() == VerifyResult(False, count, bad_seq, problem)


# --- export -----------------------------------------------------------------------------------


async def test_export_jsonl_round_trips_and_verifies_independently(journal: Journal) -> None:
    store, records = await _filled(journal, 5, page_size=2)
    out = io.StringIO()
    assert await store.export("jsonl", out) == 5
    lines = out.getvalue().splitlines()
    assert [SwapRecord.model_validate_json(line) for line in lines] == records

    # Anyone can check an export with hashlib and json only.
    prev = "0" * 64
    for expected_seq, line in enumerate(lines, start=1):
        rec = json.loads(line)
        digest = rec.pop("hash")
        text = json.dumps(rec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert hashlib.sha256(text.encode()).hexdigest() == digest
        assert (rec["seq"], rec["prev_hash"]) == (expected_seq, prev)
        prev = digest

    out = io.StringIO()
    assert await store.export("jsonl", out, since_seq=3) == 2
    assert [SwapRecord.model_validate_json(x) for x in out.getvalue().splitlines()] == records[3:]
    out = io.StringIO()
    assert await store.export("jsonl", out, since_seq=5) == 0
    assert out.getvalue() == ""


async def test_export_csv_has_a_header_and_a_row_per_record(journal: Journal) -> None:
    store, records = await _filled(journal, 3, page_size=2)
    await store.append(
        new_record(
            4,
            outcome="aborted",
            reason='operator said "stop", twice',
            pack_in=None,
            slot_in=None,
            steps=[],
        )
    )
    out = io.StringIO(newline="")
    assert await store.export("csv", out) == 4
    rows = list(csv.reader(io.StringIO(out.getvalue(), newline="")))
    assert rows[0] == list(CSV_COLUMNS)
    assert len(rows) == 5
    first = dict(zip(CSV_COLUMNS, rows[2], strict=True))  # record 2 has an operator action
    assert first == {
        "seq": "2",
        "swap_id": swap_id(2),
        "vehicle_id": "VIN00002",
        "pack_type": "P48",
        "outcome": "completed",
        "reason": "",
        "started_at": "2024-05-01T09:50:00.000000Z",
        "ended_at": "2024-05-01T09:51:35.500000Z",
        "duration_s": "95.5",
        "pack_out_serial": "OUT2",
        "pack_out_type": "P48",
        "pack_out_soc": "12.5",
        "pack_in_serial": "IN2",
        "pack_in_type": "P48",
        "pack_in_soc": "97.0",
        "slot_out": "3",
        "slot_in": "7",
        "steps": "unlock=4.25;extract=",
        "operator_actions": "2024-05-01T09:50:30.000000Z acknowledge op-7 ok",
        "prev_hash": records[0].hash,
        "hash": records[1].hash,
    }
    last = dict(zip(CSV_COLUMNS, rows[4], strict=True))
    assert (last["outcome"], last["reason"]) == ("aborted", 'operator said "stop", twice')
    assert (last["pack_in_serial"], last["slot_in"], last["steps"]) == ("", "", "")
    assert out.getvalue().startswith("seq,swap_id,vehicle_id,")

    out = io.StringIO(newline="")
    assert await store.export("csv", out, since_seq=3) == 1
    assert len(list(csv.reader(io.StringIO(out.getvalue(), newline="")))) == 2


class _GatedOut(io.StringIO):
    """An output that holds its first write until released (a slow pipe)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def write(self, s: str) -> int:
        if not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(10)
        return super().write(s)


async def test_a_read_only_reader_streams_and_never_holds_up_the_writer(tmp_path: Path) -> None:
    state = tmp_path / "state"
    writer = await Journal.open(state)
    reader: Journal | None = None
    try:
        store, _ = await _filled(writer, 5)
        reader = await Journal.open(state, read_only=True)
        ro_store = RecordStore(reader, page_size=2)
        out = _GatedOut()
        export = asyncio.create_task(ro_store.export("jsonl", out))
        assert await asyncio.to_thread(out.entered.wait, 5)
        # The reader is in the middle of its export (page 1 of 3 is being written).
        started = time.monotonic()
        await store.append(new_record(6))
        busy, _, _ = await writer.call(
            lambda c: c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        )
        assert busy == 0  # the reader holds no snapshot between pages
        assert time.monotonic() - started < 1.0
        out.release.set()
        assert await export == 6  # pages are fetched as they are written: record 6 came along
        assert await ro_store.verify() == VerifyResult(True, 6, last_hash=(await store.head())[1])
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            await ro_store.append(new_record(7))
        boots = await reader.call(
            lambda c: c.execute("SELECT value FROM meta WHERE key = 'boot_count'").fetchone()[0]
        )
        assert (reader.boot_count, boots) == (0, "1")
    finally:
        if reader is not None:
            await reader.close()
        await writer.close()


async def test_read_only_open_refuses_a_missing_or_newer_journal(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="no such file"):
        await Journal.open(tmp_path / "nowhere", read_only=True)
    assert not (tmp_path / "nowhere").exists()
    conn = sqlite3.connect(tmp_path / FILENAME)
    conn.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(JournalTooNewError, match="newer than this software"):
        await Journal.open(tmp_path, read_only=True)


# --- swapctl records ------------------------------------------------------------------------


async def _cli_station(tmp_path: Path, n: int) -> tuple[Path, Path, list[SwapRecord]]:
    state = tmp_path / "state"
    journal = await Journal.open(state)
    try:
        _, records = await _filled(journal, n)
    finally:
        await journal.close()
    config = tmp_path / "station.toml"
    config.write_text(station_toml(None, state))
    return config, state / FILENAME, records


def _fingerprint(db: Path) -> tuple[str, str]:
    """The file's bytes and its boot counter."""
    conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
    try:
        boots = conn.execute("SELECT value FROM meta WHERE key = 'boot_count'").fetchone()[0]
    finally:
        conn.close()
    return hashlib.sha256(db.read_bytes()).hexdigest(), str(boots)


async def test_cli_verify_and_export_leave_the_journal_as_it_was(tmp_path: Path) -> None:
    config, db, records = await _cli_station(tmp_path, 3)
    before = _fingerprint(db)

    result = run_swapctl("records", "verify", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "3 records, chain intact",
        f"last record 3, hash {records[2].hash}",
    ]

    output = tmp_path / "out" / "records.jsonl"
    output.parent.mkdir()
    result = run_swapctl(
        "records", "export", "--config", str(config), "--format", "jsonl", "--output",
        str(output), "--since", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == f"2 records written to {output}\n"
    assert result.stdout == ""
    lines = output.read_text(encoding="utf-8").splitlines()
    assert [SwapRecord.model_validate_json(line) for line in lines] == records[1:]
    assert sorted(p.name for p in output.parent.iterdir()) == ["records.jsonl"]

    result = run_swapctl("records", "export", "--config", str(config), "--format", "csv")
    assert result.returncode == 0, result.stderr
    rows = list(csv.reader(io.StringIO(result.stdout, newline="")))
    assert rows[0] == list(CSV_COLUMNS)
    assert [row[0] for row in rows[1:]] == ["1", "2", "3"]

    assert _fingerprint(db) == before


async def test_cli_verify_reports_the_first_problem_and_exits_1(tmp_path: Path) -> None:
    config, db, _ = await _cli_station(tmp_path, 4)
    conn = _raw(db)
    try:
        _drop_triggers(conn)
        conn.execute("UPDATE swap_records SET body = replace(body, 'OUT2', 'OUT9') WHERE seq = 2")
    finally:
        conn.close()
    result = run_swapctl("records", "verify", "--config", str(config))
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines() == [
        "record 2: hash does not match its content",
        "4 records, chain broken at seq 2",
    ]


async def test_cli_problems_before_reading_anything(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(station_toml(None, tmp_path / "state") + "[mqtt]\nport = 0\n")
    result = run_swapctl("records", "verify", "--config", str(bad))
    assert result.returncode == 2
    assert str(bad) in result.stderr

    config = tmp_path / "station.toml"
    config.write_text(station_toml(None, tmp_path / "empty"))
    result = run_swapctl("records", "verify", "--config", str(config))
    assert result.returncode == 3
    assert "no such file" in result.stderr
    assert not (tmp_path / "empty").exists()

    result = run_swapctl("records", "--config", str(config))
    assert result.returncode == 2  # an action is required

    # A journal from before swap records: nothing to read, and nothing migrated.
    state = tmp_path / "old"
    state.mkdir()
    conn = _raw(state / FILENAME)
    for number, script in enumerate(MIGRATIONS[:3]):
        conn.executescript(f"{script}\nPRAGMA user_version={number + 1};")
    conn.close()
    config.write_text(station_toml(None, state))
    result = run_swapctl("records", "export", "--config", str(config), "--format", "jsonl")
    assert result.returncode == 3
    assert "has no swap records table" in result.stderr
    conn = _raw(state / FILENAME)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
    conn.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can make a file someone else's")
async def test_cli_refuses_root_on_someone_elses_journal(tmp_path: Path) -> None:
    config, db, _ = await _cli_station(tmp_path, 1)
    os.chown(db, 12345, 12345)
    result = run_swapctl("records", "verify", "--config", str(config))
    assert result.returncode == 3
    assert f"{db} belongs to 12345: run this as that user" in result.stderr
    assert not db.with_name(FILENAME + "-shm").exists()


# --- crashes ----------------------------------------------------------------------------------

# The child appends swaps 0, 1, 2, ... in order from its first argument's journal, and prints
# "i seq" once each append has returned (committed, fsynced).
CHILD = """
import asyncio, sys, uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from controller.store.journal import Journal
from controller.store.records import NewSwapRecord, RecordStore

async def main() -> None:
    journal = await Journal.open(Path(sys.argv[1]))
    store = RecordStore(journal)
    print("ready", flush=True)
    for i in range(int(sys.argv[2])):
        t = datetime(2024, 5, 1, tzinfo=UTC) + timedelta(minutes=i)
        record = await store.append(NewSwapRecord(
            swap_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"crash/{i}")), vehicle_id=f"V{i}",
            pack_type="P48", outcome="completed", started_at=t, ended_at=t + timedelta(seconds=90),
        ))
        print(i, record.seq, flush=True)
    await journal.close()

asyncio.run(main())
"""


def _crash_id(i: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"crash/{i}"))


def _child(state: Path, n: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(state), str(n)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


async def _check_after_crash(state: Path, acked: set[int], context: str) -> int:
    journal = await Journal.open(state)
    try:
        store = RecordStore(journal)
        result = await store.verify()
        assert result.ok, f"{context}: {result}"
        rows = await journal.call(
            lambda c: c.execute("SELECT seq, swap_id FROM swap_records ORDER BY seq").fetchall()
        )
    finally:
        await journal.close()
    assert [seq for seq, _ in rows] == list(range(1, len(rows) + 1)), context
    assert len({sid for _, sid in rows}) == len(rows), context
    # The child appends in order: the records are exactly its first len(rows) swaps...
    assert [sid for _, sid in rows] == [_crash_id(i) for i in range(len(rows))], context
    # ... and every append that returned before the kill is among them.
    assert all(i < len(rows) for i in acked), context
    return len(rows)


@pytest.mark.slow
async def test_sigkill_while_appending_loses_nothing_and_duplicates_nothing(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    count = 0
    for kill in range(6):
        context = f"seed {seed}, kill {kill}"
        proc = _child(state, 1_000_000)
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == "ready\n", proc.stderr.read() if proc.stderr else ""
            await asyncio.sleep(rng.uniform(0.0, 0.4))
            proc.send_signal(signal.SIGKILL)
            out, err = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == -signal.SIGKILL, f"{context}: {err}"
        acked = {int(line.split()[0]) for line in out.splitlines() if line.strip()}
        new_count = await _check_after_crash(state, acked, context)
        assert new_count >= count, context
        count = new_count
    assert count > 0, f"seed {seed}: no append in six runs"

    # The same swaps again, to the end: nothing is added, each gets its old seq back.
    proc = _child(state, count)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert lines[0] == "ready"
    assert lines[1:] == [f"{i} {i + 1}" for i in range(count)]
    assert await _check_after_crash(state, set(), f"seed {seed}, rerun") == count


# --- docs/records.md --------------------------------------------------------------------------


def _doc_snippet() -> str:
    text = (REPO / "docs" / "records.md").read_text()
    section = text[text.index("### Checking it yourself") :]
    start = section.index("```python\n") + len("```python\n")
    return section[start : section.index("```", start)]


async def test_the_independent_check_in_the_docs_works(tmp_path: Path) -> None:
    _, db, records = await _cli_station(tmp_path, 4)
    snippet = _doc_snippet()
    assert "controller" not in snippet  # standard library only

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", snippet, str(db)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    result = run()
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"4 records, chain intact, last hash {records[3].hash}\n"

    conn = _raw(db)
    try:
        _drop_triggers(conn)
        _rehash(conn, 2, vehicle_id="SOMEONE-ELSE")
    finally:
        conn.close()
    result = run()
    assert result.returncode == 1
    assert result.stderr == "record 3: prev_hash does not match record 2\n"
