"""The swap robot's serial protocol as data: frame layout, message table, codes.

One frame on the wire (docs/robot-protocol.md):

    A5 5A | LEN | SEQ | TYPE | PAYLOAD (LEN bytes) | CRC16 (big-endian)

CRC-16/IBM-3740 (also called CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, no final
XOR; check value 0x29B1) over LEN, SEQ, TYPE and PAYLOAD.
"""

from __future__ import annotations

import binascii
import dataclasses
import enum
import struct
from dataclasses import dataclass
from typing import ClassVar, Self

from drivers.errors import DecodeError

SOF = b"\xa5\x5a"
HEADER = 5  # SOF(2) LEN SEQ TYPE
TRAILER = 2  # CRC16
MAX_PAYLOAD = 64
MIN_FRAME = HEADER + TRAILER
MAX_FRAME = MIN_FRAME + MAX_PAYLOAD
SERIAL_LEN = 16  # pack serials: ASCII, NUL padded


def crc16(data: bytes) -> int:
    """CRC-16/IBM-3740 (CCITT-FALSE) of `data`."""
    return binascii.crc_hqx(data, 0xFFFF)


class MsgType(enum.IntEnum):
    """Message types: commands 0x01-0x3F, replies and reports 0x80-0xBF."""

    HOME = 0x01
    MOVE = 0x02
    UNLOCK = 0x03
    REMOVE = 0x04
    STORE = 0x05
    FETCH = 0x06
    INSTALL = 0x07
    LOCK = 0x08
    STOP = 0x09
    RESET = 0x0A
    STATUS = 0x0B
    SYNC = 0x0C
    ACK = 0x80
    DONE = 0x81
    NAK = 0x82
    ERROR = 0x83
    REPORT = 0x84
    HEARTBEAT = 0x85

    @property
    def is_command(self) -> bool:
        """Sent by the controller."""
        return self < 0x80


class Target(enum.IntEnum):
    """Where the robot can be."""

    HOME = 0
    BAY = 1
    SLOT = 2
    BETWEEN = 3  # after a stopped or failed move: HOME or MOVE before anything else


class RobotState(enum.IntEnum):
    """The robot's own phase, reported in REPORT and DONE."""

    IDLE = 0
    BUSY = 1
    FAULT = 2
    STOPPED = 3


class NakReason(enum.IntEnum):
    """Why a command was refused (nothing was done)."""

    BUSY = 1
    BAD_STATE = 2
    BAD_ARGUMENT = 3
    WRONG_POSITION = 4
    NO_PACK = 5
    ALREADY_HOLDING = 6
    UNKNOWN_COMMAND = 7
    SLOT_OCCUPIED = 8
    SLOT_EMPTY = 9
    NOT_SYNCED = 10


class FaultCode(enum.IntEnum):
    """Why a command failed while it ran (the robot may have moved)."""

    STOPPED = 1
    JAM = 2
    TORQUE = 3
    DROPPED_PACK = 4
    HANDOVER = 5
    INTERNAL = 99


# --- payloads: one frozen dataclass per shape, with a struct layout ------------------------


@dataclass(frozen=True, slots=True)
class Payload:
    """Base of payloads; subclasses declare `FORMAT` (struct, big-endian) and their fields."""

    FORMAT: ClassVar[str] = ">"

    def to_bytes(self) -> bytes:
        """Encode."""
        return struct.pack(self.FORMAT, *self._raw())

    def _raw(self) -> tuple[object, ...]:
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Decode; `DecodeError` on a wrong length or value."""
        try:
            values = struct.unpack(cls.FORMAT, data)
        except struct.error as exc:
            raise DecodeError(f"{cls.__name__}: {exc} ({len(data)} bytes)") from None
        try:
            return cls(*values)
        except (ValueError, TypeError) as exc:
            raise DecodeError(f"{cls.__name__}: {exc}") from None


@dataclass(frozen=True, slots=True)
class Empty(Payload):
    """No payload."""

    FORMAT: ClassVar[str] = ">"


@dataclass(frozen=True, slots=True)
class MoveArgs(Payload):
    """MOVE: where to."""

    FORMAT: ClassVar[str] = ">BH"
    target: int
    slot: int = 0

    def __post_init__(self) -> None:
        Target(self.target)
        if self.target == Target.SLOT and not 1 <= self.slot <= 999:
            raise ValueError(f"slot {self.slot} out of range 1..999")


@dataclass(frozen=True, slots=True)
class SlotArgs(Payload):
    """STORE / FETCH: the slot the robot must be at."""

    FORMAT: ClassVar[str] = ">H"
    slot: int

    def __post_init__(self) -> None:
        if not 1 <= self.slot <= 999:
            raise ValueError(f"slot {self.slot} out of range 1..999")


@dataclass(frozen=True, slots=True)
class SyncArgs(Payload):
    """SYNC: the controller's session, so the robot forgets sequence numbers of old ones."""

    FORMAT: ClassVar[str] = ">H"
    session: int


@dataclass(frozen=True, slots=True)
class RobotStatus(Payload):
    """The robot's full state: in REPORT (unsolicited, and after STATUS and SYNC)."""

    FORMAT: ClassVar[str] = f">BBHB{SERIAL_LEN}sHBHHB"
    state: int
    position: int  # Target
    slot: int
    holding: int  # 0/1
    pack: bytes  # serial, NUL padded
    fault: int  # FaultCode or 0
    locked: int  # 0/1: the vehicle's pack is locked (by the last LOCK)
    torque_dnm: int  # last lock torque, 0.1 N*m
    boot_id: int
    last_seq: int

    def __post_init__(self) -> None:
        RobotState(self.state)
        Target(self.position)
        if len(self.pack) != SERIAL_LEN:
            object.__setattr__(self, "pack", self.pack[:SERIAL_LEN].ljust(SERIAL_LEN, b"\0"))

    @property
    def pack_serial(self) -> str | None:
        """The held pack's serial, if any."""
        text = self.pack.rstrip(b"\0").decode("ascii", errors="replace")
        return text if self.holding and text else None


