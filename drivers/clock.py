"""The one time source of the daemon and its drivers: wall time in production, given in simulation.

Every time the code reads (a reading's age, a phase's start, a record's timestamp, the hour a
grid limit applies) comes from here, and every wait is an `asyncio` sleep or timeout on the
running loop. In production the clock is the system's (`time.monotonic`, `time.time`) and the
loop is the ordinary one. A simulation runs everything on a loop whose time is virtual
(`simstation.vloop`) and gives this module a clock that reads the same time (`use`): the
control logic has no special path, it only reads a different clock.

The clock is a context variable, so it follows the tasks started under it (the simulated
station and the daemon inside `swapctl simulate`) and nothing else (tests beside them).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    """A monotonic time (for ages and deadlines) and a wall time (for records and hours)."""

    def monotonic(self) -> float:
        """Seconds, never going back; only differences mean something."""
        ...

    def time(self) -> float:
        """Seconds since the Unix epoch."""
        ...


class SystemClock:
    """The machine's clocks."""

    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)


SYSTEM = SystemClock()
_current: ContextVar[Clock] = ContextVar("swapstation_clock", default=SYSTEM)


def current() -> Clock:
    """The clock in force here."""
    return _current.get()


@contextmanager
def use(clock: Clock) -> Iterator[Clock]:
    """Run the block (and the tasks it starts) on `clock`."""
    token = _current.set(clock)
    try:
        yield clock
    finally:
        _current.reset(token)


def monotonic() -> float:
    """The clock's monotonic seconds."""
    return _current.get().monotonic()


def wall() -> float:
    """The clock's seconds since the epoch."""
    return _current.get().time()


def utcnow() -> datetime:
    """The clock's wall time, in UTC."""
    return datetime.fromtimestamp(_current.get().time(), UTC)


def localnow() -> datetime:
    """The clock's wall time, in the machine's time zone (for hours of the day)."""
    return datetime.fromtimestamp(_current.get().time()).astimezone()
