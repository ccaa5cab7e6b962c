"""The station's durable store: one SQLite file, WAL, fsync on every commit.

All database work runs on one dedicated thread, so the event loop never waits on disk. Jobs
run in submission order within three lanes: the write-ahead commits a physical command waits
on first, then ordinary work, then bookkeeping that may be lost in a power cut (committed
without waiting for the disk). Every caller awaits its job, so one task's jobs keep their
order. The schema is migrated forward by `user_version`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import itertools
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any, TypeVar

from controller.errors import JournalTooNewError, StorageError
from drivers import clock

_log = logging.getLogger(__name__)
T = TypeVar("T")

FILENAME = "journal.sqlite3"
CHECKPOINT_EVERY_S = 2.0  # the WAL is copied into the database this often, off the write path

# Append-only list: migration N brings user_version from N to N+1.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) STRICT;
    """,
    """
    -- Events, in order; the outbox publishes those not yet published.
    CREATE TABLE events (
        seq       INTEGER PRIMARY KEY AUTOINCREMENT,
        at        REAL NOT NULL,
        kind      TEXT NOT NULL,
        body      TEXT NOT NULL,
        published INTEGER NOT NULL DEFAULT 0
    ) STRICT;
    CREATE INDEX events_unpublished ON events(seq) WHERE published = 0;
    -- Packs that must not be handed out until an operator releases them.
    CREATE TABLE pack_quarantine (
        serial TEXT PRIMARY KEY,
        reason TEXT NOT NULL,
        slot   INTEGER,
        since  REAL NOT NULL
    ) STRICT;
    -- Slots whose charging was tripped by supervision, until an operator resets them.
    CREATE TABLE slot_trips (
        slot   INTEGER PRIMARY KEY,
        reason TEXT NOT NULL,
        since  REAL NOT NULL
    ) STRICT;
    """,
    """
    -- Active alarms, so that a restart neither forgets to clear them nor raises them twice.
    CREATE TABLE alarms (
        scope    TEXT NOT NULL,
        code     TEXT NOT NULL,
        severity TEXT NOT NULL,
        message  TEXT NOT NULL,
        since    REAL NOT NULL,
        slot     INTEGER,
        rack     TEXT,
        PRIMARY KEY (scope, code)
    ) STRICT;
    """,
    """
    -- Swap records: append-only and hash-chained (controller/store/records.py, docs/records.md).
    -- body is the record's canonical JSON without its hash; hash = sha256(body).
    CREATE TABLE swap_records (
        seq       INTEGER PRIMARY KEY,
        swap_id   TEXT NOT NULL UNIQUE,
        body      TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash      TEXT NOT NULL
    ) STRICT;
    -- Only the next link of the chain may be inserted (this also defeats INSERT OR REPLACE,
    -- which would delete a row without firing the DELETE trigger).
    CREATE TRIGGER swap_records_append_only_insert BEFORE INSERT ON swap_records
    WHEN NEW.seq IS NOT COALESCE((SELECT max(seq) FROM swap_records), 0) + 1
      OR NEW.prev_hash IS NOT COALESCE(
           (SELECT hash FROM swap_records ORDER BY seq DESC LIMIT 1), hex(zeroblob(32)))
      OR EXISTS (SELECT 1 FROM swap_records WHERE swap_id = NEW.swap_id)
    BEGIN
        SELECT RAISE(ABORT, 'swap_records is append-only: insert the next record of the chain');
    END;
    CREATE TRIGGER swap_records_no_update BEFORE UPDATE ON swap_records
    BEGIN
        SELECT RAISE(ABORT, 'swap_records is append-only: UPDATE refused');
    END;
    CREATE TRIGGER swap_records_no_delete BEFORE DELETE ON swap_records
    BEGIN
        SELECT RAISE(ABORT, 'swap_records is append-only: DELETE refused');
    END;
    """,
    """
    -- Where every known pack is (controller/swap/inventory.py): one row per pack, so one place.
    CREATE TABLE packs (
        serial     TEXT PRIMARY KEY,
        place      TEXT NOT NULL CHECK (place IN ('slot', 'robot', 'vehicle')),
        slot       INTEGER,
        vehicle_id TEXT,
        pack_type  TEXT,
        since      REAL NOT NULL,
        CHECK ((place = 'slot') = (slot IS NOT NULL))
    ) STRICT;
    CREATE UNIQUE INDEX packs_one_per_slot ON packs(slot) WHERE place = 'slot';
    CREATE UNIQUE INDEX packs_one_on_robot ON packs(place) WHERE place = 'robot';
    -- The swap in progress (controller/swap/plan.py SwapContext), written before every
    -- physical command: what a restart recovers from.
    CREATE TABLE swap_current (
        id   INTEGER PRIMARY KEY CHECK (id = 1),
        body TEXT NOT NULL
    ) STRICT;
    -- The station state as last published retained on <root>/state (its outbox: published
    -- is cleared when it changes and set once the broker took it).
    CREATE TABLE station_state (
        id        INTEGER PRIMARY KEY CHECK (id = 1),
        body      TEXT NOT NULL,
        published INTEGER NOT NULL DEFAULT 0
    ) STRICT;
    """,
    """
    -- Remote commands handled, by the requester's id: a repeat gets the first reply and is
    -- not run again (controller/mqtt/commands.py). Pruned after commands.remember_ids_s.
    CREATE TABLE commands (
        id    TEXT PRIMARY KEY,
        at    REAL NOT NULL,
        name  TEXT NOT NULL,
        reply TEXT  -- NULL while it runs (or if the daemon stopped while it ran)
    ) STRICT;
    CREATE INDEX commands_at ON commands(at);
    -- Slots an operator took out of service (set_slot), across restarts.
    CREATE TABLE slots_disabled (
        slot  INTEGER PRIMARY KEY,
        since REAL NOT NULL
    ) STRICT;
    """,
    """
    -- Every command to machinery as the safety supervisor judged it
    -- (controller/safety/motionlog.py):
    -- append-only and hash-chained like swap_records. body is the entry's canonical JSON
    -- without its hash; hash = sha256(body).
    CREATE TABLE motion_log (
        seq       INTEGER PRIMARY KEY,
        swap_id   TEXT,
        body      TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash      TEXT NOT NULL
    ) STRICT;
    CREATE INDEX motion_log_swap ON motion_log(swap_id) WHERE swap_id IS NOT NULL;
    CREATE TRIGGER motion_log_append_only_insert BEFORE INSERT ON motion_log
    WHEN NEW.seq IS NOT COALESCE((SELECT max(seq) FROM motion_log), 0) + 1
      OR NEW.prev_hash IS NOT COALESCE(
           (SELECT hash FROM motion_log ORDER BY seq DESC LIMIT 1), hex(zeroblob(32)))
    BEGIN
        SELECT RAISE(ABORT, 'motion_log is append-only: insert the next entry of the chain');
    END;
    CREATE TRIGGER motion_log_no_update BEFORE UPDATE ON motion_log
    BEGIN
        SELECT RAISE(ABORT, 'motion_log is append-only: UPDATE refused');
    END;
    CREATE TRIGGER motion_log_no_delete BEFORE DELETE ON motion_log
    BEGIN
        SELECT RAISE(ABORT, 'motion_log is append-only: DELETE refused');
    END;
    """,
    """
    -- Chargers an operator switched off (set_charging off): they stay off across restarts
    -- until an operator switches them on again.
    CREATE TABLE charging_off (
        slot  INTEGER PRIMARY KEY,
        since REAL NOT NULL
    ) STRICT;
    """,
    """
    -- Power limits set at run time (set_power_limit), one per source, until lifted or ended.
    CREATE TABLE power_limits (
        source TEXT PRIMARY KEY,
        kw     REAL NOT NULL,
        until  REAL,
        set_at REAL NOT NULL,
        by     TEXT
    ) STRICT;
    -- Day-ahead prices (set_tariff), per kWh, over the configured schedule.
    CREATE TABLE tariff_prices (
        start REAL PRIMARY KEY,
        end   REAL NOT NULL,
        price REAL NOT NULL
    ) STRICT;
    """,
    """
    -- OCPP: messages that must reach the CSMS, in order, until it answers (docs/ocpp.md).
    CREATE TABLE ocpp_queue (
        seq     INTEGER PRIMARY KEY AUTOINCREMENT,
        action  TEXT NOT NULL,
        payload TEXT NOT NULL,
        at      REAL NOT NULL
    ) STRICT;
    -- How far the OCPP translator has read the events table (one row).
    CREATE TABLE ocpp_cursor (
        id  INTEGER PRIMARY KEY CHECK (id = 1),
        seq INTEGER NOT NULL
    ) STRICT;
    -- Swaps the translator follows: their requestId, idToken and reserved pack (JSON), and
    -- whether the pack went out.
    CREATE TABLE ocpp_swaps (
        swap_id    TEXT PRIMARY KEY,
        request_id INTEGER NOT NULL,
        id_token   TEXT NOT NULL,
        reserved   TEXT NOT NULL,
        sent_out   INTEGER NOT NULL DEFAULT 0,
        at         REAL NOT NULL
    ) STRICT;
    -- Open charging transactions, one per slot at most.
    CREATE TABLE ocpp_transactions (
        slot       INTEGER PRIMARY KEY,
        tx_id      TEXT NOT NULL,
        serial     TEXT NOT NULL,
        seq_no     INTEGER NOT NULL,
        started_at REAL NOT NULL,
        state      TEXT NOT NULL
    ) STRICT;
    """,
    """
    -- OCPP: how often a queued message was sent without an answer that settles it.
    ALTER TABLE ocpp_queue ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
    """,
)


