"""`swapctl cmd NAME key=value ...`: one command to a station, MQTT v5 request/response.

The arguments are checked against the command's own model (controller/mqtt/commands.py) before
anything is sent, and typed by it (`slot=3 enabled=false` becomes an int and a bool). The
request carries a fresh id (or `--id`), `expires_at` and a Message Expiry Interval of the
timeout, so a request that arrives after swapctl gave up never runs. Exit codes: 0 the reply
is ok, 1 it is not, 2 a usage error, 3 no reply within the timeout (broker unreachable too).

Also the MQTT side shared with `swapctl status`: where a station is (`Remote`) and a client
for its broker (`remote_client`).
"""

from __future__ import annotations

import asyncio
import enum
import getpass
import json
import math
import socket
import sys
import time
import types
import typing
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import BaseModel, ValidationError

from controller.config.model import NAME_RE, MqttConfig, StationConfig
from controller.errors import NoReplyError, UsageError
from controller.mqtt.commands import COMMANDS, Request
from controller.mqtt.link import tls_context

EXIT_NOT_OK = 1
EXIT_USAGE = 2
EXIT_NO_REPLY = 3
SET_BY_SWAPCTL = frozenset({"id", "reply_to", "expires_at"})
BASE_FIELDS = frozenset(Request.model_fields)


@dataclass(frozen=True, slots=True)
class Remote:
    """A station as seen from its broker: how to connect, and its topic root."""

    mqtt: MqttConfig
    station_id: str
    topic_root: str


def remote_target(
    config: StationConfig,
    *,
    host: str | None = None,
    port: int | None = None,
    station: str | None = None,
) -> Remote:
    """The station of `config`, with the command line's overrides."""
    update: dict[str, Any] = {}
    if host is not None:
        update["host"] = host
    if port is not None:
        if not 1 <= port <= 65535:
            raise UsageError(f"--port {port}: must be 1-65535")
        update["port"] = port
    mqtt = config.mqtt.model_copy(update=update)
    station_id = config.station_id if station is None else station
    if not NAME_RE.match(station_id):
        raise UsageError(f"--station {station_id!r}: not a station id")
    return Remote(mqtt, station_id, f"{mqtt.topic_prefix}/{station_id}")


def remote_client(remote: Remote, timeout_s: float) -> aiomqtt.Client:
    """A v5 client of the station's broker, TLS and credentials as the daemon has them.

    Its client id is its own (never the daemon's, which the broker would disconnect).
    """
    cfg = remote.mqtt
    client = aiomqtt.Client(
        cfg.host,
        cfg.port,
        identifier=f"swapctl-{uuid.uuid4().hex[:12]}",
        username=cfg.username,
        password=cfg.password.get_secret_value() if cfg.password else None,
        protocol=aiomqtt.ProtocolVersion.V5,
        keepalive=cfg.keepalive_s,
        timeout=timeout_s,
        tls_context=tls_context(cfg),
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
    )
    # paho's TCP connect runs in a thread that asyncio.run waits for on exit: bound it by the
    # deadline too, or an unreachable host holds swapctl for paho's default 5 s.
    client._client.connect_timeout = timeout_s  # noqa: SLF001 - paho's public setting
    return client


def broker_name(remote: Remote) -> str:
    """`host:port` of the broker, for messages."""
    return f"{remote.mqtt.host}:{remote.mqtt.port}"


# --- the request ------------------------------------------------------------------------------


def build_request(
    name: str,
    assignments: Sequence[str],
    *,
    ident: str,
    expires_at: datetime,
    by: str | None,
) -> dict[str, Any]:
    """The JSON body of command `name` from `key=value` words; `UsageError` if it is wrong."""
    model = COMMANDS.get(name)
    if model is None:
        known = "; ".join(f"{n} {usage(m)}".strip() for n, m in COMMANDS.items())
        raise UsageError(f"unknown command {name!r} (known: {known})")
    given: dict[str, str] = {}
    for word in assignments:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise UsageError(f"{word!r}: arguments are written key=value")
        if key in SET_BY_SWAPCTL:
            raise UsageError(f"{key} is set by swapctl (use --id and --timeout)")
        if key not in model.model_fields:
            takes = usage(model) or "no arguments"
            raise UsageError(f"{name} has no argument {key!r}; it takes {takes}")
        if key in given:
            raise UsageError(f"{key} is given twice")
        given[key] = value
    body: dict[str, Any] = {"id": ident, "expires_at": expires_at, **given}
    if by is not None and "by" not in given:
        body["by"] = by
    request = _validate(model, body, given, name)
    return request.model_dump(mode="json", exclude_none=True)


