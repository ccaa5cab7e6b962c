"""An MQTT v5 broker in the simulator's own process, for runs on virtual time.

Mosquitto is a process of its own: while a message is inside it, the simulator's loop cannot
know that anything is in flight, and a virtual clock would jump past it. This broker runs on
the same loop as the daemon and the fleet (`simstation.vloop`), so a message is either in a
socket's queue or being handled, never out of sight. Both ends stay the real clients (aiomqtt
and paho, over loopback TCP); only the broker differs, and the tests run every MQTT feature of
the daemon against mosquitto.

What it does is what the daemon and the fleet use, as MQTT 5.0 says it: CONNECT (clean start,
a will with its retain flag), SUBSCRIBE with `+`/`#` filters and the subscription options (QoS,
no local, retain as published, retain handling), UNSUBSCRIBE, PUBLISH at QoS 0 and 1 (the
PUBACK is sent when the message has been handed on; properties are passed on as they came),
retained messages, PINGREQ and DISCONNECT (a normal one drops the will). Not done: QoS 2,
persistent sessions, topic aliases, shared subscriptions, authentication; a packet it does not
take closes the connection, as a broker does with a protocol error.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

_log = logging.getLogger(__name__)

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = 8, 9, 10, 11
PINGREQ, PINGRESP, DISCONNECT = 12, 13, 14
ASSIGNED_CLIENT_ID = 0x12


class ProtocolError(Exception):
    """A packet this broker does not take: the connection is closed."""


def varint(n: int) -> bytes:
    """MQTT's variable byte integer."""
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def read_varint(data: bytes | bytearray, at: int) -> tuple[int, int]:
    """(value, next offset); IndexError if incomplete."""
    value, shift = 0, 0
    for i in range(4):
        byte = data[at + i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at + i + 1
        shift += 7
    raise ProtocolError("malformed variable byte integer")


def _string(data: bytes, at: int) -> tuple[bytes, int]:
    n = int.from_bytes(data[at : at + 2], "big")
    if at + 2 + n > len(data):
        raise ProtocolError("string beyond the packet")
    return data[at + 2 : at + 2 + n], at + 2 + n


def _packet(kind: int, flags: int, body: bytes) -> bytes:
    return bytes([kind << 4 | flags]) + varint(len(body)) + body


def matches(topic_filter: str, topic: str) -> bool:
    """Whether `topic` matches `topic_filter` (`+` one level, `#` the rest)."""
    if topic.startswith("$") and topic_filter[:1] in {"+", "#"}:
        return False
    f, t = topic_filter.split("/"), topic.split("/")
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(t) or (level not in {"+", t[i]}):
            return False
    return len(f) == len(t)


@dataclass
class _Retained:
    qos: int
    props: bytes
    payload: bytes


@dataclass
class _Sub:
    qos: int
    no_local: bool
    as_published: bool


@dataclass
class _Session(asyncio.Protocol):
    broker: MiniBroker
    transport: asyncio.Transport | None = None
    client_id: str = ""
    subs: dict[str, _Sub] = field(default_factory=dict)
    will: tuple[str, int, bool, bytes, bytes] | None = None  # topic, qos, retain, props, payload
    buffer: bytearray = field(default_factory=bytearray)
    connected: bool = False
    # The last packet id sent (1-65535, then 1 again). Not `itertools.cycle`: it keeps a copy
    # of every id of its first pass, 65535 ints (2.3 MB) a session, which a long run took for
    # the daemon's memory growing.
    last_id: int = 0

    def next_id(self) -> int:
        """The next packet id for a QoS 1 message to this client."""
        self.last_id = self.last_id % 65535 + 1
        return self.last_id

    def __hash__(self) -> int:
        return id(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: ARG002
        self.broker.gone(self)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            while self.buffer:
                try:
                    length, start = read_varint(self.buffer, 1)
                except IndexError:
                    return
                if len(self.buffer) < start + length:
                    return
                header = self.buffer[0]
                body = bytes(self.buffer[start : start + length])
                del self.buffer[: start + length]
                self.broker.handle(self, header >> 4, header & 0x0F, body)
        except (ProtocolError, IndexError, UnicodeDecodeError, ValueError) as exc:
            _log.info("mqtt client %r: %s; closing", self.client_id, exc)
            self.close()

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class MiniBroker:
    """`async with MiniBroker() as broker:` listens on `broker.host`:`broker.port`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.retained: dict[str, _Retained] = {}
        self.sessions: dict[str, _Session] = {}
        self.messages = 0  # PUBLISH packets received
        self._server: asyncio.Server | None = None
        self._auto = itertools.count(1)

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Session(self), self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop listening and drop every client."""
        if self._server is not None:
            self._server.close()
            for session in list(self.sessions.values()):
                session.will = None
                session.close()
            await self._server.wait_closed()
            self._server = None

    # --- packets ---------------------------------------------------------------------------

    def handle(self, s: _Session, kind: int, flags: int, body: bytes) -> None:
        """One packet from `s`."""
        if not s.connected and kind != CONNECT:
            raise ProtocolError(f"packet type {kind} before CONNECT")
        if kind == CONNECT:
            self._connect(s, body)
        elif kind == PUBLISH:
            self._publish(s, flags, body)
        elif kind == PUBACK:
            pass  # nothing is kept for redelivery (no persistent sessions)
        elif kind == SUBSCRIBE:
            self._subscribe(s, body)
        elif kind == UNSUBSCRIBE:
            self._unsubscribe(s, body)
        elif kind == PINGREQ:
            s.send(_packet(PINGRESP, 0, b""))
        elif kind == DISCONNECT:
            if not body or body[0] != 0x04:  # 0x04: disconnect with the will
                s.will = None
            s.close()
        else:
            raise ProtocolError(f"packet type {kind} is not handled")

    def _connect(self, s: _Session, body: bytes) -> None:
        if s.connected:
            raise ProtocolError("second CONNECT")
        name, at = _string(body, 0)
        level, cflags = body[at], body[at + 1]
        if name != b"MQTT" or level != 5:
            s.send(_packet(CONNACK, 0, b"\x00\x84\x00"))  # unsupported protocol version
            s.close()
            return
        n, at = read_varint(body, at + 4)
        at += n  # connect properties: none is needed here
        client_id, at = _string(body, at)
        will = None
        if cflags & 0x04:
            n, at = read_varint(body, at)
            props, at = body[at : at + n], at + n
            topic, at = _string(body, at)
            payload, at = _string(body, at)
            will = (topic.decode(), (cflags >> 3) & 0x03, bool(cflags & 0x20), props, payload)
        props_out = b""
        cid = client_id.decode()
        if not cid:
            cid = f"auto-{next(self._auto)}"
            raw = cid.encode()
            props_out = bytes([ASSIGNED_CLIENT_ID]) + len(raw).to_bytes(2, "big") + raw
        old = self.sessions.get(cid)
        if old is not None:
            old.close()  # taken over; its will goes out when it is gone
            self.gone(old)
        s.client_id, s.will, s.connected = cid, will, True
        self.sessions[cid] = s
        s.send(_packet(CONNACK, 0, b"\x00\x00" + varint(len(props_out)) + props_out))

    def _publish(self, s: _Session, flags: int, body: bytes) -> None:
        qos, retain = (flags >> 1) & 0x03, bool(flags & 0x01)
        if qos > 1:
            raise ProtocolError("QoS 2 is not handled")
        topic_b, at = _string(body, 0)
        pid = body[at : at + 2] if qos else b""
        at += len(pid)
        n, start = read_varint(body, at)
        props, payload = body[start : start + n], body[start + n :]
        topic = topic_b.decode()
        if not topic or "+" in topic or "#" in topic:
            raise ProtocolError(f"PUBLISH to {topic!r}")
        self.messages += 1
        self.deliver(topic, qos, props, payload, retain=retain, sender=s)
        if qos:
            s.send(_packet(PUBACK, 0, pid))

    def deliver(
        self,
        topic: str,
        qos: int,
        props: bytes,
        payload: bytes,
        *,
        retain: bool,
        sender: _Session | None,
    ) -> None:
        """Store it if retained; hand it to every matching subscription."""
        if retain:
            if payload:
                self.retained[topic] = _Retained(qos, props, payload)
            else:
                self.retained.pop(topic, None)
        for session in list(self.sessions.values()):
            best: _Sub | None = None
            for topic_filter, sub in session.subs.items():
                if (sub.no_local and session is sender) or not matches(topic_filter, topic):
                    continue
                if best is None or sub.qos > best.qos:
                    best = sub
            if best is not None:
                keep = retain and best.as_published
                self._send(session, topic, min(qos, best.qos), props, payload, retain=keep)

    def _send(
        self, s: _Session, topic: str, qos: int, props: bytes, payload: bytes, *, retain: bool
    ) -> None:
        raw = topic.encode()
        head = len(raw).to_bytes(2, "big") + raw
        if qos:
            head += s.next_id().to_bytes(2, "big")
        body = head + varint(len(props)) + props + payload
        s.send(_packet(PUBLISH, qos << 1 | int(retain), body))

    @staticmethod
    def _filters(body: bytes, *, options: bool) -> tuple[bytes, list[tuple[str, int]]]:
        """A SUBSCRIBE's or UNSUBSCRIBE's packet id and its (filter, options byte) list."""
        n, at = read_varint(body, 2)
        at += n
        out = []
        while at < len(body):
            f, at = _string(body, at)
            out.append((f.decode(), body[at] if options else 0))
            at += int(options)
        return body[:2], out

    def _subscribe(self, s: _Session, body: bytes) -> None:
        pid, filters = self._filters(body, options=True)
        codes = bytearray()
        pending: list[tuple[str, int, _Retained]] = []
        for topic_filter, options in filters:
            if not topic_filter:
                codes.append(0x80)  # unspecified error
                continue
            qos = min(options & 0x03, 1)  # QoS 2 is granted as 1
            codes.append(qos)
            existed = topic_filter in s.subs
            s.subs[topic_filter] = _Sub(qos, bool(options & 0x04), bool(options & 0x08))
            handling = (options >> 4) & 0x03
            if handling == 0 or (handling == 1 and not existed):
                pending += [
                    (topic, min(qos, kept.qos), kept)
                    for topic, kept in self.retained.items()
                    if matches(topic_filter, topic)
                ]
        s.send(_packet(SUBACK, 0, pid + b"\x00" + bytes(codes)))
        for topic, qos, kept in pending:  # after the SUBACK, as retained
            self._send(s, topic, qos, kept.props, kept.payload, retain=True)

    def _unsubscribe(self, s: _Session, body: bytes) -> None:
        pid, filters = self._filters(body, options=False)
        codes = bytes(0x00 if s.subs.pop(f, None) is not None else 0x11 for f, _ in filters)
        s.send(_packet(UNSUBACK, 0, pid + b"\x00" + codes))

    def gone(self, s: _Session) -> None:
        """`s` is closed: forget it; publish its will unless a normal DISCONNECT dropped it."""
        if self.sessions.get(s.client_id) is s:
            del self.sessions[s.client_id]
        will, s.will = s.will, None
        s.subs.clear()
        if will is not None:
            topic, qos, retain, props, payload = will
            self.deliver(topic, qos, props, payload, retain=retain, sender=None)
