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
import logging
import re
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import from_json

from controller.charging import requests as power
from controller.charging.gridcmds import GridCommands
from controller.config.model import CommandsConfig
from controller.errors import BrokerRefusedError, BusyError, NotConnectedError, RefusedError
from controller.jsontext import depth as json_depth
from controller.mqtt.link import MqttLink
from controller.store.journal import Journal, transaction
from controller.swap import requests as swap
from controller.swap.sequencer import Sequencer
from drivers import clock as clocks

_log = logging.getLogger(__name__)

QUEUE_SIZE = 64
PRUNE_EVERY = 500  # commands between two prunings of remembered ids
READ_ONLY_IDS = 4096  # ids of read-only commands remembered in memory
ID_PATTERN = r"^[A-Za-z0-9._:@/+-]{1,64}$"
ID_RE = re.compile(ID_PATTERN)
NAME_RE = re.compile(r"^[a-z_]{1,32}$")
MAX_DEPTH = 8  # nesting of a request's JSON: a command needs 1; deeper is refused unread
MAX_TOPIC = 256
RESERVED_BY = "ocpp:"  # a swap the CSMS asked for (controller/ocpp/swaps.py): not for MQTT
RESERVED_SOURCE = "ocpp"  # the CSMS's charging profiles' power limit (controller/ocpp/profiles.py)
PEEK_BYTES = 65536  # an oversized request up to this is still read for its id (the reply's)

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


class StartSwap(swap.StartSwap, Request):
    """Authorise a swap: the best charged pack of the type is reserved, and a free slot."""


class Abort(swap.Abort, Request):
    """Abort the swap: before anything moved it is cancelled; later, made safe first."""


class ResetFault(swap.ResetFault, Request):
    """After a fault or a released E-stop: reset the robot, make the vehicle safe."""


class Recover(swap.Recover, Request):
    """After `recovery_required`: the operator's decision."""


class SetMode(swap.SetMode, Request):
    """`auto` (swaps allowed), `maintenance` or `out_of_service` (new swaps refused)."""


class SetSlot(swap.SetSlot, Request):
    """Take a slot out of service (`enabled: false`) or back; kept across restarts."""


class SetPowerLimit(power.SetPowerLimit, Request):
    """Limit the station's charging power from a source until lifted, or for a while."""


class ClearPowerLimit(power.ClearPowerLimit, Request):
    """Lift the limit of a source set at run time."""