def _validate(
    model: type[Request], body: dict[str, Any], given: dict[str, str], name: str
) -> Request:
    """Validate, letting the model type plain words; a word it refuses is tried as JSON."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        retry = dict(body)
        for err in exc.errors():
            key = str(err["loc"][0]) if err["loc"] else ""
            if key in given:
                try:
                    retry[key] = json.loads(given[key])
                except ValueError:
                    continue
        if retry != body:
            try:
                return model.model_validate(retry)
            except ValidationError as again:
                exc = again
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "body"
        if key == "id":
            key = "--id"
        got = f" (got {given[key]!r})" if key in given else ""
        raise UsageError(f"{name} {key}: {err['msg']}{got}; {name} takes {usage(model)}") from None


def usage(model: type[BaseModel]) -> str:
    """`key=TYPE` for each argument of a command, optional ones in brackets."""
    words = []
    for key, field in model.model_fields.items():
        if key in BASE_FIELDS:
            continue
        word = f"{key}={_type_word(field.annotation)}"
        words.append(word if field.is_required() else f"[{word}]")
    return " ".join(words)


def _type_word(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin is typing.Literal:
        return "|".join(str(a) for a in args)
    if origin in {typing.Union, types.UnionType} and len(args) == 1:
        return _type_word(args[0])
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "|".join(str(m.value) for m in annotation)
    words = {bool: "true|false", int: "INT", float: "NUMBER", str: "TEXT"}
    return words.get(annotation, "JSON")


def default_by() -> str | None:
    """Who asks: `user@host`, kept in the swap record's operator actions."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no user name in this environment
        return None
    return f"{user}@{socket.gethostname()}"[:64]


# --- sending ----------------------------------------------------------------------------------


async def request_reply(
    remote: Remote,
    name: str,
    body: dict[str, Any],
    timeout_s: float,
) -> bytes:
    """Send the request, return the reply's payload; `NoReplyError` when none came in time."""
    deadline = time.monotonic() + timeout_s
    correlation = uuid.uuid4().bytes
    client = remote_client(remote, timeout_s)
    # docs/security.md: replies go under the answering station's tree, to the asker's username.
    asker = remote.mqtt.username or "swapctl"
    reply_topic = f"{remote.topic_root}/reply/{asker}/{client.identifier}"
    try:
        async with asyncio.timeout(timeout_s):
            async with client:
                granted = await client.subscribe(reply_topic, qos=1, timeout=_left(deadline))
                if any(getattr(g, "is_failure", False) for g in granted):
                    raise NoReplyError(
                        f"the broker refused the subscription to {reply_topic}: {granted[0]}"
                    )
                props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                props.ResponseTopic = reply_topic
                props.CorrelationData = correlation
                props.MessageExpiryInterval = max(1, math.ceil(timeout_s))
                await client.publish(
                    f"{remote.topic_root}/cmd/{name}",
                    json.dumps(body),
                    qos=1,
                    properties=props,
                    timeout=_left(deadline),
                )
                # Its own deadline: a cancellation swallowed by aiomqtt's wait_for (Python
                # 3.11) must not leave this loop waiting for ever.
                async with asyncio.timeout(_left(deadline)):
                    async for message in client.messages:
                        got = getattr(message.properties, "CorrelationData", None)
                        if message.topic.matches(reply_topic) and got == correlation:
                            return bytes(message.payload)
    except TimeoutError:
        raise NoReplyError(
            f"no reply from {remote.topic_root} within {timeout_s:g} s (is the daemon running"
            " and connected to the broker?)"
        ) from None
    except aiomqtt.MqttError as exc:
        raise NoReplyError(f"broker {broker_name(remote)}: {exc}") from exc
    raise NoReplyError(f"the connection to {broker_name(remote)} ended before the reply")


def _left(deadline: float) -> float:
    return max(0.01, deadline - time.monotonic())


def format_reply(reply: dict[str, Any]) -> str:
    """One line: `code: message`, and the result when there is one."""
    line = f"{reply.get('code', '?')}: {reply.get('message', '')}"
    result = reply.get("result")
    if result is not None:
        line += f" {json.dumps(result, separators=(', ', ': '))}"
    return line


async def cmd_command(
    remote: Remote,
    name: str,
    assignments: Sequence[str],
    *,
    ident: str | None,
    timeout_s: float,
    as_json: bool,
) -> int:
    """Run `swapctl cmd`: send, print the reply, return the exit code."""
    if not 0 < timeout_s <= 3600:
        sys.stderr.write(f"swapctl cmd: --timeout {timeout_s:g}: must be in (0, 3600] s\n")
        return EXIT_USAGE
    expires_at = datetime.now(UTC) + timedelta(seconds=timeout_s)
    try:
        body = build_request(
            name,
            assignments,
            ident=ident or str(uuid.uuid4()),
            expires_at=expires_at,
            by=default_by(),
        )
    except UsageError as exc:
        sys.stderr.write(f"swapctl cmd: {exc}\n")
        return EXIT_USAGE
    try:
        raw = await request_reply(remote, name, body, timeout_s)
    except NoReplyError as exc:
        sys.stderr.write(f"swapctl cmd {name}: {exc}\n")
        return EXIT_NO_REPLY
    try:
        reply = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        reply = None
    if not isinstance(reply, dict):
        sys.stderr.write(f"swapctl cmd {name}: the reply is not a JSON object: {raw[:200]!r}\n")
        return EXIT_NOT_OK
    if as_json:
        sys.stdout.write(json.dumps(reply) + "\n")
    else:
        sys.stdout.write(format_reply(reply) + "\n")
    return 0 if reply.get("ok") is True else EXIT_NOT_OK
