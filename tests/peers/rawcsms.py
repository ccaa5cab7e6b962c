"""A CSMS for the tests on raw `websockets` and `jsonschema`, written from docs/ocpp.md alone.

Unlike tests/peers/csms.py it uses none of the `ocpp` package's code: the OCPP-J framing, the
routing and the answers are written here, and every request the station sends is validated
against the official OCPP 2.1 JSON schemas (read as data from the package's folder) with a
draft-06 validator that checks `date-time` formats (RFC 3339), which the package's own
validator does not. What breaks a schema or the OCPP-J framing is kept in `violations`; the
tests assert it stays empty.

Every frame, both ways, is kept in `frames`; the station's requests in `requests`; its answers
to what the tests sent in `replies`. `call()` sends a CALL and waits for the answer to its id;
`send_raw()` sends any frame (text or bytes) as is.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.util
import itertools
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import jsonschema
from websockets.asyncio.server import Server, ServerConnection, basic_auth, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol


def _schemas() -> Path:
    """The official schemas' folder in the installed `ocpp` package (found, not imported)."""
    spec = importlib.util.find_spec("ocpp")
    assert spec is not None and spec.submodule_search_locations is not None
    return Path(next(iter(spec.submodule_search_locations))) / "v21" / "schemas"


SCHEMAS = _schemas()

# OCPP-J 2.x: the error codes of a CALLERROR.
ERROR_CODES = frozenset({
    "FormatViolation", "GenericError", "InternalError", "MessageTypeNotSupported",
    "NotImplemented", "NotSupported", "OccurrenceConstraintViolation",
    "PropertyConstraintViolation", "ProtocolError", "RpcFrameworkError", "SecurityError",
    "TypeConstraintViolation",
})  # fmt: skip

_DATE_TIME = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)


def is_date_time(value: object) -> bool:
    """RFC 3339 `date-time` (JSON Schema's format): a full date, time and offset, all valid."""
    if not isinstance(value, str):
        return True  # formats apply to strings only
    m = _DATE_TIME.match(value)
    if m is None:
        return False
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    offset = m.group(8)
    if offset not in {"Z", "z"} and (int(offset[1:3]) > 23 or int(offset[4:6]) > 59):
        return False
    try:
        datetime(year, month, day, hour, minute, min(second, 59), tzinfo=UTC)
    except ValueError:
        return False
    return second <= 60  # a leap second is RFC 3339


FORMATS = jsonschema.FormatChecker(formats=())
FORMATS.checks("date-time")(is_date_time)


@cache
def validator(name: str) -> jsonschema.Draft6Validator | None:
    """The draft-06 validator, formats checked, of an official schema (`HeartbeatRequest`)."""
    path = SCHEMAS / f"{name}.json"
    if not path.is_file():
        return None
    schema = json.loads(path.read_text())
    jsonschema.Draft6Validator.check_schema(schema)
    return jsonschema.Draft6Validator(schema, format_checker=FORMATS)


def schema_errors(name: str, payload: Any) -> list[str]:
    """What breaks the official schema `name` in `payload`: one line per error."""
    v = validator(name)
    if v is None:
        return [f"no official schema {name}"]
    return [
        f"{name}: {'/'.join(map(str, e.absolute_path)) or '<payload>'}: {e.message}"
        for e in v.iter_errors(payload)
    ]


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Frame:
    """One websocket frame: `in` from the station, `out` to it."""

    conn: int
    direction: str
    data: str | bytes
    at: float
    message: Any = None  # the parsed JSON of an `in` frame, or None


@dataclass
class StationCall:
    """A request the station sent, as it was on the wire."""

    conn: int
    id: str
    action: str
    payload: dict[str, Any]
    at: float


@dataclass
class Conn:
    """One websocket connection of the station, and its opening handshake."""

    number: int
    path: str
    authorization: str | None
    offered: str | None  # the Sec-WebSocket-Protocol header the station sent
    subprotocol: str | None = None
    ws: ServerConnection | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    close_code: int | None = None


class CallError(Exception):
    """Raised by a handler: the CSMS answers the station's request with this CALLERROR."""

    def __init__(self, code: str, description: str = "") -> None:
        super().__init__(code, description)
        self.code = code
        self.description = description