class Lane(enum.IntEnum):
    """Which queued journal jobs run first (a job already running is never interrupted)."""

    URGENT = 0  # a write-ahead commit that a physical command waits on
    NORMAL = 1
    LAZY = 2  # bookkeeping, committed without waiting for the disk


_Job = tuple[Lane, int, Callable[[], object] | None, Future[object] | None]


class _Worker:
    """One thread running jobs by lane, then in submission order."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.PriorityQueue[_Job] = queue.PriorityQueue()
        self._order = itertools.count()
        self.lanes = {lane: _LaneExecutor(self, lane) for lane in Lane}
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], T], lane: Lane) -> Future[T]:
        future: Future[T] = Future()
        self._jobs.put((lane, next(self._order), fn, future))  # type: ignore[arg-type]
        return future

    def shutdown(self) -> None:
        """Run what is queued, then stop the thread (blocking)."""
        self._jobs.put((Lane.LAZY, next(self._order), None, None))
        self._thread.join()

    def _run(self) -> None:
        while True:
            _, _, fn, future = self._jobs.get()
            if fn is None or future is None:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
                future.set_exception(exc)
            else:
                future.set_result(result)


class _LaneExecutor(Executor):
    """One lane of the worker, as an executor: jobs go through `loop.run_in_executor`.

    So the event loop decides where they run: on the journal's thread in production, at
    once on the loop's own thread under the simulator's virtual time (`simstation.vloop`),
    where a job in flight on another thread would make the order of events a race.
    """

    def __init__(self, worker: _Worker, lane: Lane) -> None:
        self._worker = worker
        self._lane = lane

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        return self._worker.submit(functools.partial(fn, *args, **kwargs), self._lane)


class _Checkpointer:
    """Copies the WAL into the database on a thread and a connection of its own.

    SQLite's automatic checkpoint runs inside the commit that takes the WAL past 1000 pages,
    fsync of the database file included: that commit, a write-ahead one as likely as any, took
    100-250 ms (`bench/swap.py`). A passive checkpoint from another connection runs beside the
    writer in WAL mode and never makes it wait.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="journal-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # It must not die: with the automatic checkpoint off, the WAL would grow until the
        # disk is full. A failure is logged and the next period tries again, connection and all.
        conn: sqlite3.Connection | None = None
        failing = False
        while not self._stop.wait(CHECKPOINT_EVERY_S):
            try:
                if conn is None:
                    conn = sqlite3.connect(self._path, isolation_level=None, timeout=1.0)
                    conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                if failing:
                    _log.info("journal checkpoints work again")
                failing = False
            except Exception as exc:  # noqa: BLE001 - logged; retried every period, never fatal
                if not failing:
                    _log.warning("journal checkpoint failed (retrying every %g s): %s",
                                 CHECKPOINT_EVERY_S, exc)  # fmt: skip
                failing = True
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                    conn = None
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        """Stop (blocking until a checkpoint under way has finished)."""
        self._stop.set()
        self._thread.join()


