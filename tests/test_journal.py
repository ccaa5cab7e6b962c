"""The journal: a real SQLite file, WAL, synchronous=FULL, migrations, boot counter."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from controller.configload import load_config
from controller.daemon import EXIT_CONFIG, Daemon
from controller.journal import FILENAME, MIGRATIONS, Journal, JournalTooNewError
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
