"""The station's OCPP 2.1 connection to the operator's CSMS (docs/ocpp.md).

Two tasks:

- `ocpp` keeps the websocket: connect (security profile 1: basic auth over ws://; 2: TLS
  with the CSMS's CA, and basic auth), BootNotification until Accepted, every EVSE's status,
  then the queued messages in order, status changes, and a Heartbeat when due; reconnect with
  capped backoff. A CSMS that refuses us (a wrong password) or goes away never stops the
  daemon: the station runs on, on MQTT, and tries again.
- `ocpp-journal` turns what happened into queued messages, online or not: the journal's swap
  events (`controller/ocpp/swaps.py`) and the slots' charging (`transactions.py`).

A CSMS's request runs in a task of its own and is answered there (`handlers.py`): one that
waits on the swap sequencer never holds the connection, and none holds the sequencer.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import sqlite3
import ssl
import uuid
from collections.abc import Callable, Coroutine
from typing import Any, Literal

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from controller import __version__
from controller.charging.control import SlotControl
from controller.charging.gridcmds import GridCommands
from controller.config.model import StationConfig
from controller.errors import OcppCallRefusedError as CallRefusedError
from controller.errors import OcppFrameError, StorageError
from controller.ocpp import wire
from controller.ocpp.device import Settings, evse_ids, evse_status, variables
from controller.ocpp.handlers import CsmsCalls
from controller.ocpp.logs import RecentLog
from controller.ocpp.queue import OcppQueue, Queued
from controller.ocpp.swaps import SwapTranslator
from controller.ocpp.transactions import Transactions
from controller.store.events import EventLog, JournalBatch
from controller.store.journal import Journal, transaction
from controller.swap.sequencer import Sequencer
from drivers import clock
from drivers.backoff import Backoff

_log = logging.getLogger(__name__)
wire_log = logging.getLogger("controller.ocpp.wire")  # every frame, at DEBUG

State = Literal["offline", "connecting", "pending", "accepted", "refused"]
RETRY_PAUSE_S = 2.0
# What the CSMS may ask before it accepted the boot (Pending: it configures the station);
# anything else, a swap above all, waits for the boot.
BEFORE_BOOT = frozenset({"GetVariables", "SetVariables", "Reset", "GetLog"})
HELD_S = 60.0  # a session accepted this long resets the reconnection backoff
MAX_INTERVAL_S = 86_400  # a Heartbeat or boot interval the CSMS names is bounded by a day
CSMS_KEY = "ocpp_csms"  # meta row: the CSMS (URL and identity) the OCPP state belongs to
RESET_KEY = "ocpp_boot_reason"  # meta row: why the next boot happens (after a Reset)
MAX_CALLS_IN_FLIGHT = 4  # requests from the CSMS answered at once (OCPP: it sends one at a time)


class OcppClient:
    """One Charging Station's connection to its CSMS."""

    def __init__(
        self,
        config: StationConfig,
        journal: Journal,
        events: EventLog,
        control: SlotControl,
        *,
        sequencer: Sequencer | None,
        grid: GridCommands,
        restart: Callable[[str], None],
    ) -> None:
        assert config.ocpp is not None
        self.config = config
        self.cfg = config.ocpp
        self.identity = self.cfg.identity or config.station_id
        self.control = control
        self.events = events
        self.journal = journal
        self.boot_reason = "PowerUp"
        self.queue = OcppQueue(journal)
        self.evse_of = evse_ids(control.book.slots)
        self.slot_of = {evse: slot for slot, evse in self.evse_of.items()}
        self.swaps = SwapTranslator(journal, self.queue, self.evse_of)
        self.transactions = Transactions(
            control, journal, self.cfg.meter_interval_s, evse_of=self.evse_of
        )
        self.settings = Settings(self.cfg.heartbeat_s, self.cfg.meter_interval_s)
        self.variables = variables(config, self.settings)
        self.state: State = "offline"
        self.accepted = asyncio.Event()  # connected and the boot accepted
        self.booted = False  # the CSMS accepted this process's BootNotification
        self.sent = self.answered = self.refused = 0
        self.calls = CsmsCalls(self, sequencer=sequencer, grid=grid, restart=restart)
        # The recent log for GetLog, the known secrets redacted.
        secrets = [s.get_secret_value() for s in (config.mqtt.password, self.cfg.password) if s]
        self.recent_log = RecentLog(secrets)
        logging.getLogger().addHandler(self.recent_log)
        self._ws: ClientConnection | None = None
        self._pending: dict[str, asyncio.Future[wire.Frame]] = {}
        self._call_lock = asyncio.Lock()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._journal_wake = asyncio.Event()
        self._events_new = asyncio.Event()  # the journal has events the translator has not read
        self._work = asyncio.Event()
        self._queued = True  # the queue may hold something (read it before trusting it empty)
        self._tx_slots = control.follow(self._journal_wake)
        self._status_slots = control.follow(self._work)
        events.follow(self._journal_wake)
        events.follow(self._events_new)
        self._statuses: dict[int, str] = {}
        self._accepted_at: float | None = None  # monotonic: this session's boot accepted
        self._next_beat = 0.0  # monotonic: the next Heartbeat

    async def load(self) -> None:
        """Restore the open transactions and the translator's place in the journal."""
        await self._forget_another_csms()
        await self.swaps.start()
        await self.transactions.load()
        await self.calls.profiles.load()

        def take_reason(conn: sqlite3.Connection) -> str:
            with transaction(conn):
                row = conn.execute("SELECT value FROM meta WHERE key = ?", (RESET_KEY,)).fetchone()
                conn.execute("DELETE FROM meta WHERE key = ?", (RESET_KEY,))
            return "PowerUp" if row is None else str(row[0])

        self.boot_reason = await self.journal.call(take_reason)

    async def _forget_another_csms(self) -> None:
        """A different CSMS (URL or identity) starts afresh: another's queue is not its."""
        here = f"{self.cfg.csms_url} {self.identity}"

        def check(conn: sqlite3.Connection) -> str | None:
            with transaction(conn):
                row = conn.execute("SELECT value FROM meta WHERE key = ?", (CSMS_KEY,)).fetchone()
                before = None if row is None else str(row[0])
                if before is not None and before != here:
                    for table in ("ocpp_queue", "ocpp_cursor", "ocpp_swaps", "ocpp_transactions"):
                        conn.execute(f"DELETE FROM {table}")  # noqa: S608 - our table names
                    conn.execute("DELETE FROM meta WHERE key = 'ocpp_profiles'")
                conn.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (CSMS_KEY, here)
                )
            return before

        before = await self.journal.call(check)
        if before is not None and before != here:
            _log.warning(
                "OCPP: the CSMS changed (%s, was %s): its queue, open transactions and"
                " profiles start afresh", here, before,
            )  # fmt: skip

    async def note_reset(self) -> None:
        """The next boot follows the CSMS's Reset: its BootNotification says `RemoteReset`."""

        def write(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES (?, 'RemoteReset')",
                    (RESET_KEY,),
                )

        await self.journal.call(write)

    # --- the journal side: what happened, queued ----------------------------------------------

    async def run_journal(self) -> None:
        """Queue what the CSMS must hear, whether it is connected or not."""
        self._journal_wake.set()
        self._events_new.set()
        while True:
            await self._journal_wake.wait()
            self._journal_wake.clear()
            slots = set(self._tx_slots)
            self._tx_slots.clear()
            try:
                await self._queue_what_happened(slots)
            except StorageError:
                raise  # the journal itself: the daemon cannot go on (and restarts)
            except Exception:  # noqa: BLE001 - a second door's bug must not stop the station
                _log.exception("OCPP: queueing failed; trying again")
                # From what the journal holds: nothing half-done in memory survives.
                self._tx_slots.update(slots)
                await self.transactions.load()
                self._journal_wake.set()
                self._events_new.set()
                await asyncio.sleep(RETRY_PAUSE_S)

    async def _queue_what_happened(self, slots: set[int]) -> None:
        self.transactions.meter_interval_s = self.settings.meter_interval_s
        self.transactions.offline = not self.accepted.is_set()
        batch = JournalBatch()
        self.transactions.step(slots, batch)
        queued = bool(batch)
        if batch:
            await self.events.commit(batch)
        if self._events_new.is_set():  # only when events came: a step alone adds none
            self._events_new.clear()
            while await self.swaps.step():
                queued = True
        if queued:
            self._queued = True
            self._work.set()

    # --- the connection -------------------------------------------------------------------------

    async def run(self) -> None:
        """Keep the connection to the CSMS, for ever."""
        backoff = Backoff(self.cfg.reconnect_min_s, self.cfg.reconnect_max_s)
        while True:
            self.state = "connecting"
            try:
                await self._session(backoff)
            except InvalidStatus as exc:
                status = exc.response.status_code
                self.state = "refused"
                _log.error(
                    "OCPP: the CSMS refused the connection (HTTP %d%s); the station runs on",
                    status,
                    ": check ocpp.password and the identity" if status in {401, 403} else "",
                )
            except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed) as exc:
                _log.warning("OCPP: connection to %s lost or refused: %s", self.cfg.csms_url, exc)
            except Exception:  # noqa: BLE001 - a second door's bug must not stop the station
                _log.exception("OCPP: the session failed; reconnecting")
            self._ws = None
            self._accepted_at = None
            self.accepted.clear()
            if self.state != "refused":
                self.state = "offline"
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionClosed(None, None))
            await asyncio.sleep(backoff.next())

    def _url(self) -> str:
        return f"{self.cfg.csms_url.rstrip('/')}/{self.identity}"

    def _ssl(self) -> ssl.SSLContext | None:
        if self.cfg.security_profile != 2:
            return None
        context = ssl.create_default_context(cafile=self.cfg.ca_file)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    def _auth(self) -> dict[str, str]:
        password = self.cfg.password.get_secret_value() if self.cfg.password else ""
        token = base64.b64encode(f"{self.identity}:{password}".encode()).decode("ascii")
        return {"Authorization": f"Basic {token}"}

    async def _session(self, backoff: Backoff) -> None:
        ws = await connect(
            self._url(),
            subprotocols=[Subprotocol(wire.SUBPROTOCOL)],
            additional_headers=self._auth(),
            ssl=self._ssl(),
            open_timeout=self.cfg.connect_timeout_s,
            # Bigger frames than we read are refused by us, with an answer; this only bounds
            # what the socket buffers.
            max_size=2 * self.cfg.max_message_bytes,
            user_agent_header=f"swapstation/{__version__}",
            proxy=None,
        )
        async with ws:
            if ws.subprotocol != wire.SUBPROTOCOL:
                _log.error("OCPP: the CSMS did not agree to %s", wire.SUBPROTOCOL)
                return
            self._ws = ws
            self._in_flight = set()  # the last session's requests no longer count against it
            _log.info("OCPP: connected to %s as %s", self.cfg.csms_url, self.identity)
            tasks = [
                asyncio.create_task(self._read(ws), name="ocpp-read"),
                asyncio.create_task(self._converse(), name="ocpp-talk"),
            ]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            if self._accepted_at is not None and clock.monotonic() - self._accepted_at >= HELD_S:
                backoff.reset()  # a session that held: the next attempt comes soon
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]

    async def _read(self, ws: ClientConnection) -> None:
        async for raw in ws:
            wire_log.debug("OCPP < %s", raw if len(raw) < 2048 else f"{raw[:2048]!r}...")
            frame = wire.read(raw, self.cfg.max_message_bytes)
            if isinstance(frame, wire.Unreadable):
                self.refused += 1
                _log.warning("OCPP: unreadable message from the CSMS: %s", frame.description)
                if frame.answer:
                    await self._send(wire.error(frame.unique_id, frame.code, frame.description))
                continue
            if frame.kind == wire.CALL:
                if len(self._in_flight) >= MAX_CALLS_IN_FLIGHT:
                    await self._send(
                        wire.error(frame.unique_id, "GenericError", "too many requests at once")
                    )
                    continue
                task = asyncio.create_task(self._answer(frame, ws))
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
                continue
            future = self._pending.get(frame.unique_id)
            if future is None or future.done():
                _log.warning("OCPP: an answer to no request of ours (%s)", frame.unique_id)
            else:
                future.set_result(frame)

    async def _answer(self, frame: wire.Frame, ws: ClientConnection) -> None:
        try:
            self._check_booted(frame.action)
            payload = await self.calls.answer(frame.action, frame.payload)
            text = wire.result(frame.unique_id, payload)
        except OcppFrameError as exc:
            self.refused += 1
            text = wire.error(frame.unique_id, exc.code, exc.description)
        except Exception:  # noqa: BLE001 - answered as OCPP's InternalError, logged here
            _log.exception("OCPP: %s failed", frame.action)
            text = wire.error(frame.unique_id, "InternalError", f"{frame.action} failed")
        if ws is not self._ws:
            return  # its session is gone: the CSMS that asked will not read the answer
        with contextlib.suppress(ConnectionClosed):
            await self._send(text)

    def _check_booted(self, action: str) -> None:
        if self.state != "accepted" and action not in BEFORE_BOOT:
            raise OcppFrameError("SecurityError", f"{action[:40]}: the boot is not accepted yet")

    async def _send(self, text: str) -> None:
        ws = self._ws
        if ws is None:
            raise ConnectionClosed(None, None)
        wire_log.debug("OCPP > %s", text)
        await ws.send(text)

    async def call(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Send a request and wait for its answer (one at a time, as OCPP wants)."""
        # Ours must be right (a bug otherwise). The check is jsonschema's: up to half a
        # millisecond for a metered TransactionEvent (bench/ocpp_link.py), on a worker thread.
        await asyncio.to_thread(wire.check_request, action, payload)
        async with self._call_lock:
            unique_id = str(uuid.uuid4())
            future: asyncio.Future[wire.Frame] = asyncio.get_running_loop().create_future()
            self._pending[unique_id] = future
            try:
                await self._send(wire.call(unique_id, action, payload))
                async with asyncio.timeout(self.cfg.call_timeout_s):
                    frame = await future
            finally:
                self._pending.pop(unique_id, None)
        self.sent += 1
        if frame.kind == wire.CALLERROR:
            raise CallRefusedError(frame.error_code, frame.error_description)
        try:
            wire.check_response(action, frame.payload)
        except OcppFrameError as exc:
            # Still an answer: the CSMS took the request. Said, and not sent again.
            _log.warning("OCPP: the CSMS's answer to %s breaks OCPP: %s", action, exc.description)
        return dict(frame.payload)

    async def _converse(self) -> None:
        """Boot, then statuses, queued messages and heartbeats while the connection lasts."""
        if not self.booted:
            await self._boot()
        self.state = "accepted"
        self.accepted.set()
        self._accepted_at = clock.monotonic()
        self._statuses.clear()  # every EVSE again after a (re)connection
        self._queued = True
        self._status_slots.update(self.control.book.slots)
        self._work.set()
        self._next_beat = clock.monotonic() + self.settings.heartbeat_s
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, self._next_beat - clock.monotonic())):
                    await self._work.wait()
            self._work.clear()
            await self._report_statuses()
            await self._drain()
            await self._beat_if_due()

    async def _beat_if_due(self) -> None:
        """A Heartbeat when one is due (and the interval anew when the CSMS changed it)."""
        if "heartbeat" in self.settings.changed:
            self.settings.changed.clear()
            self._next_beat = min(self._next_beat, clock.monotonic() + self.settings.heartbeat_s)
        if clock.monotonic() < self._next_beat:
            return
        try:
            await self.call("Heartbeat", {})
        except CallRefusedError as exc:
            _log.warning("OCPP: the CSMS refused a Heartbeat: %s", exc)
        self._next_beat = clock.monotonic() + self.settings.heartbeat_s

    async def _boot(self) -> None:
        while True:
            self.state = "pending"
            answer = await self.call(
                "BootNotification",
                {
                    "reason": self.boot_reason,
                    "chargingStation": {
                        "model": self.cfg.model,
                        "vendorName": self.cfg.vendor,
                        "firmwareVersion": __version__[:50],
                        "serialNumber": self.config.station_id[:25],
                    },
                },
            )
            interval = max(0, min(int(answer.get("interval", 0)), MAX_INTERVAL_S))
            if answer.get("status") == "Accepted":
                if interval > 0:
                    self.settings.heartbeat_s = interval
                self.booted = True
                _log.info("OCPP: boot accepted; heartbeat every %d s", self.settings.heartbeat_s)
                return
            _log.warning("OCPP: boot %s; trying again in %d s", answer.get("status"), interval)
            await asyncio.sleep(interval if interval > 0 else RETRY_PAUSE_S * 5)

    async def _report_statuses(self) -> None:
        slots = sorted(self._status_slots)
        self._status_slots.clear()
        now = clock.monotonic()
        for slot in slots:
            status = evse_status(self.control, slot, now)
            if self._statuses.get(slot) == status:
                continue
            try:
                await self.call(
                    "StatusNotification",
                    {"timestamp": clock.utcnow().isoformat().replace("+00:00", "Z"),
                     "connectorStatus": status, "evseId": self.evse_of[slot], "connectorId": 1},
                )  # fmt: skip
            except CallRefusedError as exc:
                # Not worth the connection: said, and sent again with the next change.
                _log.warning("OCPP: the CSMS refused slot %d's status: %s", slot, exc)
                continue
            self._statuses[slot] = status

    async def _drain(self) -> None:
        """Send the queued messages in order; each leaves the queue once the CSMS answered.

        A refusal (CALLERROR) is tried again, `message_attempt_interval_s` x the attempts
        apart, up to `message_attempts` in all; then the message is dropped, loudly. A message
        not answered in time counts as an attempt too, and ends the connection. Statuses that
        changed meanwhile go out between two messages.
        """
        while self._queued:
            self._queued = False  # set again by anything queued meanwhile
            head = await self.queue.head()
            if not head:
                return
            self._queued = True
            for message in head:
                await self._deliver(message)
                if self._status_slots:
                    await self._report_statuses()
                await self._beat_if_due()

    async def _deliver(self, message: Queued) -> None:
        """Send one queued message until the CSMS settles it, or its attempts are used up.

        Each sending counts as an attempt before it goes (journalled): a message that makes the
        CSMS drop the connection, or that it never answers, is dropped once it used them. A
        refusal of the action itself (`NotImplemented`, `NotSupported`) is not tried again.
        """
        attempts = message.attempts
        while True:
            if attempts >= self.cfg.message_attempts:
                _log.error("OCPP: %s #%d not settled in %d attempts: dropped",
                           message.action, message.seq, attempts)  # fmt: skip
                break
            attempts += 1
            await self.queue.attempted(message.seq)
            try:
                await self.call(message.action, message.payload)
            except CallRefusedError as exc:
                if exc.code in {"NotImplemented", "NotSupported"}:
                    _log.error("OCPP: the CSMS does not take %s (#%d dropped): %s",
                               message.action, message.seq, exc)  # fmt: skip
                    break
                if attempts < self.cfg.message_attempts:
                    pause = self.cfg.message_attempt_interval_s * attempts
                    _log.warning("OCPP: the CSMS refused %s #%d (%s); again in %g s",
                                 message.action, message.seq, exc, pause)  # fmt: skip
                    await self._pause(pause)
                    continue
                _log.error("OCPP: the CSMS refused %s #%d %d times, dropped: %s",
                           message.action, message.seq, attempts, exc)  # fmt: skip
            except OcppFrameError as exc:
                _log.error("OCPP: queued %s #%d is not valid OCPP, dropped: %s",
                           message.action, message.seq, exc.description)  # fmt: skip
            break
        self.answered += 1
        await self.queue.done(message.seq)

    async def _pause(self, seconds: float) -> None:
        """Wait, keeping the heartbeat and the statuses going meanwhile."""
        deadline = clock.monotonic() + seconds
        while (left := deadline - clock.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, self._next_beat - clock.monotonic())):
                    await self._work.wait()
            self._work.clear()
            await self._report_statuses()
            await self._beat_if_due()
        self._work.set()  # whatever woke us meanwhile is looked at again

    async def authorize(self, vehicle_id: str) -> str | None:
        """Ask the CSMS whether `vehicle_id` may swap (a swap started at the station).

        None: it may; otherwise why not. Offline, `ocpp.offline_swaps` decides.
        """
        if not self.accepted.is_set():
            if self.cfg.offline_swaps == "allow":
                _log.info("OCPP offline: swap for %s started without Authorize", vehicle_id)
                return None
            return "the CSMS is not reachable to authorise the swap (ocpp.offline_swaps)"
        try:
            # Bounded as a whole (waiting for the one request in flight included): the MQTT
            # commands wait behind it.
            async with asyncio.timeout(self.cfg.authorize_timeout_s):
                answer = await self.call(
                    "Authorize", {"idToken": {"idToken": vehicle_id, "type": "Local"}}
                )
        except (CallRefusedError, TimeoutError, ConnectionClosed) as exc:
            if self.cfg.offline_swaps == "allow":
                _log.warning("OCPP: Authorize for %s failed (%s); allowed", vehicle_id, exc)
                return None
            return f"the CSMS did not authorise the swap: {exc}"
        status = str(answer.get("idTokenInfo", {}).get("status", "Unknown"))
        return None if status == "Accepted" else f"the CSMS answered {status} for {vehicle_id}"

    def close(self) -> None:
        """Stop keeping the log and following profiles (the daemon is done)."""
        logging.getLogger().removeHandler(self.recent_log)
        self.calls.close()

    def wake(self) -> None:
        """Look at the settings, the statuses and the queue again now."""
        self._work.set()

    def jobs(self) -> dict[str, Coroutine[Any, Any, None]]:
        """The client's tasks, by name."""
        return {"ocpp": self.run(), "ocpp-journal": self.run_journal()}
