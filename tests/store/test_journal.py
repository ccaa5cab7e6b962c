"""The journal: a real SQLite file, WAL, synchronous=FULL, migrations, boot counter."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from controller.config.loader import load_config
from controller.errors import JournalTooNewError
from controller.runtime.daemon import EXIT_CONFIG, Daemon
from controller.store import journal as journal_module
from controller.store.journal import FILENAME, MIGRATIONS, Journal
from tests.support import station_toml


async def test_opens_in_wal_with_full_sync_and_counts_boots(tmp_path: Path) -> None:
    for expected_boot in (1, 2, 3):
        journal = await Journal.open(tmp_path)
        assert journal.boot_count == expected_boot
        mode, sync, version = await journal.call(
            lambda c: (
                c.execute("PRAGMA journal_mode").fetchone()[0],
                c.execute("PRAGMA synchronous").fetchone()[0],
                c.execute("PRAGMA user_version").fetchone()[0],
            )
        )
        assert (mode, sync, version) == ("wal", 2, len(MIGRATIONS))  # 2 = FULL
        await journal.close()
        await journal.close()  # idempotent


async def test_a_journal_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / FILENAME)
    conn.execute(f"PRAGMA user_version={len(MIGRATIONS) + 5}")
    conn.close()
    with pytest.raises(JournalTooNewError, match="newer than this software"):
        await Journal.open(tmp_path)


async def test_daemon_exits_78_on_a_too_new_journal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    conn = sqlite3.connect(state / FILENAME)
    conn.execute("PRAGMA user_version=999")
    conn.close()
    path = tmp_path / "station.toml"
    path.write_text(station_toml(None, state))
    code = await asyncio.wait_for(Daemon(load_config(path, environ={})).run(), 10)
    assert code == EXIT_CONFIG
    assert "journal schema version 999 is newer than this software" in caplog.text


async def test_write_ahead_commits_jump_the_queue_and_bookkeeping_waits(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path)
    try:
        ran: list[str] = []
        loop = asyncio.get_running_loop()
        busy_now: asyncio.Future[None] = loop.create_future()
        release = threading.Event()

        def blocker(_conn: sqlite3.Connection) -> None:
            loop.call_soon_threadsafe(busy_now.set_result, None)
            release.wait(5)

        def job(name: str) -> Callable[[sqlite3.Connection], None]:
            return lambda _conn: ran.append(name)

        busy = asyncio.ensure_future(journal.call(blocker))
        await busy_now  # the thread is busy: what follows queues
        jobs = [
            asyncio.ensure_future(journal.call(job("lazy"), durable=False)),
            asyncio.ensure_future(journal.call(job("normal-1"))),
            asyncio.ensure_future(journal.call(job("urgent"), urgent=True)),
            asyncio.ensure_future(journal.call(job("normal-2"))),
        ]
        await asyncio.sleep(0)  # every job submitted
        release.set()
        await asyncio.gather(busy, *jobs)
        assert ran == ["urgent", "normal-1", "normal-2", "lazy"]
        # Bookkeeping commits without waiting for the disk; the connection is back at FULL.
        await journal.call(
            lambda c: c.execute("INSERT INTO meta(key, value) VALUES ('k', 'v')"), durable=False
        )
        assert await journal.call(lambda c: c.execute("PRAGMA synchronous").fetchone()[0]) == 2
    finally:
        await journal.close()
    reread = sqlite3.connect(tmp_path / FILENAME)
    assert reread.execute("SELECT value FROM meta WHERE key = 'k'").fetchone() == ("v",)
    reread.close()


async def test_the_wal_is_checkpointed_off_the_write_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "CHECKPOINT_EVERY_S", 0.05)
    journal = await Journal.open(tmp_path)
    try:
        # No commit checkpoints by itself: that is the checkpointer's job, on its own thread.
        assert await journal.call(lambda c: c.execute("PRAGMA wal_autocheckpoint").fetchone()) == (
            0,
        )
        blob = "x" * 4000

        def fill(conn: sqlite3.Connection) -> None:
            for n in range(200):
                conn.execute("INSERT INTO meta(key, value) VALUES (?, ?)", (f"k{n}", blob))

        await journal.call(fill)
        database = tmp_path / FILENAME
        deadline = asyncio.get_running_loop().time() + 10
        while database.stat().st_size < 200 * 4000:  # the rows reached the database file
            assert asyncio.get_running_loop().time() < deadline, "no checkpoint within 10 s"
            await asyncio.sleep(0.02)
    finally:
        await journal.close()
