"""Remote commands over MQTT: `<root>/cmd/<name>` requests, each answered, none run twice.

A request is a JSON object with a client-chosen `id` and the command's arguments. The reply
goes to the MQTT v5 Response Topic with the request's Correlation Data, or (an MQTT 3.1.1
client) to the topic named in `reply_to`: `{"id", "ok", "code", "message", "result"}`.

- Every request is answered: `invalid` (not JSON, too big, a missing or bad argument: the
  message names it), `unknown_command`, `expired`, `rejected` (not allowed now: the reason),
  `busy`, `duplicate`, or `accepted` / `done`.
- A stale request never runs: the v5 Message Expiry Interval (counted from its arrival here)
  and an in-band `expires_at` are both honoured, checked again just before it runs; with
  `commands.require_expiry` a request that carries neither is refused.
- A repeated `id` is not run again: it is answered `duplicate` with the first reply's result.
  Ids of commands that change something are written to the journal before the command runs,
  so this holds across a restart (a repeat of one that was running when the daemon stopped is
  answered `duplicate` with an unknown outcome).
- Requests run one at a time, in arrival order.

docs/mqtt-api.md documents every command; docs/schemas/ has their JSON Schemas.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from controller.config import CommandsConfig
from controller.journal import Journal, transaction
from controller.mqttlink import MqttLink, NotConnectedError, RefusedError
from controller.sequencer import Mode, Sequencer, SwapBusyError, SwapRejectedError

_log = logging.getLogger(__name__)

QUEUE_SIZE = 64
PRUNE_EVERY = 500  # commands between two prunings of remembered ids
READ_ONLY_IDS = 4096  # ids of read-only commands remembered in memory
ID_PATTERN = r"^[A-Za-z0-9._:@/+-]{1,64}$"
NAME_RE = re.compile(r"^[a-z_]{1,32}$")

Code = Literal[
    "accepted", "done", "invalid", "unknown_command", "expired", "rejected", "busy", "duplicate",
    "error",
]  # fmt: skip


class Request(BaseModel):
    """What every request carries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=ID_PATTERN, description="chosen by the requester, unique per request")
    reply_to: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="reply topic for MQTT 3.1.1 clients (v5: use the Response Topic)",
    )
    expires_at: AwareDatetime | None = Field(
        default=None, description="not run after this moment (RFC 3339, with a time zone)"
    )
    by: str | None = Field(
        default=None, max_length=64, description="who asks (kept in the swap record)"
    )


class StartSwap(Request):
    """Authorise a swap: the best charged pack of the type is reserved, and a free slot."""

    vehicle_id: str = Field(min_length=1, max_length=16, pattern=r"^[\x20-\x7e]+$")
    pack_type: str = Field(min_length=1, max_length=32, pattern=r"^[\x20-\x7e]+$")


class Abort(Request):
    """Abort the swap: before anything moved it is cancelled; later, made safe first."""

    reason: str | None = Field(default=None, max_length=200)


class ResetFault(Request):
    """After a fault or a released E-stop: reset the robot, make the vehicle safe."""


class Recover(Request):
    """After `recovery_required`: the operator's decision."""

    decision: Literal["resume", "abort", "clear"]


class SetMode(Request):
    """`auto` (swaps allowed), `maintenance` or `out_of_service` (new swaps refused)."""

    mode: Mode


class SetSlot(Request):
    """Take a slot out of service (`enabled: false`) or back; kept across restarts."""

    slot: int = Field(ge=1, le=65535)
    enabled: bool


class Ping(Request):
    """Answered `done` at once (with the station's clock)."""


class Republish(Request):
    """Publish every retained topic again (info, state, slots, robot)."""


COMMANDS: dict[str, type[Request]] = {
    "start_swap": StartSwap,
    "abort": Abort,
    "reset_fault": ResetFault,
    "recover": Recover,
    "set_mode": SetMode,
    "set_slot": SetSlot,
    "ping": Ping,
    "republish": Republish,
}
# Commands that change nothing: not journalled (a repeat in this process is still refused).
READ_ONLY = frozenset({"ping", "republish"})
# Commands that start a process whose progress is on `state` and `events`.
ACCEPTED = frozenset({"start_swap", "abort", "reset_fault", "recover"})