class SetTariff(power.SetTariff, Request):
    """Day-ahead prices over the configured time-of-use schedule."""


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
    "set_power_limit": SetPowerLimit,
    "clear_power_limit": ClearPowerLimit,
    "set_tariff": SetTariff,
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
        grid: GridCommands | None = None,
    ) -> None:
        self.link = link
        self.seq = seq
        self.grid = grid
        self.journal = journal
        self.config = config
        self.republish = republish
        # Asked before a swap runs (OCPP's Authorize, when configured): None, or why not.
        self.authorize: Callable[[str], Awaitable[str | None]] | None = None
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
        try:
            self._arrived(message)
        except Exception:  # noqa: BLE001 - the link's reader must go on whatever arrives
            _log.exception("a request on %s could not be queued", str(message.topic)[:120])

    def _arrived(self, message: aiomqtt.Message) -> None:
        props = message.properties
        expiry = getattr(props, "MessageExpiryInterval", None) if props is not None else None
        payload = message.payload if isinstance(message.payload, bytes | bytearray) else b""
        incoming = _Incoming(
            name=str(message.topic)[len(self.prefix) :],
            payload=bytes(payload),
            reply_to=getattr(props, "ResponseTopic", None) if props is not None else None,
            correlation=getattr(props, "CorrelationData", None) if props is not None else None,
            received=clocks.monotonic(),
            expiry_s=float(expiry) if expiry is not None else None,
        )
        try:
            self._queue.put_nowait(incoming)
        except asyncio.QueueFull:
            request = _read(incoming.payload, self.config.max_payload_bytes)
            if self._bad_reply_topic(incoming, request) is None:
                reply = _reply(request.ident, "busy", "too many requests queued")
                self._spawn(self._send(incoming, request, reply))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    # --- handling, in order ---------------------------------------------------------------------

    async def run(self) -> None:
        """Answer requests in order, for ever: nothing a request carries ends this task."""
        while True:
            incoming = await self._queue.get()
            try:
                await self._handle(incoming)
            except Exception:  # noqa: BLE001 - a request must never end the command task
                _log.exception("command %r: handling failed", incoming.name[:40])

    async def _handle(self, incoming: _Incoming) -> None:
        request = _read(incoming.payload, self.config.max_payload_bytes)
        refused = self._bad_reply_topic(incoming, request)
        if refused is not None:
            # Nowhere to answer: the request is not run (docs/security.md, reply topics).
            _log.warning("cmd %s not run: %s", incoming.name[:40], refused)
            self.handled += 1
            self.codes["invalid"] += 1
            return
        try:
            reply = await self._answer(incoming, request)
        except Exception as exc:  # noqa: BLE001 - the requester learns; the daemon goes on
            _log.exception("command %s failed", incoming.name[:40])
            reply = _reply(request.ident, "error", f"{type(exc).__name__}")
        self.handled += 1
        self.codes[reply.code] += 1
        if self.handled % PRUNE_EVERY == 0:
            await self._prune()
        await self._send(incoming, request, reply)

    def _bad_reply_topic(self, incoming: _Incoming, request: _Read) -> str | None:
        """Why the request's reply topic cannot be used (None: it can, or there is none).

        The Response Topic (v5) wins over `reply_to`; whichever is used must be a topic name
        (a string of 1-256 characters, no wildcard, no NUL), and the station never answers
        onto its own topics but under `<root>/reply/`: a requester must not make it publish
        where its state lives. A `reply_to` that is not a string is refused the same way.
        """
        if incoming.reply_to is not None:
            topic: object = incoming.reply_to
        elif request.has_reply_to:
            topic = request.reply_to
        else:
            return None
        if not isinstance(topic, str) or not 1 <= len(topic) <= MAX_TOPIC:
            return f"reply topic {str(topic)[:80]!r} is not a topic name"
        root = self.link.topic_root + "/"
        if "+" in topic or "#" in topic or "\x00" in topic:
            return f"reply topic {topic[:80]!r} has a wildcard"
        if topic.startswith(root) and not topic.startswith(root + "reply/"):
            return f"reply topic {topic[:80]!r} is one of the station's own (use {root}reply/...)"
        return None

    async def _send(self, incoming: _Incoming, request: _Read, reply: CommandReply) -> None:
        reply_to = incoming.reply_to or request.reply_to
        level = logging.INFO if reply.ok else logging.WARNING
        _log.log(level, "cmd %s %s: %s %s", incoming.name[:40], reply.id, reply.code, reply.message)
        if not isinstance(reply_to, str) or self._bad_reply_topic(incoming, request) is not None:
            return
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if incoming.correlation is not None:
            props.CorrelationData = incoming.correlation
        try:
            await self.link.publish(reply_to, reply.model_dump_json(), qos=1, properties=props)
        except (NotConnectedError, BrokerRefusedError) as exc:
            _log.warning("reply to %s not delivered: %s", reply_to, exc)

    async def _answer(  # noqa: PLR0911 - one return per outcome, in order
        self, incoming: _Incoming, read: _Read
    ) -> CommandReply:
        """The reply to a request, running it when it is valid, new and in time."""
        if read.problem is not None:
            return _reply(read.ident, "invalid", read.problem)
        model = COMMANDS.get(incoming.name) if NAME_RE.match(incoming.name) else None
        if model is None:
            known = ", ".join(COMMANDS)
            name = incoming.name[:40]
            return _reply(read.ident, "unknown_command", f"no command {name!r} (known: {known})")
        try:
            # Strict: a string is not a number, 0 is not false, a number is not a date.
            request = model.model_validate_json(read.text, strict=True)
        except ValidationError as exc:
            return _reply(read.ident, "invalid", _first_error(exc))
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
        reply = await self._run(incoming.name, request.id, request)
        await self._remember(incoming.name, request.id, reply)
        return reply

    def _stale(self, incoming: _Incoming, request: Request) -> str | None:
        now = clocks.monotonic()
        if incoming.expiry_s is not None and now > incoming.received + incoming.expiry_s:
            waited = now - incoming.received
            return f"message expiry interval of {incoming.expiry_s:g} s passed ({waited:.1f} s)"
        if request.expires_at is not None and clocks.utcnow() >= request.expires_at:
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
                    (ident, clocks.wall(), name, body),
                )

        await self.journal.call(write)

    async def _prune(self) -> None:
        horizon = clocks.wall() - self.config.remember_ids_s

        def prune(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.execute("DELETE FROM commands WHERE at < ?", (horizon,))

        await self.journal.call(prune)

    async def _read_only(self, request: Request) -> CommandReply:
        if isinstance(request, Republish):
            if self.republish is not None:
                await self.republish()
            return _reply(request.id, "done", "retained topics published again")
        return _reply(request.id, "done", "pong", result={"at": clocks.utcnow().isoformat()})

    async def _run(self, name: str, ident: str, request: BaseModel) -> CommandReply:
        """Hand a request to the swap or the power management (by its type); answer its outcome."""
        outcome: swap.Outcome | power.Outcome
        reserved = _reserved(request)
        if reserved is not None:
            return _reply(ident, "invalid", reserved)
        try:
            if isinstance(request, power.PowerRequest) and self.grid is not None:
                outcome = await self.grid.submit(request)
            elif isinstance(request, swap.SwapRequest):
                if isinstance(request, swap.StartSwap) and self.authorize is not None:
                    why = await self.authorize(request.vehicle_id)
                    if why is not None:
                        return _reply(ident, "rejected", f"not authorised: {why}")
                outcome = await self.seq.submit(request)
            else:
                return _reply(ident, "unknown_command", f"{name} is not served here")
        except BusyError as exc:
            return _reply(ident, "busy", str(exc))
        except RefusedError as exc:
            return _reply(ident, "rejected", str(exc))
        code: Code = "accepted" if name in ACCEPTED else "done"
        result = dict(outcome.result) if outcome.result is not None else None
        return _reply(ident, code, outcome.message, result=result)


def _reserved(request: BaseModel) -> str | None:
    """What of the request only the OCPP side may say (the CSMS's own), or None."""
    if isinstance(request, power.SetPowerLimit | power.ClearPowerLimit):
        if request.source == RESERVED_SOURCE:
            return f"source: {RESERVED_SOURCE!r} is the CSMS's"
    elif isinstance(request, swap.SwapRequest) and (request.by or "").startswith(RESERVED_BY):
        return f"by: {RESERVED_BY!r} is the station's own"
    return None


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


@dataclass(frozen=True, slots=True)
class _Read:
    """A request's bytes, read once: strictly, within bounds, never raising."""

    text: str = ""  # the payload as UTF-8 text, when it is a JSON object within bounds
    problem: str | None = None  # why it cannot be read (answered `invalid`)
    ident: str | None = None  # its id, if one can be read (for the reply)
    has_reply_to: bool = False
    reply_to: object = None  # the `reply_to` field as sent, any JSON type


def _read(payload: bytes, max_bytes: int) -> _Read:
    """Decode as UTF-8, bound size and depth before parsing, parse once; never raises."""
    if len(payload) > max(max_bytes, PEEK_BYTES):
        return _Read(problem=f"payload of {len(payload)} B is over {max_bytes} B")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _Read(problem=f"not UTF-8 (bad byte at offset {exc.start})")
    depth = json_depth(text)
    if depth > MAX_DEPTH:
        return _Read(problem=f"nested {depth} levels deep (at most {MAX_DEPTH})")
    try:
        raw = from_json(text)
    except ValueError as exc:
        return _Read(problem=f"not JSON: {str(exc)[:120]}")
    if not isinstance(raw, dict):
        return _Read(problem="the request must be a JSON object")
    ident = raw.get("id")
    return _Read(
        text=text,
        # Too big to run, small enough to read its id and reply topic for the answer.
        problem=f"payload of {len(payload)} B is over {max_bytes} B"
        if len(payload) > max_bytes
        else None,
        ident=ident if isinstance(ident, str) and ID_RE.match(ident) else None,
        has_reply_to="reply_to" in raw,
        reply_to=raw.get("reply_to"),
    )


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "body"
    return f"{where}: {err['msg']}"
