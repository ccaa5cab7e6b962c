"""A CSMS for the tests, written from docs/ocpp.md on the `ocpp` package's own server side.

It is the package's `ChargePoint` routing (`@on` handlers, its camelCase conversion, its
schema validation of what the station sends) over a real `websockets` server on loopback,
with basic auth and, optionally, TLS. Every frame the station sends is also kept raw, so that a
test reads what was on the wire (e.g. `soC`, not `SoC`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ocpp.exceptions import InternalError
from ocpp.routing import on
from ocpp.v21 import ChargePoint, call_result
from websockets.asyncio.server import Server, ServerConnection, basic_auth, serve


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class Seen:
    """A request the station sent: its action and its payload as it was on the wire."""

    action: str
    payload: dict[str, Any]


class _Recorder:
    """The connection as the library sees it, keeping every frame the station sends."""

    def __init__(self, ws: ServerConnection, csms: Csms) -> None:
        self._ws = ws
        self._csms = csms

    async def recv(self) -> str:
        raw = await self._ws.recv()
        text = raw if isinstance(raw, str) else raw.decode()
        self._csms.frames.append(text)
        message = json.loads(text)
        if message[0] == 2:
            self._csms.seen.append(Seen(message[2], message[3]))
            self._csms.arrived.set()
        elif message[0] in {3, 4}:
            self._csms.answers.append(message)
            self._csms.arrived.set()
        return text

    async def send(self, text: str) -> None:
        await self._ws.send(text)


class _Station(ChargePoint):  # type: ignore[misc]
    """The CSMS's side of one charging station."""

    csms: Csms

    @on("BootNotification")  # type: ignore[untyped-decorator]
    def on_boot(self, **_: Any) -> Any:
        status = self.csms.boot_status
        interval = self.csms.heartbeat_s if status == "Accepted" else 1
        return call_result.BootNotification(current_time=_now(), interval=interval, status=status)

    @on("Heartbeat")  # type: ignore[untyped-decorator]
    def on_heartbeat(self, **_: Any) -> Any:
        return call_result.Heartbeat(current_time=_now())

    @on("StatusNotification")  # type: ignore[untyped-decorator]
    def on_status(self, **_: Any) -> Any:
        return call_result.StatusNotification()

    @on("TransactionEvent")  # type: ignore[untyped-decorator]
    def on_transaction(self, **_: Any) -> Any:
        return call_result.TransactionEvent()

    @on("BatterySwap")  # type: ignore[untyped-decorator]
    def on_battery_swap(self, **_: Any) -> Any:
        if self.csms.refuse_swaps and self.csms.refuse_swaps.pop(0):
            raise InternalError(description="refused by the test")
        return call_result.BatterySwap()

    @on("LogStatusNotification")  # type: ignore[untyped-decorator]
    def on_log_status(self, **_: Any) -> Any:
        return call_result.LogStatusNotification()

    @on("Authorize")  # type: ignore[untyped-decorator]
    def on_authorize(self, id_token: dict[str, Any], **_: Any) -> Any:
        status = "Accepted" if id_token["id_token"] in self.csms.authorized else "Invalid"
        return call_result.Authorize(id_token_info={"status": status})


@dataclass
class Csms:
    """A CSMS on a free loopback port; `identity` must log in with `password`."""

    identity: str
    password: str
    tls: ssl.SSLContext | None = None
    heartbeat_s: int = 300
    authorized: set[str] = field(default_factory=set)
    boot_status: str = "Accepted"  # what BootNotification is answered
    # The answers to the next BatterySwap requests: True refuses one (a CALLERROR).
    refuse_swaps: list[bool] = field(default_factory=list)
    port: int = 0
    seen: list[Seen] = field(default_factory=list)
    frames: list[str] = field(default_factory=list)
    answers: list[list[Any]] = field(default_factory=list)
    connections: int = 0
    refused_logins: int = 0
    station: _Station | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    _server: Server | None = None
    _ws: ServerConnection | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://127.0.0.1:{self.port}/ocpp"

    def _check(self, user: str, password: str) -> bool:
        ok = user == self.identity and password == self.password
        self.refused_logins += not ok
        return ok

    async def start(self) -> None:
        """Listen (on the same port again after a `stop`)."""
        self._server = await serve(
            self._handle,
            "127.0.0.1",
            self.port,
            subprotocols=["ocpp2.1"],  # type: ignore[list-item]
            process_request=basic_auth(realm="csms", check_credentials=self._check),
            ssl=self.tls,
        )
        if not self.port:
            self.port = next(iter(self._server.sockets)).getsockname()[1]

    async def stop(self) -> None:
        """Go away: the listener and the station's connection."""
        self.connected.clear()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        self._server = None

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        if ws.request.path.rstrip("/").rsplit("/", 1)[-1] != self.identity:
            await ws.close(1008, "unknown identity")
            return
        self.connections += 1
        station = _Station(self.identity, _Recorder(ws, self), response_timeout=10)
        station.csms = self
        self.station = station
        self._ws = ws
        self.connected.set()
        with contextlib.suppress(Exception):
            await station.start()

    async def send_raw(self, text: str) -> None:
        """A frame as it is, for the tests of bad input."""
        assert self._ws is not None
        await self._ws.send(text)

    async def call(self, payload: Any) -> Any:
        """A request through the library (its dataclasses, its validation)."""
        assert self.station is not None
        return await self.station.call(payload, suppress=False)

    def of(self, action: str) -> list[dict[str, Any]]:
        """The payloads of the requests of `action` the station sent, in order."""
        return [s.payload for s in self.seen if s.action == action]

    async def wait_for(
        self,
        predicate: Any,
        timeout: float = 10.0,  # noqa: ASYNC109 - a deadline for what the station sends
        what: str = "",
    ) -> None:
        """Until `predicate()` holds, woken by every frame the station sends."""
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    self.arrived.clear()
                    if predicate():
                        return
                    # Woken by a frame; looked at again at least every 0.2 s for the rest.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.2):
                            await self.arrived.wait()
        except TimeoutError:
            raise AssertionError(f"CSMS: timed out after {timeout} s waiting for {what}") from None
