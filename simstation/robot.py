"""The simulated swap robot on a real pseudo-terminal, speaking the driver's protocol in reverse.

Physics: a shuttle on a line (home at 0 m, the bay at 1 m, slot n at 1 + n metres), moving at
`speed_m_s` of simulated time, holding at most one pack. Packs are handed over with the
simulated racks (store, fetch) and with the vehicle in the bay (remove, install), so a pack
is always in exactly one place. The same frame codec and reassembler as the driver's are used.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import tty
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from drivers import clock as clocks
from drivers.errors import DecodeError
from drivers.robot.protocol import (
    SERIAL_LEN,
    Empty,
    ErrorArgs,
    FaultCode,
    HeartbeatArgs,
    Message,
    MoveArgs,
    MsgType,
    NakArgs,
    NakReason,
    Outcome,
    Payload,
    RobotState,
    RobotStatus,
    SlotArgs,
    Target,
)
from drivers.robot.reassembler import Reassembler
from simstation.charger import SimPack
from simstation.clock import SimClock
from simstation.ptypair import FRESH_TRIES, PtyPairError, busy, say_on_stderr

_log = logging.getLogger(__name__)

HEARTBEAT_S = 0.25
RECENT = 16  # sequence numbers remembered for duplicate suppression
EXECUTIONS_KEEP = 1000  # commands executed, remembered for tests (a month's run: not all)
LOCK_TORQUE_NM = 120.0


class PackHolder(Protocol):
    """Where the robot takes packs from and puts them: a rack slot."""

    def insert_pack(self, slot: int, pack: SimPack) -> None:
        """Put a pack in."""

    def remove_pack(self, slot: int) -> SimPack:
        """Take the pack out."""

    def pack_in(self, slot: int) -> SimPack | None:
        """What is in the slot."""


class Vehicle(Protocol):
    """The car in the bay, as the robot sees it from below."""

    pack: SimPack | None
    locked: bool

    def robot_can_work(self) -> bool:
        """The car is in position and lifted: the robot may work on its pack."""


@dataclass
class SimBay:
    """A minimal vehicle in the bay (the station I/O simulator provides the full one)."""

    pack: SimPack | None = None
    locked: bool = True
    ready: bool = True

    def robot_can_work(self) -> bool:
        """Always, unless a test says otherwise."""
        return self.ready


@dataclass
class Timing:
    """Simulated seconds per operation."""

    speed_m_s: float = 1.0
    settle_s: float = 0.5
    unlock_s: float = 8.0
    remove_s: float = 10.0
    store_s: float = 6.0
    fetch_s: float = 6.0
    install_s: float = 10.0
    lock_s: float = 8.0
    reset_s: float = 1.0


@dataclass
class Faults:
    """What the simulated robot does wrong on purpose."""

    jam_on: MsgType | None = None  # the next command of this kind jams mid-way
    torque_fail: bool = False  # LOCK reaches too little torque
    ack_delay_s: float = 0.0  # real seconds before every ACK
    corrupt_rate: float = 0.0  # per byte, each direction
    drop_rate: float = 0.0  # per byte, each direction
    silent: bool = False  # no output at all (no heartbeat either)
    drop_next: set[MsgType] = field(default_factory=set)  # lose the next frame of these kinds


@dataclass
class _Recent:
    """A command the robot has seen, and what it answered."""

    type: MsgType
    payload: bytes
    replies: list[bytes] = field(default_factory=list)
    finished: bool = False


class SimRobot:
    """The robot; `start(path)` puts its serial port at `path` (a symlink to a pty)."""

    def __init__(
        self,
        *,
        racks: Mapping[int, PackHolder] | None = None,
        vehicle: Vehicle | None = None,
        clock: SimClock | None = None,
        timing: Timing | None = None,
        seed: int = 7,
    ) -> None:
        self.racks = dict(racks or {})
        self.vehicle: Vehicle = vehicle or SimBay()
        self.clock = clock or SimClock()
        self.timing = timing or Timing()
        self.faults = Faults()
        self.rng = random.Random(seed)  # noqa: S311 - simulation
        self.position = Target.HOME
        self.slot = 0
        self.metres = 0.0
        self.holding: SimPack | None = None
        self.state = RobotState.IDLE
        self.fault = 0
        self.locked = False
        self.torque_dnm = 0
        self.boot_id = self.rng.randrange(1, 0x10000)
        self.last_seq = 0
        self.synced = False
        self.executions: list[tuple[int, MsgType]] = []  # the last EXECUTIONS_KEEP or more
        self.path: Path | None = None
        self.address: tuple[str, int] | None = None  # where it listens on TCP (`start_tcp`)
        self._listener: socket.socket | None = None
        self._conn: socket.socket | None = None
        self._master: int | None = None
        self._slave: int | None = None
        self._reassembler = Reassembler()
        self._recent: dict[int, _Recent] = {}
        self._running: asyncio.Task[None] | None = None
        self._running_seq = 0
        self._heartbeat: asyncio.Task[None] | None = None
        self._hb_counter = 0
        self.stopped_at: float | None = None  # monotonic time motion last halted by STOP

    # --- the port ---------------------------------------------------------------------------

    async def start(self, path: Path, say: Callable[[str], None] = say_on_stderr) -> None:
        """Open a pty, link `path` to it, and start answering.

        A pty another program holds is closed and a fresh one tried (`say` tells why).
        """
        self.path = path
        master, slave = _free_pty(say)
        self._master, self._slave = master, slave
        _link(path, os.ttyname(slave))
        self._reassembler = Reassembler()
        asyncio.get_running_loop().add_reader(master, self._readable)
        self._heartbeat = asyncio.create_task(self._heartbeats(), name="simrobot-heartbeat")

    async def start_tcp(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve the line on TCP, as behind a serial device server; the `socket://` URL.

        One client at a time (a new one replaces the old, as a device server's port does).
        The bytes are the serial line's, unchanged.
        """
        listener = socket.create_server((host, port))
        listener.setblocking(False)
        self._listener = listener
        self.address = (host, listener.getsockname()[1])
        self._reassembler = Reassembler()
        asyncio.get_running_loop().add_reader(listener.fileno(), self._client_came)
        self._heartbeat = asyncio.create_task(self._heartbeats(), name="simrobot-heartbeat")
        return f"socket://{host}:{self.address[1]}"

    def _client_came(self) -> None:
        if self._listener is None:
            return
        try:
            conn, _ = self._listener.accept()
        except BlockingIOError:
            return
        self._close_conn()
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._conn, self._master = conn, conn.fileno()
        self._reassembler = Reassembler()
        asyncio.get_running_loop().add_reader(self._master, self._readable)

    def _close_conn(self) -> None:
        if self._conn is not None:
            asyncio.get_running_loop().remove_reader(self._conn.fileno())
            self._conn.close()
            self._conn, self._master = None, None

    async def stop(self) -> None:
        """Close the port and stop everything; idempotent."""
        await self.disconnect()
        if self._running is not None:
            self._running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._running

    async def disconnect(self) -> None:
        """The port vanishes (cable pulled, USB adapter gone)."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
        if self._listener is not None:
            asyncio.get_running_loop().remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
        self._close_conn()
        if self._master is not None:
            asyncio.get_running_loop().remove_reader(self._master)
            os.close(self._master)
            self._master = None
        if self._slave is not None:
            os.close(self._slave)
            self._slave = None
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    async def reconnect(self) -> None:
        """The port comes back at the same path (or address)."""
        if self.address is not None:
            await self.start_tcp(*self.address)
            return
        assert self.path is not None
        await self.start(self.path)

    def power_cycle(self) -> None:
        """The robot restarts: it forgets sequence numbers and faults, keeps its pack."""
        if self._running is not None:
            self._running.cancel()
        self.boot_id = (self.boot_id % 0xFFFF) + 1
        self._recent.clear()
        self.synced = False
        self.state = RobotState.IDLE
        self.fault = 0

    # --- bytes in and out -------------------------------------------------------------------

    def _readable(self) -> None:
        if self._master is None:
            return
        try:
            data = os.read(self._master, 4096)
        except BlockingIOError:
            return
        except OSError:  # the other end is gone (a pty's EIO; a TCP client's reset)
            self._close_conn()
            return
        if not data:  # a TCP client closed its end
            self._close_conn()
            return
        for frame in self._reassembler.feed(self._garble(data)):
            try:
                message = Message.from_frame(frame)
            except DecodeError:
                continue
            if message.type in self.faults.drop_next:
                self.faults.drop_next.discard(message.type)  # this one is lost on the line
                continue
            self._on_command(message)

    def _write(self, data: bytes) -> None:
        if self._master is None or self.faults.silent:
            return
        data = self._garble(data)
        with contextlib.suppress(BlockingIOError, OSError):  # nobody reading: the bytes are lost
            os.write(self._master, data)

    def _garble(self, data: bytes) -> bytes:
        f = self.faults
        if not (f.corrupt_rate or f.drop_rate):
            return data
        out = bytearray()
        for byte in data:
            r = self.rng.random()
            if r < f.drop_rate:
                continue
            garbled = (
                byte ^ self.rng.randrange(1, 256) if r < f.drop_rate + f.corrupt_rate else byte
            )
            out.append(garbled)
        return bytes(out)

    def _reply(self, seq: int, kind: MsgType, body: Payload | None = None) -> bytes:
        data = Message(seq, kind, body or Empty()).to_bytes()
        self._write(data)
        return data

    async def _heartbeats(self) -> None:
        while True:
            self._hb_counter = (self._hb_counter + 1) & 0xFFFF
            self._reply(0, MsgType.HEARTBEAT, HeartbeatArgs(self.boot_id, self._hb_counter))
            await asyncio.sleep(HEARTBEAT_S)

    # --- commands ------------------------------------------------------------------------------

    def _on_command(self, msg: Message) -> None:
        if not msg.type.is_command:
            return
        payload = msg.body.to_bytes()
        seen = self._recent.get(msg.seq)
        if seen is not None and seen.type is msg.type and seen.payload == payload:
            # A retransmission: answer again, never run again.
            for data in seen.replies:
                self._write(data)
            return
        record = _Recent(msg.type, payload)
        self._recent.pop(msg.seq, None)  # re-inserted: the newest is evicted last
        self._recent[msg.seq] = record
        while len(self._recent) > RECENT:
            self._recent.pop(next(iter(self._recent)))
        if self.faults.ack_delay_s:
            asyncio.get_running_loop().call_later(
                self.faults.ack_delay_s, self._accept, msg, record
            )
        else:
            self._accept(msg, record)

    def _accept(self, msg: Message, record: _Recent) -> None:
        kind = msg.type
        if kind is MsgType.STOP:
            self._halt()
            self._finish(msg, record, ack=True)
            return
        if kind is MsgType.SYNC:
            self._recent = {msg.seq: record}
            self.synced = True
            self._finish(msg, record, ack=True)
            return
        if kind is MsgType.STATUS:
            self._finish(msg, record, ack=True)
            return
        reason = self._refusal(msg)
        if reason is not None:
            record.replies.append(self._reply(msg.seq, MsgType.NAK, NakArgs(reason)))
            record.finished = True
            return
        record.replies.append(self._reply(msg.seq, MsgType.ACK))
        self.executions.append((msg.seq, kind))
        if len(self.executions) >= 2 * EXECUTIONS_KEEP:
            del self.executions[:-EXECUTIONS_KEEP]
        self.state = RobotState.BUSY
        self.last_seq = msg.seq
        self._running_seq = msg.seq
        self._running = asyncio.create_task(
            self._execute(msg, record), name=f"simrobot-{kind.name}"
        )

    def _refusal(self, msg: Message) -> NakReason | None:
        """Why the robot would refuse this command now (None: it runs)."""
        if not self.synced:
            # Since its (re)start the robot has not been told which session is talking: a
            # retransmission from before the restart must not run a second time.
            return NakReason.NOT_SYNCED
        if self.state is RobotState.BUSY:
            return NakReason.BUSY
        if msg.type is MsgType.RESET:
            return None
        if self.state in {RobotState.FAULT, RobotState.STOPPED}:
            return NakReason.BAD_STATE
        check = {
            MsgType.HOME: self._can_move,
            MsgType.MOVE: self._can_move,
            MsgType.UNLOCK: self._can_lock,
            MsgType.LOCK: self._can_lock,
            MsgType.REMOVE: self._can_remove,
            MsgType.INSTALL: self._can_install,
            MsgType.STORE: self._can_store,
            MsgType.FETCH: self._can_fetch,
        }.get(msg.type)
        return NakReason.UNKNOWN_COMMAND if check is None else check(msg.body)

    def _can_move(self, body: Payload) -> NakReason | None:
        if (
            isinstance(body, MoveArgs)
            and body.target == Target.SLOT
            and body.slot not in self.racks
        ):
            return NakReason.BAD_ARGUMENT
        return None

    def _can_lock(self, _: Payload) -> NakReason | None:
        if self.position is not Target.BAY:
            return NakReason.WRONG_POSITION
        return None if self.vehicle.pack is not None else NakReason.NO_PACK

    def _can_remove(self, _: Payload) -> NakReason | None:
        if self.position is not Target.BAY:
            return NakReason.WRONG_POSITION
        if self.holding is not None:
            return NakReason.ALREADY_HOLDING
        if self.vehicle.pack is None:
            return NakReason.NO_PACK
        return NakReason.BAD_STATE if self.vehicle.locked else None

    def _can_install(self, _: Payload) -> NakReason | None:
        if self.position is not Target.BAY:
            return NakReason.WRONG_POSITION
        if self.holding is None:
            return NakReason.NO_PACK
        return NakReason.SLOT_OCCUPIED if self.vehicle.pack is not None else None

    def _at_slot(self, body: Payload) -> int | None:
        if not isinstance(body, SlotArgs) or body.slot not in self.racks:
            return None
        return body.slot if self.position is Target.SLOT and self.slot == body.slot else None

    def _can_store(self, body: Payload) -> NakReason | None:
        slot = self._at_slot(body)
        if slot is None:
            return NakReason.WRONG_POSITION
        if self.holding is None:
            return NakReason.NO_PACK
        return NakReason.SLOT_OCCUPIED if self.racks[slot].pack_in(slot) is not None else None

    def _can_fetch(self, body: Payload) -> NakReason | None:
        slot = self._at_slot(body)
        if slot is None:
            return NakReason.WRONG_POSITION
        if self.holding is not None:
            return NakReason.ALREADY_HOLDING
        return NakReason.SLOT_EMPTY if self.racks[slot].pack_in(slot) is None else None

    async def _execute(self, msg: Message, record: _Recent) -> None:
        kind = msg.type
        try:
            if self.faults.jam_on is kind:
                self.faults.jam_on = None
                await self._wait(self._duration(msg) / 2)
                if kind in {MsgType.HOME, MsgType.MOVE}:
                    self.position = Target.BETWEEN
                self._fail(msg, record, FaultCode.JAM)
                return
            await self._wait(self._duration(msg))
            code = self._apply(msg)
            if code:
                self._fail(msg, record, code)
                return
            self.state = RobotState.IDLE
            self._finish(msg, record, ack=False)
        except asyncio.CancelledError:
            # STOP (or a power cycle): the command ends here, motion halted.
            if kind in {MsgType.HOME, MsgType.MOVE}:
                self.position = Target.BETWEEN
            if self.state is RobotState.STOPPED:
                record.replies.append(
                    self._reply(msg.seq, MsgType.ERROR, ErrorArgs(FaultCode.STOPPED))
                )
                record.finished = True
            raise
        finally:
            if self._running is asyncio.current_task():
                self._running = None

    def _duration(self, msg: Message) -> float:
        t = self.timing
        kind, body = msg.type, msg.body
        if kind in {MsgType.HOME, MsgType.MOVE}:
            goal = self._metres_of(body)
            return abs(goal - self.metres) / t.speed_m_s + t.settle_s
        return {
            MsgType.UNLOCK: t.unlock_s,
            MsgType.REMOVE: t.remove_s,
            MsgType.STORE: t.store_s,
            MsgType.FETCH: t.fetch_s,
            MsgType.INSTALL: t.install_s,
            MsgType.LOCK: t.lock_s,
            MsgType.RESET: t.reset_s,
        }.get(kind, 0.0)

    @staticmethod
    def _metres_of(body: object) -> float:
        if isinstance(body, MoveArgs):
            if body.target == Target.BAY:
                return 1.0
            if body.target == Target.SLOT:
                return 1.0 + body.slot
        return 0.0

    async def _wait(self, sim_seconds: float) -> None:
        if sim_seconds > 0:
            await asyncio.sleep(self.clock.real(sim_seconds))

    def _apply(self, msg: Message) -> int:
        """The effect of a finished command; a fault code, or 0."""
        kind, body = msg.type, msg.body
        if kind in {MsgType.HOME, MsgType.MOVE}:
            self.metres = self._metres_of(body)
            target = Target(body.target) if isinstance(body, MoveArgs) else Target.HOME
            self.position = target
            self.slot = body.slot if isinstance(body, MoveArgs) and target is Target.SLOT else 0
            return 0
        if kind is MsgType.RESET:
            self.fault = 0
            return 0
        if kind in {MsgType.UNLOCK, MsgType.LOCK}:
            return self._lock(locked=kind is MsgType.LOCK)
        if kind in {MsgType.REMOVE, MsgType.INSTALL}:
            return self._vehicle_handover(take=kind is MsgType.REMOVE)
        if isinstance(body, SlotArgs):
            return self._rack_handover(body.slot, store=kind is MsgType.STORE)
        return 0

    def _lock(self, *, locked: bool) -> int:
        if not locked:
            self.vehicle.locked = self.locked = False
            return 0
        if self.faults.torque_fail:
            self.faults.torque_fail = False
            self.torque_dnm = int(LOCK_TORQUE_NM * 10 * 0.4)
            self.locked = False
            return FaultCode.TORQUE
        self.vehicle.locked = self.locked = True
        self.torque_dnm = int(LOCK_TORQUE_NM * 10 + self.rng.uniform(-30, 30))
        return 0

    def _vehicle_handover(self, *, take: bool) -> int:
        if not self.vehicle.robot_can_work():
            return FaultCode.HANDOVER
        if take:
            if self.vehicle.pack is None:
                return FaultCode.HANDOVER
            self.holding, self.vehicle.pack = self.vehicle.pack, None
            self.locked = False
        else:
            if self.holding is None:
                return FaultCode.HANDOVER
            self.vehicle.pack, self.holding = self.holding, None
            self.vehicle.locked = False
        return 0

    def _rack_handover(self, slot: int, *, store: bool) -> int:
        rack = self.racks[slot]
        if store:
            if self.holding is None:
                return FaultCode.HANDOVER
            rack.insert_pack(slot, self.holding)
            self.holding = None
        else:
            self.holding = rack.remove_pack(slot)
        return 0

    def _fail(self, msg: Message, record: _Recent, code: int) -> None:
        self.state = RobotState.FAULT
        self.fault = code
        record.replies.append(self._reply(msg.seq, MsgType.ERROR, ErrorArgs(code)))
        record.finished = True
        self._reply(0, MsgType.REPORT, self.status())

    def inject_fault(self, code: int = FaultCode.JAM) -> None:
        """The idle robot faults by itself (a drive fault): its REPORT says so.

        (A fault during a command is `faults.jam_on`.)
        """
        if self._running is not None and not self._running.done():
            raise RuntimeError("the robot is busy: use faults.jam_on for a fault mid-command")
        self.state = RobotState.FAULT
        self.fault = code
        self._reply(0, MsgType.REPORT, self.status())

    def _halt(self) -> None:
        """STOP: motion ends now; the robot stays stopped until RESET."""
        self.stopped_at = clocks.monotonic()
        if self._running is not None and not self._running.done():
            self.state = RobotState.STOPPED
            self.fault = FaultCode.STOPPED
            self._running.cancel()
        elif self.state is not RobotState.FAULT:
            self.state = RobotState.STOPPED
            self.fault = FaultCode.STOPPED

    def _finish(self, msg: Message, record: _Recent, *, ack: bool) -> None:
        if ack:
            record.replies.append(self._reply(msg.seq, MsgType.ACK))
        if msg.type is MsgType.RESET:
            self.state = RobotState.IDLE
        if msg.type in {MsgType.STATUS, MsgType.SYNC}:
            # Answered with the full status, under the request's sequence number.
            record.replies.append(self._reply(msg.seq, MsgType.REPORT, self.status()))
            record.finished = True
            return
        record.replies.append(self._reply(msg.seq, MsgType.DONE, self.outcome()))
        record.finished = True
        self._reply(0, MsgType.REPORT, self.status())

    def outcome(self) -> Outcome:
        """The compact status a DONE carries."""
        return Outcome(
            state=int(self.state),
            position=int(self.position),
            slot=self.slot,
            holding=int(self.holding is not None),
            locked=int(self.locked),
            torque_dnm=self.torque_dnm,
            fault=self.fault,
        )

    def status(self, seq: int | None = None) -> RobotStatus:
        """What the robot reports about itself."""
        serial = (self.holding.serial if self.holding else "").encode()[:SERIAL_LEN]
        return RobotStatus(
            state=int(self.state),
            position=int(self.position),
            slot=self.slot,
            holding=int(self.holding is not None),
            pack=serial.ljust(SERIAL_LEN, b"\0"),
            fault=self.fault,
            locked=int(self.locked),
            torque_dnm=self.torque_dnm,
            boot_id=self.boot_id,
            last_seq=self.last_seq if seq is None else seq,
        )


def _free_pty(say: Callable[[str], None]) -> tuple[int, int]:
    """A raw pty (master, slave) whose slave no other program holds."""
    why: str | None = ""
    for attempt in range(1, FRESH_TRIES + 1):
        master, slave = os.openpty()
        node = os.ttyname(slave)
        why = busy(node)
        if why is None:
            # Raw on both ends before anything is written: no echo, no line discipline.
            tty.setraw(master)
            tty.setraw(slave)
            os.set_blocking(master, False)
            return master, slave
        os.close(master)
        os.close(slave)
        fresh = "; trying a fresh one" if attempt < FRESH_TRIES else ""
        say(f"robot: the pty {node} {why}{fresh}")
    raise PtyPairError(f"robot: {FRESH_TRIES} ptys in a row could not be had (the last {why})")


def _link(path: Path, target: str) -> None:
    """Point `path` at the pty's device node (replacing an old link)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)