class CommandReply(BaseModel):
    """The answer to a request."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str | None = Field(description="the request's id (null if it could not be read)")
    ok: bool = Field(description="accepted or done")
    code: Code
    message: str
    result: Any = None


@dataclass(frozen=True, slots=True)
class _Incoming:
    name: str
    payload: bytes
    reply_to: str | None
    correlation: bytes | None
    received: float  # monotonic
    expiry_s: float | None  # v5 Message Expiry Interval, as delivered


class CommandServer:
    """Takes requests from `<root>/cmd/+`, runs them one by one, answers each."""

    def __init__(
        self,
        link: MqttLink,
        seq: Sequencer,
        journal: Journal,
        config: CommandsConfig,
        *,
        republish: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.link = link
        self.seq = seq
        self.journal = journal
        self.config = config
        self.republish = republish
        self.prefix = f"{link.topic_root}/cmd/"
        self.handled = 0
        self.codes: collections.Counter[str] = collections.Counter()
        self._queue: asyncio.Queue[_Incoming] = asyncio.Queue(maxsize=QUEUE_SIZE)
        # id -> (command, reply) of read-only commands (not journalled)
        self._read_only_ids: collections.OrderedDict[str, tuple[str, CommandReply]] = (
            collections.OrderedDict()
        )
        self._pending: set[asyncio.Task[None]] = set()
        link.route(f"{self.prefix}+", self._on_message)

    # --- arrival (on the link's reader: never blocks) -------------------------------------------

    def _on_message(self, message: aiomqtt.Message) -> None:
        props = message.properties
        expiry = getattr(props, "MessageExpiryInterval", None) if props is not None else None
        payload = message.payload if isinstance(message.payload, bytes | bytearray) else b""
        incoming = _Incoming(
            name=str(message.topic)[len(self.prefix) :],
            payload=bytes(payload),
            reply_to=getattr(props, "ResponseTopic", None) if props is not None else None,
            correlation=getattr(props, "CorrelationData", None) if props is not None else None,
            received=time.monotonic(),
            expiry_s=float(expiry) if expiry is not None else None,
        )
        try:
            self._queue.put_nowait(incoming)
        except asyncio.QueueFull:
            reply = _reply(_peek_id(incoming.payload), "busy", "too many requests queued")
            self._spawn(self._send(incoming, reply))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    # --- handling, in order ---------------------------------------------------------------------

    async def run(self) -> None:
        """Answer requests in order, for ever."""
        while True:
            incoming = await self._queue.get()
            refused = self._bad_reply_topic(incoming)
            if refused is not None:
                # Nowhere to answer: the request is not run (docs/security.md, reply topics).
                _log.warning("cmd %s not run: %s", incoming.name, refused)
                self.handled += 1
                self.codes["invalid"] += 1
                continue
            try:
                reply = await self._answer(incoming)
            except Exception as exc:  # noqa: BLE001 - the requester learns; the daemon goes on
                _log.exception("command %s failed", incoming.name)
                reply = _reply(_peek_id(incoming.payload), "error", f"{type(exc).__name__}")
            self.handled += 1
            self.codes[reply.code] += 1
            if self.handled % PRUNE_EVERY == 0:
                await self._prune()
            await self._send(incoming, reply)

    def _bad_reply_topic(self, incoming: _Incoming) -> str | None:
        """Why the request's reply topic cannot be used (None: it can, or there is none).

        The station never answers into a wildcard or onto its own topics (only under
        `<root>/reply/`): a requester must not make it publish where its state lives.
        """
        topic = incoming.reply_to or _peek_reply_to(incoming.payload)
        if topic is None:
            return None
        root = self.link.topic_root + "/"
        if "+" in topic or "#" in topic or "\x00" in topic:
            return f"reply topic {topic[:80]!r} has a wildcard"
        if topic.startswith(root) and not topic.startswith(root + "reply/"):
            return f"reply topic {topic[:80]!r} is one of the station's own (use {root}reply/...)"
        return None

    async def _send(self, incoming: _Incoming, reply: CommandReply) -> None:
        reply_to = incoming.reply_to or _peek_reply_to(incoming.payload)
        level = logging.INFO if reply.ok else logging.WARNING
        _log.log(level, "cmd %s %s: %s %s", incoming.name, reply.id, reply.code, reply.message)
        if reply_to is None or self._bad_reply_topic(incoming) is not None:
            return
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if incoming.correlation is not None:
            props.CorrelationData = incoming.correlation
        try:
            await self.link.publish(reply_to, reply.model_dump_json(), qos=1, properties=props)
        except (NotConnectedError, RefusedError) as exc:
            _log.warning("reply to %s not delivered: %s", reply_to, exc)

    async def _answer(self, incoming: _Incoming) -> CommandReply:  # noqa: PLR0911 - one per check
        raw_id = _peek_id(incoming.payload)
        if len(incoming.payload) > self.config.max_payload_bytes:
            size = len(incoming.payload)
            limit = self.config.max_payload_bytes
            return _reply(raw_id, "invalid", f"payload of {size} B is over {limit} B")
        try:
            raw = json.loads(incoming.payload)
        except (ValueError, UnicodeDecodeError) as exc:
            return _reply(None, "invalid", f"not JSON: {exc}")
        if not isinstance(raw, dict):
            return _reply(None, "invalid", "the request must be a JSON object")
        model = COMMANDS.get(incoming.name) if NAME_RE.match(incoming.name) else None
        if model is None:
            known = ", ".join(COMMANDS)
            name = incoming.name[:40]
            return _reply(raw_id, "unknown_command", f"no command {name!r} (known: {known})")
        try:
            request = model.model_validate(raw)
        except ValidationError as exc:
            return _reply(raw_id, "invalid", _first_error(exc))
        first = await self._seen(incoming.name, request.id)
        if first is not None:
            return first
        why = self._stale(incoming, request)
        if why is not None:
            reply = _reply(request.id, "expired", why)
            await self._remember(incoming.name, request.id, reply)
            return reply
        if incoming.name in READ_ONLY:
            reply = await self._read_only(request)
            self._read_only_ids[request.id] = (incoming.name, reply)
            while len(self._read_only_ids) > READ_ONLY_IDS:
                self._read_only_ids.popitem(last=False)
            return reply
        await self._remember(incoming.name, request.id, None)  # before it runs
        reply = await self._run(incoming.name, request)
        await self._remember(incoming.name, request.id, reply)
        return reply

    def _stale(self, incoming: _Incoming, request: Request) -> str | None:
        now = time.monotonic()
        if incoming.expiry_s is not None and now > incoming.received + incoming.expiry_s:
            waited = now - incoming.received
            return f"message expiry interval of {incoming.expiry_s:g} s passed ({waited:.1f} s)"
        if request.expires_at is not None and datetime.now(UTC) >= request.expires_at:
            return f"expired at {request.expires_at.isoformat()}"
        undated = incoming.expiry_s is None and request.expires_at is None
        if self.config.require_expiry and undated:
            return (
                "this station runs only commands that expire: give a message expiry interval"
                " or expires_at"
            )
        return None

    async def _seen(self, name: str, ident: str) -> CommandReply | None:
        """The reply to give a repeated id, or None if the id is new."""
        remembered = self._read_only_ids.get(ident)
        if remembered is not None:
            name, earlier = remembered
        else:

            def read(conn: sqlite3.Connection) -> tuple[str, str | None] | None:
                row = conn.execute("SELECT name, reply FROM commands WHERE id = ?", (ident,))
                found = row.fetchone()
                return None if found is None else (str(found[0]), found[1])

            row = await self.journal.call(read)
            if row is None:
                return None
            first_name, body = row
            if body is None:
                return _reply(
                    ident,
                    "duplicate",
                    f"{first_name} {ident} was being handled when the station restarted; its"
                    " outcome is on the state topic and in the events",
                )
            earlier = CommandReply.model_validate_json(body)
            name = first_name
        return _reply(
            ident,
            "duplicate",
            f"already handled ({name}: {earlier.code}): {earlier.message}",
            result=earlier.result,
            ok=earlier.ok,
        )

    async def _remember(self, name: str, ident: str, reply: CommandReply | None) -> None:
        body = None if reply is None else reply.model_dump_json()

        def write(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.execute(
                    "INSERT INTO commands(id, at, name, reply) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT(id) DO UPDATE SET reply = excluded.reply",
                    (ident, time.time(), name, body),
                )

        await self.journal.call(write)

    async def _prune(self) -> None:
        horizon = time.time() - self.config.remember_ids_s

        def prune(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.execute("DELETE FROM commands WHERE at < ?", (horizon,))

        await self.journal.call(prune)

    async def _read_only(self, request: Request) -> CommandReply:
        if isinstance(request, Republish):
            if self.republish is not None:
                await self.republish()
            return _reply(request.id, "done", "retained topics published again")
        return _reply(request.id, "done", "pong", result={"at": datetime.now(UTC).isoformat()})

    async def _run(self, name: str, request: Request) -> CommandReply:
        args = request.model_dump(exclude={"id", "reply_to", "expires_at"})
        try:
            result = await self.seq.request(name, **args)
        except SwapBusyError as exc:
            return _reply(request.id, "busy", str(exc))
        except SwapRejectedError as exc:
            return _reply(request.id, "rejected", str(exc))
        code: Code = "accepted" if name in ACCEPTED else "done"
        if isinstance(request, StartSwap):
            ctx = self.seq.ctx
            info = {
                "swap_id": result,
                "reserved_slot": ctx.reserved_slot,
                "reserved_serial": ctx.reserved_serial,
                "free_slot": ctx.free_slot,
            }
            message = (
                f"swap {result} for {request.vehicle_id}: pack {ctx.reserved_serial} in slot"
                f" {ctx.reserved_slot} reserved; the vehicle's pack goes to slot {ctx.free_slot}"
            )
            return _reply(request.id, code, message, result=info)
        return _reply(request.id, code, result)


def _reply(
    ident: str | None, code: Code, message: str, *, result: Any = None, ok: bool | None = None
) -> CommandReply:
    return CommandReply(
        id=ident,
        ok=code in {"accepted", "done"} if ok is None else ok,
        code=code,
        message=message,
        result=result,
    )


def _peek(payload: bytes, key: str) -> str | None:
    """A string field of a request that may be invalid (for the reply only)."""
    try:
        raw = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    value = raw.get(key) if isinstance(raw, dict) else None
    return value if isinstance(value, str) and len(value) <= 256 else None


def _peek_id(payload: bytes) -> str | None:
    value = _peek(payload, "id") if len(payload) <= 65536 else None
    return value if value is not None and re.match(ID_PATTERN, value) else None


def _peek_reply_to(payload: bytes) -> str | None:
    value = _peek(payload, "reply_to") if len(payload) <= 65536 else None
    if value is None or not value or "+" in value or "#" in value:
        return None
    return value


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "body"
    return f"{where}: {err['msg']}"
