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
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import serial_asyncio_fast

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
IDLE_RESYNC_MIN_S = 0.005
DONE_POLL_ACKS = 2  # while awaiting DONE, re-ask every 2 ack timeouts
STOP_ATTEMPTS = 20


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

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle is not None:
            self._idle.cancel()
        if not self.lost.done():
            self.lost.set_result(exc)

    def data_received(self, data: bytes) -> None:
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

    def _deliver(self, frames: Iterable[Frame]) -> None:
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
        frame_s = MAX_FRAME * 10 / params.baudrate
        self.idle_resync_s = max(IDLE_RESYNC_MIN_S, IDLE_RESYNC_FRAMES * frame_s)

    @property
    def busy(self) -> bool:
        """A command (other than STATUS or SYNC) is in flight: the robot may be moving."""
        return any(
            t.message.type not in {MsgType.STATUS, MsgType.SYNC, MsgType.STOP}
            for t in self._pending.values()
        )

    @property
    def reassembly(self) -> Reassembler | None:
        """The current connection's reassembler (its counters), if connected."""
        return None if self._proto is None else self._proto.reassembler

    # --- the connection -----------------------------------------------------------------------

    async def run(self) -> None:
        """Keep the link up for ever: connect, synchronise, watch liveness, reconnect."""
        backoff = self.params.reconnect_min_s
        while True:
            try:
                await self._connection()
                backoff = self.params.reconnect_min_s
            except (OSError, RobotError) as exc:
                delay = backoff * self._rng.uniform(0.75, 1.0)
                _log.warning("robot %s: %s; reconnecting in %.1f s", self.params.device, exc, delay)
                backoff = min(backoff * 2, self.params.reconnect_max_s)
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
        self._proto = proto
        self.stats.connects += 1
        self.state = LinkState.SYNCING
        self.last_rx = time.monotonic()
        self._lost.clear()
        session = self._rng.randrange(0, 0x10000)
        status = await self._full(Message(self._next_seq(), MsgType.SYNC, SyncArgs(session)))
        self.state = LinkState.READY
        self.ready.set()
        _log.info(
            "robot %s: ready (boot %04x, %s at %s)",
            p.device,
            status.boot_id,
            RobotState(status.state).name.lower(),
            _where(status),
        )
        await self._watch(proto)

    async def _watch(self, proto: _Protocol) -> None:
        """Return (raising) when the port closes or the robot goes silent."""
        timeout = self.params.heartbeat_timeout_s
        while True:
            silent = time.monotonic() - self.last_rx
            if silent > timeout:
                raise RobotLinkError(f"robot silent for {silent:.1f} s")
            lost = asyncio.shield(proto.lost)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout - silent + 0.01):
                    exc = await lost
                raise RobotLinkError(f"port closed: {exc or 'end of file'}")
            if self._lost.is_set():
                raise RobotLinkError("robot restarted")

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
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
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
            if kind in {MsgType.REMOVE, MsgType.FETCH} or self.status is None:
                # The pack the robot now holds is named in its full status: ask for it.
                return await self._full(Message(self._next_seq(), MsgType.STATUS, Empty()))
            return self._merge(outcome, message.seq)

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
        assert self.status is not None
        status = dataclasses.replace(
            self.status,
            state=result.state,
            position=result.position,
            slot=result.slot,
            holding=result.holding,
            pack=self.status.pack if result.holding else b"",
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
        if self._proto is None:
            raise RobotLinkError("robot link down: cannot send STOP")
        message = Message(self._next_seq(), MsgType.STOP, Empty())
        result = await self._transact(message, attempts=STOP_ATTEMPTS)
        return (
            self._merge(result, message.seq)
            if self.status is not None
            else (await self._full(Message(self._next_seq(), MsgType.STATUS, Empty())))
        )

    async def _transact(
        self, message: Message, attempts: int | None = None
    ) -> Outcome | RobotStatus:
        txn = _Txn(message)
        self._pending[txn.seq] = txn
        self.stats.commands += 1
        data = message.to_bytes()
        try:
            await self._until_acked(txn, data, attempts or self.params.retries + 1)
            return await self._until_done(txn, data)
        finally:
            self._pending.pop(txn.seq, None)

    async def _until_acked(self, txn: _Txn, data: bytes, attempts: int) -> None:
        for attempt in range(attempts):
            self._send(data, retransmit=attempt > 0)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.params.ack_timeout_s):
                    await txn.acked.wait()
                return
            if txn.done.done():
                return
        raise RobotTimeoutError(
            f"robot did not acknowledge {txn.message.type.name} (seq {txn.seq})"
            f" after {attempts} attempt(s)"
        )

    async def _until_done(self, txn: _Txn, data: bytes) -> Outcome | RobotStatus:
        deadline = time.monotonic() + self.params.timeout_for(txn.message.type)
        # Ask again at a steady pace: on a noisy line a DONE may need several tries, and a
        # retransmission costs the robot nothing but an answer.
        poll = DONE_POLL_ACKS * self.params.ack_timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RobotTimeoutError(
                    f"robot did not complete {txn.message.type.name} (seq {txn.seq}) within"
                    f" {self.params.timeout_for(txn.message.type):g} s"
                )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(poll, remaining)):
                    return await asyncio.shield(txn.done)
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
        self.last_rx = time.monotonic()
        txn = self._pending.get(msg.seq) if msg.seq else None
        body = msg.body
        if msg.type is MsgType.ACK and txn is not None:
            txn.acked.set()
        elif msg.type is MsgType.DONE and isinstance(body, Outcome):
            if txn is not None:
                txn.finish(body)
        elif msg.type is MsgType.NAK and isinstance(body, NakArgs) and txn is not None:
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
        elif msg.type is MsgType.ERROR and isinstance(body, ErrorArgs) and txn is not None:
            txn.finish(_fault(txn.message.type, body.code))
        elif msg.type is MsgType.REPORT and isinstance(body, RobotStatus):
            self._set_status(body)
            if txn is not None and txn.message.type in {MsgType.STATUS, MsgType.SYNC}:
                txn.finish(body)  # the answer to STATUS / SYNC
            else:
                self._complete_from_report(body)
        elif msg.type is MsgType.HEARTBEAT and isinstance(body, HeartbeatArgs):
            self._heartbeat(body)

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

    def _heartbeat(self, hb: HeartbeatArgs) -> None:
        if (
            self.boot_id is not None
            and hb.boot_id != self.boot_id
            and self.state is LinkState.READY
        ):
            _log.warning(
                "robot restarted (boot %04x -> %04x): re-synchronising", self.boot_id, hb.boot_id
            )
            self.boot_id = hb.boot_id
            self._lost.set()

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