Handler = Callable[[dict[str, Any]], dict[str, Any]]


class RawCsms:
    """A CSMS on loopback for one Charging Station `identity` with a basic-auth `password`.

    `boot`: the BootNotification answers, (status, interval), one per BootNotification, the
    last one repeated. `handlers` replace the default answer of an action; `delays` hold the
    answer of an action back (seconds), to see whether the station waits for it. `agree=False`:
    a CSMS that does not agree to the subprotocol `ocpp2.1` (it names none).
    """

    def __init__(
        self,
        identity: str,
        password: str,
        *,
        path: str = "/ocpp",
        boot: list[tuple[str, int]] | None = None,
        handlers: Mapping[str, Handler] | None = None,
        delays: Mapping[str, float] | None = None,
        agree: bool = True,
    ) -> None:
        self.identity = identity
        self.password = password
        self.path = path
        self.boot = list(boot or [("Accepted", 300)])
        self.handlers: dict[str, Handler] = dict(handlers or {})
        self.delays: dict[str, float] = dict(delays or {})
        self.agree = agree
        self.frames: list[Frame] = []
        self.requests: list[StationCall] = []
        self.replies: list[list[Any]] = []  # the station's CALLRESULTs and CALLERRORs
        self.violations: list[str] = []
        self.connections: list[Conn] = []
        self.refused_logins = 0
        self.overlaps = 0  # station requests sent while one of its requests was unanswered
        self._server: Server | None = None
        self._port = 0
        self._sent_actions: dict[str, str] = {}  # our CALL id -> action
        self._unanswered: set[tuple[int, str]] = set()  # station CALLs not yet answered
        self._boots = 0
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._tick = asyncio.Event()
        self._by_ws: dict[ServerConnection, Conn] = {}

    # --- life -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The `csms_url` for the station's `[ocpp]` (the identity is appended by the station)."""
        return f"ws://127.0.0.1:{self._port}{self.path}"

    async def start(self) -> None:
        auth = basic_auth(credentials=(self.identity, self.password))

        async def process_request(ws: ServerConnection, request: Request) -> Response | None:
            return await self._handshake(ws, request, auth)

        self._server = await serve(
            self._serve,
            "127.0.0.1",
            self._port,
            subprotocols=[Subprotocol("ocpp2.1")] if self.agree else None,
            process_request=process_request,
            max_size=None,
            ping_interval=None,
        )
        self._port = next(iter(self._server.sockets)).getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _handshake(
        self,
        ws: ServerConnection,
        request: Request,
        auth: Callable[[ServerConnection, Request], Any],
    ) -> Response | None:
        headers: Headers = request.headers
        conn = Conn(
            number=len(self.connections) + 1,
            path=request.path,
            authorization=headers.get("Authorization"),
            offered=headers.get("Sec-WebSocket-Protocol"),
        )
        response: Response | None = await auth(ws, request)
        if response is not None:
            self.refused_logins += 1
            self._changed()
            return response
        if unquote(request.path.split("?")[0]) != f"{self.path}/{self.identity}":
            self.violations.append(f"handshake: path {request.path!r}")
        self.connections.append(conn)
        self._by_ws[ws] = conn
        self._changed()
        return None

    async def _serve(self, ws: ServerConnection) -> None:
        conn = self._by_ws.pop(ws)
        conn.ws = ws
        conn.subprotocol = ws.subprotocol
        self._changed()
        try:
            async for data in ws:
                self._received(conn, data)
        except ConnectionClosed:
            pass
        finally:
            conn.close_code = ws.close_code
            conn.closed.set()
            self._unanswered = {u for u in self._unanswered if u[0] != conn.number}
            self._changed()

    # --- waiting ----------------------------------------------------------------------------

    def _changed(self) -> None:
        self._tick.set()
        self._tick = asyncio.Event()

    async def wait_for(
        self,
        predicate: Callable[[], bool],
        timeout: float = 10.0,  # noqa: ASYNC109 - a deadline for a condition
        what: str = "",
    ) -> None:
        """Wait until `predicate()` holds, judged on every frame and connection change."""
        deadline = time.monotonic() + timeout
        while True:
            tick = self._tick
            if predicate():
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, 0.25)):
                    await tick.wait()

    async def wait_connections(self, n: int, timeout: float = 10.0) -> Conn:  # noqa: ASYNC109
        """The `n`th connection, once its websocket is open."""
        await self.wait_for(
            lambda: len(self.connections) >= n and self.connections[n - 1].ws is not None,
            timeout,
            f"connection {n}",
        )
        return self.connections[n - 1]

    # --- what the station sent ----------------------------------------------------------------

    def of(self, action: str, conn: int | None = None) -> list[dict[str, Any]]:
        """The payloads of the station's requests of `action` (on connection `conn`)."""
        return [
            r.payload
            for r in self.requests
            if r.action == action and (conn is None or r.conn == conn)
        ]

    def calls(self, conn: int | None = None) -> list[StationCall]:
        return [r for r in self.requests if conn is None or r.conn == conn]

    def replies_to(self, message_id: str) -> list[list[Any]]:
        return [r for r in self.replies if r[1] == message_id]

    # --- sending ------------------------------------------------------------------------------

    def _ws(self) -> tuple[Conn, ServerConnection]:
        if not self.connections or self.connections[-1].ws is None:
            raise AssertionError("the station is not connected")
        conn = self.connections[-1]
        assert conn.ws is not None
        return conn, conn.ws

    async def send_raw(self, data: str | bytes) -> None:
        """Send a frame as is: a `str` as a text frame, `bytes` as a binary one."""
        conn, ws = self._ws()
        self.frames.append(Frame(conn.number, "out", data, time.monotonic()))
        await ws.send(data)

    def new_id(self) -> str:
        return f"csms-{next(self._ids)}"

    async def call(
        self,
        action: str,
        payload: dict[str, Any],
        *,
        timeout: float = 10.0,  # noqa: ASYNC109 - a deadline for the answer
        message_id: str | None = None,
        valid: bool = True,
    ) -> list[Any]:
        """Send a CALL and return the station's answer frame ([3, ...] or [4, ...]).

        `valid`: the payload must be valid against the official request schema (so that a test
        sends bad input only on purpose).
        """
        if valid:
            errors = schema_errors(f"{action}Request", payload)
            assert not errors, errors
        mid = message_id or self.new_id()
        self._sent_actions[mid] = action
        before = len(self.replies_to(mid))
        await self.send_raw(json.dumps([2, mid, action, payload]))
        return await self.reply(mid, timeout=timeout, after=before)

    async def reply(
        self,
        message_id: str,
        *,
        timeout: float = 10.0,  # noqa: ASYNC109 - a deadline for the answer
        after: int = 0,
    ) -> list[Any]:
        """The station's next answer to `message_id` (past the first `after` of them)."""
        await self.wait_for(
            lambda: len(self.replies_to(message_id)) > after,
            timeout,
            f"the answer to {message_id}",
        )
        return self.replies_to(message_id)[after]

    async def result(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        """A CALL that must be answered with a CALLRESULT: its payload."""
        answer = await self.call(action, payload)
        assert answer[0] == 3, answer
        result: dict[str, Any] = answer[2]
        return result

    # --- receiving ----------------------------------------------------------------------------

    def _received(self, conn: Conn, data: str | bytes) -> None:
        frame = Frame(conn.number, "in", data, time.monotonic())
        self.frames.append(frame)
        self._changed()
        if isinstance(data, bytes):
            self.violations.append(f"conn {conn.number}: a binary frame: {data[:80]!r}")
            return
        try:
            message = json.loads(data)
        except ValueError:
            self.violations.append(f"conn {conn.number}: not JSON: {data[:200]}")
            return
        frame.message = message
        if not isinstance(message, list) or not message or message[0] not in {2, 3, 4}:
            self.violations.append(f"conn {conn.number}: not an OCPP-J message: {data[:200]}")
            return
        if message[0] == 2:
            self._station_call(conn, message)
        elif message[0] == 3:
            self._station_result(message)
        else:
            self._station_error(message)

    def _station_call(self, conn: Conn, message: list[Any]) -> None:
        if (
            len(message) != 4
            or not isinstance(message[1], str)
            or not isinstance(message[2], str)
            or not isinstance(message[3], dict)
        ):
            self.violations.append(f"a CALL of a bad shape: {message!r:.200}")
            return
        _, mid, action, payload = message
        if not 1 <= len(mid) <= 36:
            self.violations.append(f"{action}: message id {mid!r} is not 1-36 characters")
        if any(r.id == mid and r.conn == conn.number for r in self.requests):
            self.violations.append(f"{action}: message id {mid!r} used twice on one connection")
        if self._unanswered:
            self.overlaps += 1
            self.violations.append(
                f"{action} {mid}: sent while {sorted(self._unanswered)} was unanswered"
            )
        self.violations.extend(schema_errors(f"{action}Request", payload))
        self.requests.append(StationCall(conn.number, mid, action, payload, time.monotonic()))
        self._unanswered.add((conn.number, mid))
        task = asyncio.create_task(self._answer(conn, mid, action, payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _station_result(self, message: list[Any]) -> None:
        if len(message) != 3 or not isinstance(message[1], str) or not isinstance(message[2], dict):
            self.violations.append(f"a CALLRESULT of a bad shape: {message!r:.200}")
            return
        self.replies.append(message)
        action = self._sent_actions.get(message[1])
        if action is not None:
            self.violations.extend(schema_errors(f"{action}Response", message[2]))

    def _station_error(self, message: list[Any]) -> None:
        if (
            len(message) != 5
            or not isinstance(message[1], str)
            or not isinstance(message[2], str)
            or not isinstance(message[3], str)
            or not isinstance(message[4], dict)
        ):
            self.violations.append(f"a CALLERROR of a bad shape: {message!r:.200}")
            return
        self.replies.append(message)
        if message[2] not in ERROR_CODES:
            self.violations.append(f"CALLERROR {message[1]}: unknown error code {message[2]!r}")
        if len(message[3]) > 255 or "\n" in message[3]:
            self.violations.append(
                f"CALLERROR {message[1]}: errorDescription of {len(message[3])} characters, "
                f"not one line of at most 255: {message[3][:80]!r}"
            )

    async def _answer(self, conn: Conn, mid: str, action: str, payload: dict[str, Any]) -> None:
        delay = self.delays.get(action, 0.0)
        if delay:
            await asyncio.sleep(delay)  # holding the answer back is the point here
        handler = self.handlers.get(action) or getattr(self, f"on_{action}", None)
        frame: list[Any]
        if handler is None:
            frame = [4, mid, "NotImplemented", f"the test CSMS does not serve {action}", {}]
        else:
            try:
                result = handler(payload)
            except CallError as e:
                frame = [4, mid, e.code, e.description, {}]
            else:
                errors = schema_errors(f"{action}Response", result)
                assert not errors, f"the test CSMS's own answer is invalid: {errors}"
                frame = [3, mid, result]
        self._unanswered.discard((conn.number, mid))
        if conn.ws is None or conn.closed.is_set():
            return
        text = json.dumps(frame)
        self.frames.append(Frame(conn.number, "out", text, time.monotonic()))
        with contextlib.suppress(ConnectionClosed):
            await conn.ws.send(text)
        self._changed()

    # --- the default answers --------------------------------------------------------------------

    def on_BootNotification(self, payload: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        status, interval = self.boot[min(self._boots, len(self.boot) - 1)]
        self._boots += 1
        return {"currentTime": now(), "interval": interval, "status": status}

    def on_Heartbeat(self, payload: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        return {"currentTime": now()}

    def on_StatusNotification(self, payload: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        return {}

    def on_TransactionEvent(self, payload: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        return {}

    def on_BatterySwap(self, payload: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        return {}

    def on_Authorize(self, payload: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        return {"idTokenInfo": {"status": "Accepted"}}


def basic(identity: str, password: str) -> str:
    """The Authorization header the docs promise: `Basic base64(identity:password)`."""
    return "Basic " + base64.b64encode(f"{identity}:{password}".encode()).decode()
