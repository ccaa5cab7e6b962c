"""Virtual time for a whole simulation: an event loop whose clock jumps when nothing is left to do.

`VirtualLoop` is asyncio's selector loop with two changes:

- its `time()` is virtual. When no callback is ready and no socket has anything to read or
  write (the selector is asked without waiting), nothing can happen before the next timer, so
  the clock jumps to it instead of sleeping. A simulated second costs only the CPU of the
  events in it, and the answer does not depend on the machine's speed or load: the clock
  stands still while any work is left, however slowly the machine does it.
- work handed to an executor (`run_in_executor`, `asyncio.to_thread`, the journal's lanes) runs
  at once on the loop's thread. A job on another thread would finish at a moment the loop
  cannot know, and the order of events would become a race.

What makes it exact is that everything that talks runs in this process, on this loop, over
sockets whose bytes are in the peer's queue by the time `send` returns (loopback TCP and Unix
sockets; a pty's bytes are passed on by a kernel worker later, so the robot's serial line is a
TCP socket here, as it is behind a serial device server). `VirtualClock` gives the daemon
(`drivers.clock`) the same time, with a wall clock that starts at the simulated day's hour.
"""

from __future__ import annotations

import asyncio
import selectors
import types
from collections.abc import Callable, Coroutine, Generator
from concurrent.futures import Executor
from datetime import date, datetime, time
from typing import Any, TypeVar, cast

T = TypeVar("T")

# A fixed date (a Monday), so the same scenario gives the same records on every machine.
EPOCH_DATE = date(2026, 1, 5)
# A jump lands this much after the timer it is for, as wall time always does. Code that sleeps
# until a deadline it computed (`due - now`) and then checks `deadline <= now` would otherwise
# wake a rounding error early, find nothing due, and sleep for that error again, forever.
TIMER_SLACK_S = 1e-6
# While callbacks are ready, the kernel is asked for ready sockets only every this many turns.
SKIP_SELECTS = 8


class _Selector(selectors.DefaultSelector):
    """Asks the kernel without waiting; when nothing is there, jumps the loop's clock instead."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualLoop | None = None
        self._skipped = 0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        loop = self.loop
        ready = loop is not None and loop.has_ready()
        if ready and self._skipped < SKIP_SELECTS:
            # Callbacks are ready: the clock cannot move before they have run, so what the
            # sockets hold can wait for them (a syscall saved; every few turns, asked anyway,
            # so that a task spinning on `sleep(0)` cannot starve a reader).
            self._skipped += 1
            return []
        self._skipped = 0
        events: list[tuple[selectors.SelectorKey, int]] = super().select(0)
        if events or ready or loop is None:
            return events
        if timeout is None:
            # No timer at all: only the outside world (a signal) can wake us.
            return super().select(None)
        # Nothing to do before the next timer (due in `timeout`, perhaps 0: due now): the
        # clock goes to it, and past it, so that the timer runs and finds itself due.
        loop.advance(max(0.0, timeout))
        return events


class VirtualLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time (see the module's docstring)."""

    def __init__(self, start: float = 0.0) -> None:
        selector = _Selector()
        super().__init__(selector)
        selector.loop = self
        self._now = start
        # asyncio runs a timer up to this much before its time; on a clock that only moves when
        # the loop moves it, code that slept until a deadline would wake before it, sleep a
        # float step again and spin for ever. Timers run when due; `advance` gets them there.
        self._clock_resolution = 0.0
        self.jumps = 0  # how often the clock jumped (a measure of the idle points)

    def time(self) -> float:
        """Virtual seconds."""
        return self._now

    def has_ready(self) -> bool:
        """Callbacks are waiting to run in this turn."""
        return bool(self._ready)  # type: ignore[attr-defined]

    def advance(self, seconds: float) -> None:
        """Move the clock on to `seconds` from now, and just past it."""
        self._now += max(0.0, seconds) + TIMER_SLACK_S
        self.jumps += 1

    def run_in_executor(  # type: ignore[override]
        self,
        executor: Executor | None,  # noqa: ARG002 - nothing runs on another thread
        func: Callable[..., T],
        *args: Any,
    ) -> asyncio.Future[T]:
        """Run `func` now, on this thread; its result as a done future."""
        if self.is_closed():
            raise RuntimeError("Event loop is closed")
        future: asyncio.Future[T] = self.create_future()
        try:
            future.set_result(func(*args))
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            future.set_exception(exc)
        return future


class VirtualClock:
    """`drivers.clock.Clock` on a virtual loop: its time, and a wall time from `wall0`."""

    def __init__(self, loop: VirtualLoop, wall0: float) -> None:
        self.loop = loop
        self._offset = wall0 - loop.time()

    def monotonic(self) -> float:
        """The loop's virtual seconds."""
        return self.loop.time()

    def time(self) -> float:
        """Seconds since the epoch, moving with the loop."""
        return self._offset + self.loop.time()

    def set_wall(self, wall: float) -> None:
        """Step the wall time to `wall` now (as NTP steps a clock); monotonic time goes on."""
        self._offset = wall - self.loop.time()


def day_start(seconds_of_day: float, day: date = EPOCH_DATE) -> float:
    """The epoch seconds of `seconds_of_day` into `day`, in this machine's time zone."""
    midnight = datetime.combine(day, time(0)).astimezone()
    return midnight.timestamp() + seconds_of_day


def run_eagerly(
    loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]
) -> asyncio.Task[T] | None:
    """Run `coro` now, up to its first wait: None if it finished, else a task that goes on.

    What a task would do a loop turn later, minus the turn (Python 3.12's eager tasks). An
    exception it raises before its first wait is raised here.
    """
    try:
        yielded = coro.send(None)
    except StopIteration:
        return None
    return loop.create_task(_go_on(coro, yielded))


async def _go_on(coro: Coroutine[Any, Any, T], yielded: Any) -> T:
    return await _resumed(coro, yielded)


@types.coroutine
def _resumed(coro: Coroutine[Any, Any, T], yielded: Any) -> Generator[Any, Any, T]:
    """A coroutine that has already yielded `yielded`, as an awaitable that goes on with it."""
    while True:
        try:
            sent = yield yielded
        except BaseException as exc:  # noqa: BLE001 - thrown into the coroutine, as a task would
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return cast("T", stop.value)
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration as stop:
                return cast("T", stop.value)