@dataclass(frozen=True, slots=True)
class Outcome(Payload):
    """DONE: the robot's state after the command, compact (a DONE must survive a noisy line).

    The held pack's serial and the boot id are in REPORT (ask with STATUS).
    """

    FORMAT: ClassVar[str] = ">BBHBBHH"
    state: int
    position: int
    slot: int
    holding: int
    locked: int
    torque_dnm: int
    fault: int

    def __post_init__(self) -> None:
        RobotState(self.state)
        Target(self.position)


@dataclass(frozen=True, slots=True)
class NakArgs(Payload):
    """NAK: why the command was refused."""

    FORMAT: ClassVar[str] = ">B"
    reason: int

    def __post_init__(self) -> None:
        NakReason(self.reason)


@dataclass(frozen=True, slots=True)
class ErrorArgs(Payload):
    """ERROR: the fault that ended the command."""

    FORMAT: ClassVar[str] = ">H"
    code: int


@dataclass(frozen=True, slots=True)
class HeartbeatArgs(Payload):
    """HEARTBEAT: the robot is alive (boot id changes when it restarts)."""

    FORMAT: ClassVar[str] = ">HH"
    boot_id: int
    counter: int


@dataclass(frozen=True)
class MessageSpec:
    """One line of the message table."""

    kind: MsgType
    payload: type[Payload]
    timeout: str | None = None  # key of RobotCommandTimeouts for commands that complete


# The command set, declaratively: one line per message.
MESSAGES: dict[MsgType, MessageSpec] = {
    spec.kind: spec
    for spec in (
        MessageSpec(MsgType.HOME, Empty, "home"),
        MessageSpec(MsgType.MOVE, MoveArgs, "move"),
        MessageSpec(MsgType.UNLOCK, Empty, "unlock"),
        MessageSpec(MsgType.REMOVE, Empty, "remove"),
        MessageSpec(MsgType.STORE, SlotArgs, "store"),
        MessageSpec(MsgType.FETCH, SlotArgs, "fetch"),
        MessageSpec(MsgType.INSTALL, Empty, "install"),
        MessageSpec(MsgType.LOCK, Empty, "lock"),
        MessageSpec(MsgType.STOP, Empty, "stop"),
        MessageSpec(MsgType.RESET, Empty, "reset"),
        MessageSpec(MsgType.STATUS, Empty, "status"),
        MessageSpec(MsgType.SYNC, SyncArgs, "sync"),
        MessageSpec(MsgType.ACK, Empty),
        MessageSpec(MsgType.DONE, Outcome),
        MessageSpec(MsgType.NAK, NakArgs),
        MessageSpec(MsgType.ERROR, ErrorArgs),
        MessageSpec(MsgType.REPORT, RobotStatus),
        MessageSpec(MsgType.HEARTBEAT, HeartbeatArgs),
    )
}


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame: sequence number, type code and raw payload; validated on construction."""

    seq: int
    type: int
    payload: bytes = b""

    def __post_init__(self) -> None:
        if not 0 <= self.seq <= 0xFF:
            raise ValueError(f"seq {self.seq} out of 0..255")
        if not 0 <= self.type <= 0xFF:
            raise ValueError(f"type {self.type} out of 0..255")
        if len(self.payload) > MAX_PAYLOAD:
            raise ValueError(f"payload of {len(self.payload)} bytes > {MAX_PAYLOAD}")

    def to_bytes(self) -> bytes:
        """The frame on the wire."""
        body = bytes((len(self.payload), self.seq, self.type)) + self.payload
        return SOF + body + crc16(body).to_bytes(2, "big")

    @classmethod
    def from_bytes(cls, data: bytes) -> tuple[Self, bytes]:
        """Parse one frame at the start of `data`; return it and the rest.

        Raises `DecodeError` if `data` does not start with a whole, valid frame.
        """
        if len(data) < MIN_FRAME:
            raise DecodeError(f"{len(data)} bytes is shorter than a frame")
        if data[:2] != SOF:
            raise DecodeError("no start of frame")
        length = data[2]
        if length > MAX_PAYLOAD:
            raise DecodeError(f"length {length} > {MAX_PAYLOAD}")
        end = HEADER + length + TRAILER
        if len(data) < end:
            raise DecodeError(f"frame of {end} bytes truncated to {len(data)}")
        body = data[2 : HEADER + length]
        if crc16(body) != int.from_bytes(data[HEADER + length : end], "big"):
            raise DecodeError("CRC mismatch")
        return cls(data[3], data[4], bytes(data[HEADER : HEADER + length])), data[end:]


@dataclass(frozen=True, slots=True)
class Message:
    """A decoded frame: its type and typed payload."""

    seq: int
    type: MsgType
    body: Payload

    def to_frame(self) -> Frame:
        """Encode."""
        return Frame(self.seq, int(self.type), self.body.to_bytes())

    def to_bytes(self) -> bytes:
        """The frame on the wire."""
        return self.to_frame().to_bytes()

    @classmethod
    def from_frame(cls, frame: Frame) -> Message:
        """Decode a frame's type and payload; `DecodeError` when unknown or malformed."""
        try:
            kind = MsgType(frame.type)
        except ValueError:
            raise DecodeError(f"unknown message type 0x{frame.type:02x}") from None
        return cls(frame.seq, kind, MESSAGES[kind].payload.from_bytes(frame.payload))
