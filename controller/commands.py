"""Remote commands over MQTT: `<root>/cmd/<name>` requests, each answered.

A request is a JSON object with a client-chosen `id` and the command's arguments. The reply
goes to the MQTT v5 Response Topic with the request's Correlation Data, or (MQTT 3.1.1) to the
topic named in `reply_to`: `{"id", "ok", "code", "message", "result"}`. A request that cannot
be parsed, names an unknown command or lacks an argument is answered `invalid` /
`unknown_command` and harms nothing; one not allowed in the current state is answered
`rejected` with the reason. docs/mqtt-api.md documents every command.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Literal

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from controller.mqttlink import MqttLink, NotConnectedError, RefusedError
from controller.sequencer import Mode, Sequencer, SwapRejectedError

_log = logging.getLogger(__name__)

MAX_PAYLOAD = 16 * 1024
Code = Literal["done", "invalid", "unknown_command", "rejected", "error"]


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=128)
    reply_to: str | None = Field(default=None, min_length=1, max_length=512)
    by: str | None = Field(default=None, max_length=128)  # who asks (for the swap record)


class StartSwap(_Args):
    """Authorise a swap for a vehicle: a charged pack of its type is reserved."""

    vehicle_id: str = Field(min_length=1, max_length=16)
    pack_type: str = Field(min_length=1, max_length=32)


class Abort(_Args):
    """Abort the swap: before anything moved it is cancelled; later, made safe first."""

    reason: str | None = Field(default=None, max_length=256)


class ResetFault(_Args):
    """After a fault or an E-stop: make the vehicle safe (it gets a locked pack back)."""


class Recover(_Args):
    """After `recovery_required`: the operator's decision."""

    decision: Literal["resume", "abort", "clear"]


class SetMode(_Args):
    """Auto (swaps allowed), maintenance or out of service (new swaps refused)."""

    mode: Mode


class Ping(_Args):
    """Answered `done` at once."""


COMMANDS: dict[str, type[_Args]] = {
    "start_swap": StartSwap,
    "abort": Abort,
    "reset_fault": ResetFault,
    "recover": Recover,
    "set_mode": SetMode,
    "ping": Ping,
}


class CommandReply(BaseModel):
    """The answer to a request."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str | None
    ok: bool
    code: Code
    message: str
    result: Any = None


class CommandServer:
    """Takes requests from `<root>/cmd/+`, runs them one by one, answers each."""

    def __init__(self, link: MqttLink, seq: Sequencer) -> None:
        self.link = link
        self.seq = seq
        self.prefix = f"{link.topic_root}/cmd/"
        self.handled = 0
        self._queue: asyncio.Queue[aiomqtt.Message] = asyncio.Queue(maxsize=100)
        link.route(f"{self.prefix}+", self._on_message)

    def _on_message(self, message: aiomqtt.Message) -> None:
        try:
            self._queue.put_nowait(message)
        except asyncio.QueueFull:
            _log.warning("command queue full: request on %s dropped", message.topic)

    async def run(self) -> None:
        """Answer requests in order, for ever."""
        while True:
            message = await self._queue.get()
            reply_to, correlation, reply = await self._answer(message)
            self.handled += 1
            if reply_to is None:
                _log.info("no reply topic for %s: %s", message.topic, reply.message)
                continue
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if correlation is not None:
                props.CorrelationData = correlation
            try:
                await self.link.publish(reply_to, reply.model_dump_json(), qos=1, properties=props)
            except (NotConnectedError, RefusedError) as exc:
                _log.warning("reply to %s not delivered: %s", reply_to, exc)

    async def _answer(
        self, message: aiomqtt.Message
    ) -> tuple[str | None, bytes | None, CommandReply]:
        props = message.properties
        reply_to = getattr(props, "ResponseTopic", None) if props is not None else None
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        name = str(message.topic)[len(self.prefix) :]
        payload = message.payload
        raw: Any = None
        if not isinstance(payload, bytes | bytearray) or len(payload) > MAX_PAYLOAD:
            return reply_to, correlation, _reply(None, "invalid", f"payload over {MAX_PAYLOAD} B")
        try:
            raw = json.loads(payload)
        except (ValueError, UnicodeDecodeError) as exc:
            return reply_to, correlation, _reply(None, "invalid", f"not JSON: {exc}")
        if not isinstance(raw, dict):
            return reply_to, correlation, _reply(None, "invalid", "the body must be an object")
        ident = raw.get("id") if isinstance(raw.get("id"), str) else None
        if reply_to is None and isinstance(raw.get("reply_to"), str):
            reply_to = raw["reply_to"]
        model = COMMANDS.get(name)
        if model is None:
            known = ", ".join(COMMANDS)
            return reply_to, correlation, _reply(ident, "unknown_command", f"{name!r}: {known}")
        try:
            args = model.model_validate(raw)
        except ValidationError as exc:
            return reply_to, correlation, _reply(ident, "invalid", _first_error(exc))
        return reply_to, correlation, await self._run(name, args)

    async def _run(self, name: str, args: _Args) -> CommandReply:
        if isinstance(args, Ping):
            return _reply(args.id, "done", "pong")
        fields = args.model_dump(exclude={"id", "reply_to"})
        try:
            result = await self.seq.request(name, **fields)
        except SwapRejectedError as exc:
            return _reply(args.id, "rejected", str(exc))
        except Exception as exc:  # noqa: BLE001 - the requester learns; the daemon goes on
            _log.exception("command %s failed", name)
            return _reply(args.id, "error", f"{type(exc).__name__}: {exc}")
        return _reply(args.id, "done", result, result=result)


def _reply(ident: str | None, code: Code, message: str, *, result: Any = None) -> CommandReply:
    return CommandReply(id=ident, ok=code == "done", code=code, message=message, result=result)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "body"
    return f"{where}: {err['msg']}"
