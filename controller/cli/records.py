"""`swapctl records verify|export|motion`: the swap records and the motion log, from the journal.

The journal is opened read-only (`Journal.open(..., read_only=True)`): nothing in it changes,
and the daemon may run meanwhile, since a WAL reader never blocks the writer. Exit codes: 0
done, 1 the chain is broken (or a record cannot be read back), 2 the config is invalid (the
caller's), 3 the journal or the output file cannot be opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import pwd
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TextIO

from controller.config.model import StationConfig
from controller.errors import RecordError, StorageError, UnreadableJournalError
from controller.safety.motionlog import select_sync, verify_sync
from controller.store.journal import FILENAME, Journal
from controller.store.records import ExportFormat, RecordStore

EXIT_BROKEN = 1
EXIT_UNREADABLE = 3


def verify_command(config: StationConfig) -> int:
    """`swapctl records verify`: check the chain, print the outcome, return the exit code."""
    try:
        return asyncio.run(_verify(config.storage.dir))
    except UnreadableJournalError as exc:
        print(exc, file=sys.stderr)
        return EXIT_UNREADABLE


def export_command(
    config: StationConfig, fmt: ExportFormat, output: Path | None, since_seq: int
) -> int:
    """`swapctl records export`: write the records after `since_seq` to `output` or stdout."""
    try:
        if output is None:
            return _export_to_stdout(config.storage.dir, fmt, since_seq)
        return _export_to_file(config.storage.dir, fmt, output, since_seq)
    except UnreadableJournalError as exc:
        print(exc, file=sys.stderr)
        return EXIT_UNREADABLE
    except RecordError as exc:
        print(exc, file=sys.stderr)
        return EXIT_BROKEN


async def _verify(directory: Path) -> int:
    async with _store(directory) as store:
        result = await store.verify()
    if result.ok:
        print(f"{result.count} records, chain intact")
        if result.last_hash is not None:
            print(f"last record {result.count}, hash {result.last_hash}")
        return 0
    print(result.problem)
    print(f"{result.count} records, chain broken at seq {result.first_bad_seq}")
    return EXIT_BROKEN


async def _export(directory: Path, fmt: ExportFormat, out: TextIO, since_seq: int) -> int:
    async with _store(directory) as store:
        return await store.export(fmt, out, since_seq)


def _export_to_stdout(directory: Path, fmt: ExportFormat, since_seq: int) -> int:
    out = sys.stdout
    if isinstance(out, io.TextIOWrapper):
        out.reconfigure(encoding="utf-8", newline="")  # the data is UTF-8 whatever the locale
    try:
        asyncio.run(_export(directory, fmt, out, since_seq))
    except BrokenPipeError:
        # The reader went away (`| head`): say nothing more on a closed stdout.
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        return EXIT_BROKEN
    return 0


def _export_to_file(directory: Path, fmt: ExportFormat, output: Path, since_seq: int) -> int:
    """Write to a temporary file next to `output`, renamed over it once complete.

    An export that fails half-way leaves no truncated file that looks complete. A path that
    exists and is no regular file (a FIFO, /dev/stdout) is written to directly.
    """
    direct = output.exists() and not output.is_file()
    target = output if direct else output.with_name(f".{output.name}.{os.getpid()}.partial")
    try:
        out = target.open("w", encoding="utf-8", newline="")
    except OSError as exc:
        raise UnreadableJournalError(f"cannot write {output}: {exc.strerror or exc}") from exc
    try:
        with out:
            count = asyncio.run(_export(directory, fmt, out, since_seq))
        if not direct:
            target.replace(output)
    except BaseException:
        if not direct:
            target.unlink(missing_ok=True)
        raise
    print(f"{count} records written to {output}", file=sys.stderr)
    return 0


@contextlib.asynccontextmanager
async def _journal(directory: Path) -> AsyncIterator[Journal]:
    """The journal, read-only; `UnreadableJournalError` when it cannot (or must not) be read."""
    path = directory / FILENAME
    refusal = _ownership_problem(path)
    if refusal is not None:
        raise UnreadableJournalError(refusal)
    try:
        journal = await Journal.open(directory, read_only=True)
    except StorageError as exc:
        raise UnreadableJournalError(str(exc)) from exc
    try:
        yield journal
    except sqlite3.Error as exc:
        raise UnreadableJournalError(f"cannot read journal {path}: {exc}") from exc
    finally:
        await journal.close()


@contextlib.asynccontextmanager
async def _store(directory: Path) -> AsyncIterator[RecordStore]:
    async with _journal(directory) as journal:
        has_records = await journal.call(
            lambda c: (
                c.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'swap_records'"
                ).fetchone()
                is not None
            )
        )
        if not has_records:
            raise UnreadableJournalError(
                f"journal {directory / FILENAME} has no swap records table: its schema is from"
                " an older release (the daemon of this release migrates it when it starts)"
            )
        yield RecordStore(journal)


def _ownership_problem(path: Path) -> str | None:
    """Refuse root on someone else's journal: SQLite may create `-wal`/`-shm` files as root.

    Files the daemon's user cannot write would keep the daemon from opening its journal.
    """
    if os.geteuid() != 0:
        return None
    try:
        owner = path.stat().st_uid
    except OSError:
        return None  # Journal.open says what is wrong
    if owner == 0:
        return None
    try:
        name = pwd.getpwuid(owner).pw_name
    except KeyError:
        name = str(owner)
    return (
        f"{path} belongs to {name}: run this as that user (runuser -u {name} -- swapctl"
        " records ...); files SQLite would create as root could lock the daemon out"
    )


def motion_command(config: StationConfig, swap_id: str | None, *, verify: bool) -> int:
    """`swapctl records motion`: the motion log as JSON Lines (one swap's, or all), or verify it.

    Exit codes as for the records: 0, 1 the chain is broken, 3 the journal cannot be read.
    """
    try:
        return asyncio.run(_motion(config.storage.dir, swap_id, verify=verify))
    except UnreadableJournalError as exc:
        print(exc, file=sys.stderr)
        return EXIT_UNREADABLE


async def _motion(directory: Path, swap_id: str | None, *, verify: bool) -> int:
    async with _journal(directory) as journal:
        if verify:
            count, problem = await journal.call(verify_sync)
            if problem is not None:
                print(problem)
                print(f"motion log broken after entry {count}")
                return EXIT_BROKEN
            print(f"{count} motion log entries, chain intact")
            return 0
        entries = await journal.call(lambda conn: select_sync(conn, swap_id))
    sys.stdout.write("".join(entry.model_dump_json() + "\n" for entry in entries))
    return 0
