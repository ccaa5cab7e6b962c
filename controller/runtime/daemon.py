"""The daemon's lifecycle: open storage, run every job as a named task, stop in order.

Order of an orderly stop (SIGTERM/SIGINT), within `SHUTDOWN_BUDGET_S`: STOPPING=1, machinery
to its safe state, `offline` published, tasks cancelled, journal checkpointed and closed.
A task that fails or returns takes the daemon down with its cause logged, and `run()`
returns a non-zero exit code so that systemd restarts us.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from controller import __version__
from controller.config.model import StationConfig
from controller.errors import JournalTooNewError, StorageError, TaskExitedError
from controller.mqtt.link import MqttLink
from controller.runtime.sdnotify import Notifier
from controller.runtime.station import Station
from controller.store.journal import Journal
from drivers import clock

_log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
# sysexits EX_CONFIG: the config or the deployment is wrong (an invalid station.toml, a journal
# written by a newer release). A restart cannot fix it, so the unit does not restart on it.
EXIT_CONFIG = 78
# sysexits EX_TEMPFAIL: an orderly stop asked to be restarted (an OCPP Reset); the unit's
# RestartForceExitStatus=75 restarts it.
EXIT_RESTART = 75
SHUTDOWN_BUDGET_S = 5.0
SAFE_STATE_TIMEOUT_S = 2.0
MQTT_OFFLINE_TIMEOUT_S = 1.5
CONTROL_PERIOD_S = 2.5  # the heartbeat's longest period (a quarter of the watchdog's, if less)
CANCEL_RETRY_S = 0.1
STATUS_PERIOD_S = 5.0
SWITCH_INTERVAL_S = 0.001  # the GIL hand-over between the journal thread and the loop

SafeStateHook = Callable[[], Awaitable[None]]
# Tasks that run until the very end of a shutdown; every other one is stopped first.
# (the robot link stays up so that the safe state can still send the robot its STOP)
KEEP_UNTIL_LAST = frozenset({"mqtt", "control", "watchdog", "robot"})


class Daemon:
    """Owns storage, the MQTT link and the control loop for one station."""

    def __init__(self, config: StationConfig, *, notifier: Notifier | None = None) -> None:
        self.config = config
        self.notifier = notifier or Notifier()
        self.link = MqttLink(config.mqtt, client_id=config.client_id, topic_root=config.topic_root)
        self.journal: Journal | None = None
        self.station: Station | None = None
        self.started_at = clock.wall()
        self._stop = asyncio.Event()
        self._stop_reason = ""
        self._restart = False
        self._safe_state_hooks: list[SafeStateHook] = []
        self._last_tick = 0.0

    def request_stop(self, reason: str, *, restart: bool = False) -> None:
        """Begin an orderly stop (idempotent); `restart`: exit EXIT_RESTART, for systemd."""
        if self._stop.is_set():
            _log.info("%s received while already stopping", reason)
            return
        _log.info("%s received: stopping%s", reason, " to restart" if restart else "")
        self._stop_reason = reason
        self._restart = restart
        self._stop.set()

    def add_safe_state_hook(self, hook: SafeStateHook) -> None:
        """Run `hook` first on shutdown to bring machinery to a safe state."""
        self._safe_state_hooks.append(hook)

    async def run(self) -> int:
        """Run until stopped; return the process exit code."""
        # The journal thread hands each write-ahead commit back to the event loop; at the
        # default 5 ms GIL switch interval that hand-over alone can cost a step 5 ms whenever
        # the loop is busy (publishing, polling). 1 ms keeps a step's overhead in single
        # milliseconds (bench/swap.py).
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig.name)
        try:
            return await self._run()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            self.notifier.close()

    async def _run(self) -> int:
        _log.info(
            "swapstation %s starting: station %s, %d rack(s), %d slot(s)",
            __version__,
            self.config.station_id,
            len(self.config.racks),
            self.config.slot_count,
        )
        try:
            self.journal = await Journal.open(self.config.storage.dir)
        except JournalTooNewError as exc:
            _log.critical("%s", exc)
            return EXIT_CONFIG
        except StorageError as exc:
            _log.critical("%s", exc)
            return EXIT_FAILURE
        exit_code = EXIT_OK
        try:
            self.station = Station(
                self.config,
                self.journal,
                self.link,
                restart=lambda reason: self.request_stop(reason, restart=True),
            )
            await self.station.start()
            self.add_safe_state_hook(self.station.safe_state)
            async with asyncio.TaskGroup() as tg:
                jobs = self._jobs()
                tasks = {
                    name: tg.create_task(self._supervised(name, coro), name=name)
                    for name, coro in jobs.items()
                }
                self.notifier.ready(self._status_line())
                _log.info("ready: %s", self._status_line())
                # What start-up built (modules, config, profiles, models) lives as long as the
                # process: out of the collector's way, a full collection takes about a
                # millisecond instead of 17 (a pause every step of a swap would feel).
                gc.freeze()
                await self._stop.wait()
                await self._shutdown(tasks)
                if self._restart:
                    exit_code = EXIT_RESTART
        except* Exception as group:  # noqa: BLE001 - any task failure ends the daemon, logged
            exit_code = EXIT_FAILURE
            self.notifier.stopping()
            for failure in _leaves(group):
                _log.critical("stopping on failure: %s", _describe(failure), exc_info=failure)
            await self._safe_state()
        finally:
            if self.station is not None:
                await self.station.close()
            await self._close_journal()
        _log.info("stopped (exit code %d)", exit_code)
        return exit_code

    def _jobs(self) -> dict[str, Coroutine[Any, Any, None]]:
        """Every long-running job of the daemon, by task name."""
        jobs = {
            "mqtt": self.link.run(),
            "control": self._control_loop(),
            "watchdog": self._watchdog_loop(),
            "status": self._status_loop(),
        }
        if self.station is not None:
            jobs.update(self.station.jobs())
        return jobs

    async def _supervised(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except Exception as exc:
            exc.add_note(f"in daemon task {name!r}")
            raise
        if not self._stop.is_set():
            raise TaskExitedError(f"task {name!r} returned while the daemon was running")

    async def _shutdown(self, tasks: dict[str, asyncio.Task[None]]) -> None:
        self.notifier.stopping()
        deadline = clock.monotonic() + SHUTDOWN_BUDGET_S
        # 1. Stop everything that could command machinery, so nothing undoes the safe state.
        await _cancel_all([t for n, t in tasks.items() if n not in KEEP_UNTIL_LAST], deadline)
        # 2. Machinery to its safe state.
        await self._safe_state()
        # 3. Say goodbye on MQTT, then end the rest.
        self.link.stop()
        mqtt = tasks.get("mqtt")
        if mqtt is not None:
            remaining = max(0.1, min(MQTT_OFFLINE_TIMEOUT_S, deadline - clock.monotonic()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await asyncio.shield(mqtt)
        await _cancel_all(list(tasks.values()), max(deadline, clock.monotonic() + 0.5))

    async def _safe_state(self) -> None:
        for hook in self._safe_state_hooks:
            try:
                async with asyncio.timeout(SAFE_STATE_TIMEOUT_S):
                    await hook()
            except Exception:  # noqa: BLE001 - one failing hook must not skip the others
                _log.exception("safe-state hook %s failed", getattr(hook, "__qualname__", hook))

    async def _close_journal(self) -> None:
        if self.journal is not None:
            try:
                await asyncio.shield(self.journal.close())
            except Exception:  # noqa: BLE001 - shutdown goes on; the cause is logged
                _log.exception("closing the journal failed")

    async def _control_loop(self) -> None:
        """The event loop's heartbeat, read by the watchdog: it ticks only where one is kept.

        Four ticks per watchdog interval (at most every CONTROL_PERIOD_S): an idle station
        wakes for nothing else.
        """
        interval = self.notifier.watchdog_interval
        loop = asyncio.get_running_loop()
        while True:
            self._last_tick = loop.time()
            if interval is None:
                await self._stop.wait()
                return
            await asyncio.sleep(min(CONTROL_PERIOD_S, interval / 4))

    async def _watchdog_loop(self) -> None:
        """Ping the systemd watchdog only while the control loop is alive."""
        interval = self.notifier.watchdog_interval
        if interval is None:
            await self._stop.wait()
            return
        loop = asyncio.get_running_loop()
        while True:
            # The heartbeat ticks four times per interval: one interval without a tick is a stall.
            stalled = self._stalled(loop.time(), interval)
            if stalled is None:
                self.notifier.watchdog()
            else:
                _log.error("%s stalled: withholding the watchdog ping", stalled)
            await asyncio.sleep(interval)

    def _stalled(self, now: float, limit: float) -> str | None:
        """The first part of the control that made no progress within `limit`, or None."""
        if now - self._last_tick > limit:
            return "control loop"
        if self.station is not None and now - self.station.liveness() > max(limit, 2.0):
            return "slot control"
        return None

    async def _status_loop(self) -> None:
        last = ""
        while True:
            line = self._status_line()
            if line != last:
                self.notifier.status(line)
                last = line
            await asyncio.sleep(STATUS_PERIOD_S)

    def _status_line(self) -> str:
        line = f"station {self.config.station_id}: mqtt {self.link.state.value}"
        if self.station is not None:
            line += f", {self.station.status()}"
        return line


async def _cancel_all(tasks: list[asyncio.Task[None]], deadline: float) -> None:
    """Cancel tasks and wait for them, cancelling again any that swallowed it.

    On Python 3.11 `asyncio.wait_for` (used inside libraries) can swallow a cancellation that
    arrives as its inner future completes; such a task runs on. Cancelling again ends it.
    """
    pending = {t for t in tasks if not t.done()}
    while pending and clock.monotonic() < deadline:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=CANCEL_RETRY_S)
    for task in pending:
        _log.error("task %s did not stop", task.get_name())


def _leaves(group: BaseExceptionGroup[Exception]) -> list[Exception]:
    out: list[Exception] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            out += _leaves(exc)
        else:
            out.append(exc)
    return out


def _describe(exc: BaseException) -> str:
    notes = "; ".join(getattr(exc, "__notes__", ()))
    return f"{type(exc).__name__}: {exc}" + (f" ({notes})" if notes else "")
