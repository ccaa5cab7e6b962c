"""A simulated CSMS for `swapctl demo --ocpp`: an operator's back office, as OCPP 2.1 sees it.

Built on the `ocpp` package's server side (its `ChargePoint` routing and schema validation)
over a `websockets` server on loopback, with basic auth. It accepts the station's boot, answers
everything the station reports, asks for the station's swap order once it is booted, and hands
every frame, both ways, to `say` as one line.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ocpp.routing import after, on
from ocpp.v21 import ChargePoint, call, call_result
from websockets.asyncio.server import Server, ServerConnection, basic_auth, serve

LINE_MAX = 150


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def describe(direction: str, text: str) -> str:
    """One frame as a line: who sent it, its action (or answer), its payload, shortened."""
    try:
        frame = json.loads(text)
        kind = frame[0]
        if kind == 2:
            body = f"{frame[2]} {json.dumps(frame[3], separators=(',', ':'))}"
        elif kind == 3:
            body = f"result {json.dumps(frame[2], separators=(',', ':'))}"
        else:
            body = f"error {frame[2]}: {frame[3]}"
    except (ValueError, IndexError, KeyError, TypeError):
        body = text
    line = f"OCPP {direction} {body}"
    return line if len(line) <= LINE_MAX else line[: LINE_MAX - 3] + "..."


class _Wire:
    """The connection as the library sees it, every frame told."""

    def __init__(self, ws: ServerConnection, say: Callable[[str], None]) -> None:
        self._ws = ws
        self._say = say

    async def recv(self) -> str:
        raw = await self._ws.recv()
        text = raw if isinstance(raw, str) else raw.decode()
        self._say(describe("station>", text))
        return text

    async def send(self, text: str) -> None:
        self._say(describe("<csms", text))
        await self._ws.send(text)


class _Station(ChargePoint):  # type: ignore[misc]
    @on("BootNotification")  # type: ignore[untyped-decorator]
    def on_boot(self, **_: Any) -> Any:
        return call_result.BootNotification(current_time=_now(), interval=60, status="Accepted")

    @after("BootNotification")  # type: ignore[untyped-decorator]
    async def after_boot(self, **_: Any) -> None:
        await self.call(
            call.GetVariables(
                get_variable_data=[
                    {"component": {"name": "BatterySwapCtrlr"}, "variable": {"name": name}}
                    for name in ("DispenseOrder", "MinDispenseSoC")
                ]
            )
        )

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
        return call_result.BatterySwap()

    @on("Authorize")  # type: ignore[untyped-decorator]
    def on_authorize(self, **_: Any) -> Any:
        return call_result.Authorize(id_token_info={"status": "Accepted"})


class SimCsms:
    """The demo's CSMS on a free loopback port."""

    def __init__(self, identity: str, say: Callable[[str], None]) -> None:
        self.identity = identity
        self.password = secrets.token_urlsafe(16)
        self.say = say
        self.port = 0
        self._server: Server | None = None

    @property
    def url(self) -> str:
        """Where the station connects (its identity is appended)."""
        return f"ws://127.0.0.1:{self.port}/ocpp"

    def toml(self) -> dict[str, Any]:
        """The daemon's `[ocpp]` (profile 1: loopback; the password goes in the environment)."""
        return {"csms_url": self.url, "identity": self.identity, "security_profile": 1}

    async def start(self) -> None:
        """Listen."""
        self._server = await serve(
            self._handle,
            "127.0.0.1",
            0,
            subprotocols=["ocpp2.1"],  # type: ignore[list-item]
            process_request=basic_auth(realm="csms", credentials=(self.identity, self.password)),
        )
        self.port = next(iter(self._server.sockets)).getsockname()[1]

    async def stop(self) -> None:
        """Stop listening; the station's connection ends."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _handle(self, ws: ServerConnection) -> None:
        station = _Station(self.identity, _Wire(ws, self.say), response_timeout=10)
        self.say(f"OCPP csms: {self.identity} connected")
        with contextlib.suppress(Exception):
            await station.start()
        self.say(f"OCPP csms: {self.identity} disconnected")