class Journal:
    """Owns the SQLite connection and the thread it lives on."""

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        self._worker: _Worker | None = _Worker("journal")
        self._conn: sqlite3.Connection | None = None
        self._checkpointer: _Checkpointer | None = None
        self.boot_count = 0

    @classmethod
    async def open(cls, directory: Path, *, read_only: bool = False) -> Journal:
        """Open (creating if needed) the journal in `directory` and count this boot.

        `read_only=True` opens an existing journal for reading only, as tools do while the
        daemon may be running: no migration, no boot count, no checkpoint on close, and no
        write is possible (SQLite `mode=ro`). In WAL mode such a reader never blocks the
        daemon's writer. It still creates the `-wal` and `-shm` files if they are missing, as
        every SQLite reader of a WAL database does, so run it as the journal's owner.
        """
        journal = cls(directory / FILENAME, read_only=read_only)
        try:
            await journal._submit(journal._open_sync)
        except BaseException:
            await journal.close()
            raise
        if not read_only:
            journal._checkpointer = _Checkpointer(journal.path)
        return journal

    async def call(
        self,
        fn: Callable[[sqlite3.Connection], T],
        *,
        durable: bool = True,
        urgent: bool = False,
    ) -> T:
        """Run `fn(conn)` on the journal thread and return its result.

        `urgent=True` is for the write-ahead commit that a physical command waits on: it runs
        before any job queued in the other lanes. `durable=False` is for bookkeeping that is
        redone if a power cut loses it (an event marked published, the copy of the retained
        state): it runs after the others, and its commit does not wait for the disk
        (`synchronous=NORMAL`); the next durable commit's sync covers it, since the WAL is
        written in order.
        """
        if durable:
            lane = Lane.URGENT if urgent else Lane.NORMAL
            return await self._submit(lambda: fn(self._require_conn()), lane)
        return await self._submit(lambda: self._lazily(fn), Lane.LAZY)

    def _lazily(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._require_conn()
        conn.execute("PRAGMA synchronous=NORMAL")
        try:
            return fn(conn)
        finally:
            if conn.in_transaction:  # the level cannot change inside one
                conn.execute("ROLLBACK")
            conn.execute("PRAGMA synchronous=FULL")

    async def _submit(self, fn: Callable[[], T], lane: Lane = Lane.NORMAL) -> T:
        if self._worker is None:
            raise StorageError("journal is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker.lanes[lane], fn)

    async def close(self) -> None:
        """Checkpoint and close; idempotent."""
        if self._worker is None:
            return
        worker, self._worker = self._worker, None
        checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            await asyncio.to_thread(checkpointer.stop)
        try:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(worker.lanes[Lane.LAZY], self._close_sync)
        finally:
            await asyncio.to_thread(worker.shutdown)

    def _require_conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StorageError("journal is not open")
        return self._conn

    def _open_sync(self) -> None:
        if self.read_only:
            self._open_read_only_sync()
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=5.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA wal_autocheckpoint=0")  # `_Checkpointer` does it, off this thread
            conn.execute("PRAGMA foreign_keys=ON")
            self._conn = conn
            self._migrate(conn)
            with transaction(conn):
                row = conn.execute("SELECT value FROM meta WHERE key='boot_count'").fetchone()
                self.boot_count = (int(row[0]) if row else 0) + 1
                conn.execute(
                    "INSERT INTO meta(key, value) VALUES('boot_count', ?)"
                    " ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                    (str(self.boot_count),),
                )
                conn.execute(
                    "INSERT INTO meta(key, value) VALUES('last_boot_at', ?)"
                    " ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                    (repr(clock.wall()),),
                )
        except JournalTooNewError as exc:
            raise JournalTooNewError(f"cannot open journal {self.path}: {exc}") from exc
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"cannot open journal {self.path}: {exc}") from exc
        _log.info("journal %s open (boot %d)", self.path, self.boot_count)

    def _open_read_only_sync(self) -> None:
        if not self.path.is_file():
            raise StorageError(f"cannot open journal {self.path}: no such file")
        try:
            uri = f"{self.path.resolve().as_uri()}?mode=ro"
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=5.0)
            self._conn = conn
            _check_not_too_new(int(conn.execute("PRAGMA user_version").fetchone()[0]))
        except JournalTooNewError as exc:
            raise JournalTooNewError(f"cannot open journal {self.path}: {exc}") from exc
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"cannot open journal {self.path}: {exc}") from exc
        _log.info("journal %s open read-only", self.path)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        _check_not_too_new(version)
        for number in range(version, len(MIGRATIONS)):
            # executescript() commits any open transaction first, so the script carries its own.
            try:
                conn.executescript(
                    f"BEGIN IMMEDIATE;\n{MIGRATIONS[number]}\n"
                    f"PRAGMA user_version={number + 1};\nCOMMIT;"
                )
            except sqlite3.Error:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            _log.info("journal schema migrated to version %d", number + 1)

    def _close_sync(self) -> None:
        if self._conn is not None:
            try:
                if not self.read_only:
                    self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                self._conn.close()
                self._conn = None


def _check_not_too_new(version: int) -> None:
    if version > len(MIGRATIONS):
        raise JournalTooNewError(
            f"journal schema version {version} is newer than this software"
            f" ({len(MIGRATIONS)}): roll forward, or restore a matching backup"
        )


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error (the connection is in autocommit)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    try:
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # a failed COMMIT (busy, I/O) leaves it open
            conn.execute("ROLLBACK")
        raise
