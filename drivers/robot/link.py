"""The robot link: one command in flight (STOP pre-empts it), retries, completion, liveness.

A command is sent and retransmitted with the same sequence number every `ack_timeout_s` until
the robot acknowledges it (or refuses it), at most `retries` times; then its completion (DONE)
is awaited within the command kind's timeout. A lost DONE is recovered from the robot's next
REPORT (which names the last sequence it finished) or by retransmitting the command, which the
robot answers again without executing it again. The robot's HEARTBEAT (or any frame) proves the
link alive; silence for `heartbeat_timeout_s`, or the port vanishing, drops the link, fails the
command in flight with `RobotLinkError` (its outcome is then unknown), and the link reconnects
with backoff and re-synchronises (SYNC) before it takes commands again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import serial_asyncio_fast

from drivers import clock
from drivers.backoff import Backoff
from drivers.errors import (
    DecodeError,
    RobotError,
    RobotFaultError,
    RobotLinkError,
    RobotRejectedError,
    RobotStoppedError,
    RobotTimeoutError,
)
from drivers.robot.protocol import (
    MAX_FRAME,
    MESSAGES,
    Empty,
    ErrorArgs,
    FaultCode,
    Frame,
    HeartbeatArgs,
    Message,
    MsgType,
    NakArgs,
    NakReason,
    Outcome,
    Payload,
    RobotState,
    RobotStatus,
    SyncArgs,
    Target,
)
from drivers.robot.reassembler import Reassembler

_log = logging.getLogger(__name__)

IDLE_RESYNC_FRAMES = 2  # a frame that stops arriving for 2 frame times is abandoned
IDLE_RESYNC_MIN_S = 0.05  # USB serial adapters hold bytes up to 16 ms: not a dead frame
DONE_POLL_ACKS = 2  # while awaiting DONE, re-ask every 2 ack timeouts
STOP_ATTEMPTS = 50
STOP_RETRY_S = 0.02  # a STOP is repeated fast: it must halt motion within 50 ms
STOP_COPIES = 2  # and sent twice at once, so one lost frame costs nothing
STOP_PORT_WAIT_S = 1.0  # while the port reopens, a STOP waits this long to go out


@dataclass(frozen=True)
class RobotParams:
    """What the link needs; built by the controller from its config."""

    device: str
    baudrate: int = 115200
    parity: str = "N"
    stopbits: int = 1
    bytesize: int = 8
    ack_timeout_s: float = 0.25
    retries: int = 3
    heartbeat_timeout_s: float = 3.0
    timeouts: Mapping[str, float] = field(default_factory=dict)
    reconnect_min_s: float = 0.2
    reconnect_max_s: float = 5.0

    def timeout_for(self, kind: MsgType) -> float:
        """Completion timeout of a command kind."""
        key = MESSAGES[kind].timeout
        return self.timeouts.get(key or "", 30.0)


class LinkState(enum.Enum):
    """Where the link is."""

    DISCONNECTED = "disconnected"
    SYNCING = "syncing"
    READY = "ready"
    CLOSED = "closed"


@dataclass
class LinkStats:
    """Counters, for diagnostics, tests and benchmarks."""

    commands: int = 0
    retransmits: int = 0
    undecodable: int = 0
    connects: int = 0
    link_losses: int = 0


@dataclass(eq=False)
class _Txn:
    """One command awaiting its acknowledgement and completion."""

    message: Message
    acked: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Future[Outcome | RobotStatus] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    @property
    def seq(self) -> int:
        return self.message.seq

    def finish(self, result: Outcome | RobotStatus | BaseException) -> None:
        self.acked.set()
        if self.done.done():
            return
        if isinstance(result, BaseException):
            self.done.set_exception(result)
        else:
            self.done.set_result(result)


class _Protocol(asyncio.Protocol):
    """Bytes to frames to messages, for one open port."""

    def __init__(self, link: RobotLink) -> None:
        self.link = link
        self.reassembler = Reassembler()
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self._idle: asyncio.TimerHandle | None = None
        self.detached = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle is not None:
            self._idle.cancel()
        if not self.lost.done():
            self.lost.set_result(exc)

    def data_received(self, data: bytes) -> None:
        if self.detached:
            return
        self._deliver(self.reassembler.feed(data))
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self.reassembler.pending:
            loop = asyncio.get_running_loop()
            self._idle = loop.call_later(self.link.idle_resync_s, self._resync)

    def _resync(self) -> None:
        self._idle = None
        self._deliver(self.reassembler.discard_partial())
        if self.reassembler.pending and not self.detached:
            self._idle = asyncio.get_running_loop().call_later(
                self.link.idle_resync_s, self._resync
            )

    def detach(self) -> None:
        """This connection is over: close without draining, deliver nothing more."""
        self.detached = True
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self.transport is not None:
            self.transport.abort()

    def _deliver(self, frames: Iterable[Frame]) -> None:
        if self.detached:
            return  # a frame from a connection already given up must not touch the new one
        for frame in frames:
            try:
                message = Message.from_frame(frame)
            except DecodeError as exc:
                self.link.stats.undecodable += 1
                _log.debug("robot: undecodable frame dropped: %s", exc)
                continue
            self.link.on_message(message)

    def send(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise RobotLinkError("robot port is not open")
        self.transport.write(data)


class RobotLink:
    """The controller's end of the robot's serial line."""

    def __init__(
        self,
        params: RobotParams,
        *,
        on_status: Callable[[RobotStatus], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.params = params
        self.state = LinkState.DISCONNECTED
        self.status: RobotStatus | None = None
        self.boot_id: int | None = None
        self.stats = LinkStats()
        self.ready = asyncio.Event()
        self.last_rx = 0.0
        self._on_status = on_status
        self._rng = rng or random.Random()  # noqa: S311 - jitter and nonces, not cryptography
        self._proto: _Protocol | None = None
        self._lock = asyncio.Lock()
        self._pending: dict[int, _Txn] = {}
        self._seq = self._rng.randrange(1, 256)
        self._lost = asyncio.Event()
        self._backoff = Backoff(
            params.reconnect_min_s, params.reconnect_max_s, jitter=0.25, rng=self._rng
        )
        self.maybe_moving = False
        frame_s = MAX_FRAME * 10 / params.baudrate
        self.idle_resync_s = max(IDLE_RESYNC_MIN_S, IDLE_RESYNC_FRAMES * frame_s)

    @property
    def busy(self) -> bool:
        """The robot may be moving: a command was sent and nothing since says it ended.

        Stays true after a command the link gave up on (timeout, link loss, cancellation):
        only the robot itself (DONE, ERROR, a REPORT that is not busy) can say it stopped.
        """
        return self.maybe_moving or self._pending_motion()

    @property
    def closed(self) -> bool:
        """`close()` was called: the link stays down."""
        return self.state is LinkState.CLOSED

    @property
    def reassembly(self) -> Reassembler | None:
        """The current connection's reassembler (its counters), if connected."""
        return None if self._proto is None else self._proto.reassembler

    # --- the connection -----------------------------------------------------------------------

    async def run(self) -> None:
        """Keep the link up until closed: connect, synchronise, watch liveness, reconnect."""
        self._backoff.reset()
        try:
            while not self.closed:
                try:
                    await self._connection()
                except (OSError, RobotError) as exc:
                    # Down now, not after the pause: a command in flight learns at once that
                    # its outcome is unknown, and nobody sends into a dead line meanwhile.
                    self._drop(str(exc))
                    delay = self._backoff.next()
                    _log.warning(
                        "robot %s: %s; reconnecting in %.1f s", self.params.device, exc, delay
                    )
                    await asyncio.sleep(delay)
        finally:
            self._drop("link down")

    async def _connection(self) -> None:
        p = self.params
        loop = asyncio.get_running_loop()
        transport, proto = await serial_asyncio_fast.create_serial_connection(
            loop,
            lambda: _Protocol(self),
            p.device,
            baudrate=p.baudrate,
            parity=p.parity,
            stopbits=p.stopbits,
            bytesize=p.bytesize,
            exclusive=True,  # one owner: a second program gets "port busy", not half the bytes
        )
        assert isinstance(proto, _Protocol)
        proto.transport = transport  # connection_made() is only scheduled yet
        if self.closed:
            transport.abort()
            raise RobotLinkError("closed")
        self._proto = proto
        self.stats.connects += 1
        self.state = LinkState.SYNCING
        self.last_rx = clock.monotonic()
        self._lost.clear()
        session = self._rng.randrange(0, 0x10000)
        status = await self._full(Message(self._next_seq(), MsgType.SYNC, SyncArgs(session)))
        if self.closed:
            raise RobotLinkError("closed")
        self.state = LinkState.READY
        self.ready.set()
        self._backoff.reset()  # a link that came up starts over
        _log.info(
            "robot %s: ready (boot %04x, %s at %s)",
            p.device,
            status.boot_id,
            RobotState(status.state).name.lower(),
            _where(status),
        )
        await self._watch(proto)

    async def _watch(self, proto: _Protocol) -> None:
        """Return (raising) when the port closes, the robot restarts or goes silent."""
        timeout = self.params.heartbeat_timeout_s
        restarted: asyncio.Future[Any] = asyncio.ensure_future(self._lost.wait())
        lost: asyncio.Future[Any] = proto.lost
        # Silence is judged over time this process ran: after a stall of our own (frozen,
        # swapped out) the robot's frames are still unread in the port's buffer, so the
        # clock restarts when we resume instead of blaming the robot for our absence.
        since = self.last_rx
        try:
            while True:
                now = clock.monotonic()
                silent = now - max(self.last_rx, since)
                if silent > timeout:
                    raise RobotLinkError(f"robot silent for {silent:.1f} s")
                wait_s = timeout - silent + 0.01
                done, _ = await asyncio.wait(
                    {lost, restarted}, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED
                )
                late = clock.monotonic() - (now + wait_s)
                if late > timeout / 2:
                    _log.warning("robot link watch ran %.1f s late: silence judged from now", late)
                    since = clock.monotonic()
                if lost in done:
                    raise RobotLinkError(f"port closed: {lost.result() or 'end of file'}")
                if restarted in done:
                    raise RobotLinkError("robot restarted or lost track of us: re-synchronising")
        finally:
            restarted.cancel()

    def _drop(self, why: str) -> None:
        if self.state is LinkState.READY:
            self.stats.link_losses += 1
        self.ready.clear()
        if self.state is not LinkState.CLOSED:
            self.state = LinkState.DISCONNECTED
        for txn in list(self._pending.values()):
            txn.finish(
                RobotLinkError(
                    f"robot link lost ({why}) during {txn.message.type.name}:"
                    " its outcome is unknown"
                )
            )
        self._pending.clear()
        if self._proto is not None:
            self._proto.detach()
        self._proto = None

    async def close(self) -> None:
        """Close the port; idempotent."""
        self.state = LinkState.CLOSED
        self._drop("closed")

    # --- commands -------------------------------------------------------------------------------

    async def command(self, kind: MsgType, body: Payload | None = None) -> RobotStatus:
        """Run one command to completion; return the robot's status after it."""
        if kind is MsgType.STOP:
            return await self.stop()
        if not kind.is_command or kind is MsgType.SYNC:
            raise ValueError(f"{kind.name} is not a command")
        async with self._lock:
            if self.state is not LinkState.READY:
                raise RobotLinkError(f"robot link {self.state.value}")
            message = Message(self._next_seq(), kind, body or Empty())
            if kind is MsgType.STATUS:
                return await self._full(message)
            outcome = await self._transact(message)
            status = self._merge(outcome, message.seq)
            if kind in {MsgType.REMOVE, MsgType.FETCH}:
                # The pack the robot now holds is named in its full status: ask for it. The
                # command itself succeeded; if the question fails, the serial stays unknown.
                with contextlib.suppress(RobotError):
                    status = await self._full(Message(self._next_seq(), MsgType.STATUS, Empty()))
            return status

    async def _full(self, message: Message) -> RobotStatus:
        """STATUS or SYNC: answered with the robot's full REPORT."""
        result = await self._transact(message)
        if not isinstance(result, RobotStatus):
            raise RobotError(f"robot answered {message.type.name} without its status")
        self._set_status(result)
        return result

    def _merge(self, result: Outcome | RobotStatus, seq: int) -> RobotStatus:
        """The robot's full status after a command answered with a compact DONE."""
        if isinstance(result, RobotStatus):
            self._set_status(result)
            return result
        base = self.status or RobotStatus(0, 0, 0, 0, b"", 0, 0, 0, self.boot_id or 0, 0)
        status = dataclasses.replace(
            base,
            state=result.state,
            position=result.position,
            slot=result.slot,
            holding=result.holding,
            pack=base.pack if result.holding else b"",
            fault=result.fault,
            locked=result.locked,
            torque_dnm=result.torque_dnm,
            last_seq=seq,
        )
        self._set_status(status)
        return status

    async def stop(self) -> RobotStatus:
        """STOP now, pre-empting any command in flight; must not be cancelled half-way."""
        return await asyncio.shield(self._stop())

    async def _stop(self) -> RobotStatus:
        deadline = clock.monotonic() + STOP_PORT_WAIT_S
        while self._proto is None:  # reconnecting: STOP goes out as soon as the port is back
            if clock.monotonic() >= deadline or self.closed:
                raise RobotLinkError("robot link down: cannot send STOP")
            await asyncio.sleep(0.01)
        message = Message(self._next_seq(), MsgType.STOP, Empty())
        result = await self._transact(
            message, attempts=STOP_ATTEMPTS, ack_timeout=STOP_RETRY_S, copies=STOP_COPIES
        )
        # Whatever was running has been stopped; its own ERROR may be lost (or pushed out of
        # the robot's memory by further STOPs), so it is settled here.
        for txn in list(self._pending.values()):
            if txn.message.type not in {MsgType.STOP, MsgType.STATUS, MsgType.SYNC}:
                txn.finish(_fault(txn.message.type, FaultCode.STOPPED))
        return self._merge(result, message.seq)

    async def _transact(
        self,
        message: Message,
        attempts: int | None = None,
        ack_timeout: float | None = None,
        copies: int = 1,
    ) -> Outcome | RobotStatus:
        txn = _Txn(message)
        self._pending[txn.seq] = txn
        self.stats.commands += 1
        if message.type not in {MsgType.STATUS, MsgType.SYNC, MsgType.STOP}:
            self.maybe_moving = True  # from the first byte out, the robot may act on it
        data = message.to_bytes()
        try:
            await self._until_acked(
                txn,
                data,
                attempts or self.params.retries + 1,
                ack_timeout or self.params.ack_timeout_s,
                copies,
            )
            return await self._until_done(txn, data)
        except RobotTimeoutError:
            # The robot may have run it (its answers lost): outcome unknown. Re-synchronise
            # before anything else, so stale sequence numbers can never be answered again.
            self._lost.set()
            raise
        finally:
            self._pending.pop(txn.seq, None)

    async def _until_acked(
        self, txn: _Txn, data: bytes, attempts: int, ack_timeout: float, copies: int
    ) -> None:
        for attempt in range(attempts):
            for copy in range(copies):
                self._send(data, retransmit=attempt > 0 or copy > 0)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ack_timeout):
                    await txn.acked.wait()
                return
            if txn.done.done():
                return
        raise RobotTimeoutError(
            f"robot did not acknowledge {txn.message.type.name} (seq {txn.seq}) after"
            f" {attempts} attempt(s): its outcome is unknown"
        )

    async def _until_done(self, txn: _Txn, data: bytes) -> Outcome | RobotStatus:
        deadline = clock.monotonic() + self.params.timeout_for(txn.message.type)
        # Ask again at a steady pace: on a noisy line a DONE may need several tries, and a
        # retransmission costs the robot nothing but an answer.
        poll = DONE_POLL_ACKS * self.params.ack_timeout_s
        while True:
            remaining = deadline - clock.monotonic()
            if remaining <= 0:
                raise RobotTimeoutError(
                    f"robot did not complete {txn.message.type.name} (seq {txn.seq}) within"
                    f" {self.params.timeout_for(txn.message.type):g} s: its outcome is unknown"
                )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(poll, remaining)):
                    return await asyncio.shield(txn.done)
            if txn.done.done():  # settled as the poll ran out (the link dropped, say)
                return txn.done.result()
            if self._proto is None:
                # The command went out before the link dropped: never "link down" (not sent).
                raise RobotLinkError(
                    f"robot link lost during {txn.message.type.name}: its outcome is unknown"
                )
            # No DONE yet: ask again. The robot re-acknowledges a command it is running and
            # repeats the DONE of one it finished, without running it twice.
            self._send(data, retransmit=True)

    def _send(self, data: bytes, *, retransmit: bool) -> None:
        if self._proto is None:
            raise RobotLinkError("robot link down")
        if retransmit:
            self.stats.retransmits += 1
        self._proto.send(data)

    def _next_seq(self) -> int:
        for _ in range(255):
            self._seq = self._seq % 255 + 1  # 1..255; 0 is for unsolicited frames
            if self._seq not in self._pending:
                return self._seq
        raise RobotError("no free sequence number")

    # --- what the robot says ------------------------------------------------------------------

    def on_message(self, msg: Message) -> None:
        """Dispatch one message from the robot (called by the protocol)."""
        self.last_rx = clock.monotonic()
        txn = self._pending.get(msg.seq) if msg.seq else None
        body = msg.body
        if isinstance(body, RobotStatus):  # REPORT
            self._on_report(body, txn)
        elif isinstance(body, HeartbeatArgs):
            self._restarted(body.boot_id)
        elif txn is None:
            return  # an answer to a command no longer waited for
        elif msg.type is MsgType.ACK:
            txn.acked.set()
        elif isinstance(body, Outcome):  # DONE
            if txn.message.type is not MsgType.STOP or not self._pending_motion():
                self.maybe_moving = body.state == RobotState.BUSY
            txn.finish(body)
        elif isinstance(body, NakArgs):
            self._on_nak(body, txn)
        elif isinstance(body, ErrorArgs):
            self.maybe_moving = False  # a fault or a stop ended it
            txn.finish(_fault(txn.message.type, body.code))

    def _on_report(self, body: RobotStatus, txn: _Txn | None) -> None:
        if self._restarted(body.boot_id):
            return  # nothing from the robot's new life completes the old one's commands
        self._set_status(body)
        if body.state != RobotState.BUSY and not self._pending_motion():
            self.maybe_moving = False
        if txn is not None and txn.message.type in {MsgType.STATUS, MsgType.SYNC}:
            txn.finish(body)  # the answer to STATUS / SYNC
        else:
            self._complete_from_report(body)

    def _on_nak(self, body: NakArgs, txn: _Txn) -> None:
        reason = NakReason(body.reason)
        if reason is NakReason.NOT_SYNCED and self.state is LinkState.READY:
            # The robot restarted since our SYNC: a command sent before may have run.
            txn.finish(
                RobotLinkError(
                    f"robot restarted during {txn.message.type.name}: its outcome is unknown"
                )
            )
            self._lost.set()
            return
        txn.finish(
            RobotRejectedError(
                f"robot refused {txn.message.type.name}: {reason.name.lower()}", body.reason
            )
        )

    def _complete_from_report(self, status: RobotStatus) -> None:
        """A REPORT naming a finished command stands in for its lost DONE."""
        txn = self._pending.get(status.last_seq)
        if txn is None or status.state == RobotState.BUSY or not txn.acked.is_set():
            return
        if status.state == RobotState.IDLE:
            txn.finish(status)
        elif status.state in {RobotState.FAULT, RobotState.STOPPED} and txn.message.type not in {
            MsgType.STOP,
            MsgType.STATUS,
            MsgType.SYNC,
        }:
            txn.finish(_fault(txn.message.type, status.fault or FaultCode.INTERNAL))

    def _restarted(self, boot_id: int) -> bool:
        """True (and a re-synchronisation asked for) if the robot has restarted since SYNC."""
        if self.state is not LinkState.READY or self.boot_id is None or boot_id == self.boot_id:
            return False
        _log.warning("robot restarted (boot %04x -> %04x): re-synchronising", self.boot_id, boot_id)
        self.boot_id = boot_id
        self.maybe_moving = True  # unknown until it reports
        for txn in list(self._pending.values()):
            txn.finish(
                RobotLinkError(
                    f"robot restarted during {txn.message.type.name}: its outcome is unknown"
                )
            )
        self._lost.set()
        return True

    def _pending_motion(self) -> bool:
        return any(
            t.message.type not in {MsgType.STATUS, MsgType.SYNC, MsgType.STOP}
            for t in self._pending.values()
        )

    def _set_status(self, status: RobotStatus) -> None:
        self.status = status
        self.boot_id = status.boot_id
        if self._on_status is not None:
            self._on_status(status)


def _fault(kind: MsgType, code: int) -> RobotFaultError:
    try:
        name = FaultCode(code).name.lower()
    except ValueError:
        name = f"fault {code}"
    cls = RobotStoppedError if code == FaultCode.STOPPED else RobotFaultError
    return cls(f"robot {kind.name} failed: {name}", code)


def _where(status: RobotStatus) -> str:
    target = Target(status.position)
    return f"slot {status.slot}" if target is Target.SLOT else target.name.lower()
