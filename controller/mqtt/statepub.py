"""The station state on MQTT: retained JSON at `<root>/state`, through its journal outbox.

The state (mode, swap phase, the active swap, why it is blocked, active alarms, packs ready
per type) is written to the journal's `station_state` row before it is published, and marked
published once the broker acknowledged it: across a broker outage or a restart the latest
state is published as soon as a broker takes it, and an older one never replaces it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

from controller.charging.control import SlotControl
from controller.charging.forecast import TypeForecast
from controller.charging.limits import PowerState
from controller.charging.offer import FlexOffer
from controller.charging.outlook import TypeOutlook
from controller.errors import BrokerRefusedError, NotConnectedError
from controller.mqtt.link import MqttLink
from controller.plant.alarms import Alarm, Severity
from controller.store.journal import Journal, transaction
from controller.swap.phase import STOPPED
from controller.swap.requests import Mode
from controller.swap.sequencer import Sequencer
from drivers import clock

_log = logging.getLogger(__name__)

SLOT_DATA_EVERY_S = (
    0.5  # after slot-control steps, packs ready are counted again at most this often
)
SWAP_SCOPE = "swap"


class ActiveSwap(BaseModel):
    """The swap in progress."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    swap_id: str
    vehicle_id: str
    pack_type: str
    phase: str
    started_at: datetime
    phase_since: datetime
    reserved_slot: int
    reserved_serial: str
    free_slot: int
    pack_out: str | None  # the vehicle's own pack, once removed
    pack_in: str | None  # the pack installed into it
    pack_locked: bool  # the vehicle holds a pack that is locked in
    reason: str | None  # why it was cancelled, faulted, aborted or needs recovery


class StationState(BaseModel):
    """Retained message on `<root>/state`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    station: str
    mode: Mode
    phase: str  # idle, or the swap's phase (docs/swap-machine.md)
    recovering: bool  # after a restart, checking whether the swap can resume
    swap: ActiveSwap | None
    blocking: list[str]  # why the swap (or a new swap, when idle) cannot go on now
    alarms: list[Alarm]
    packs_ready: dict[str, int]  # dispensable packs per type
    forecast: dict[str, TypeForecast]  # ready packs per type ahead (docs/power-management.md)
    # With power.demand: ready packs ahead with the cars expected, and the flexibility offer.
    outlook: dict[str, TypeOutlook] = {}
    flex: FlexOffer | None = None
    power: PowerState | None = None  # the limit in force, the source that binds, every source
    io: Literal["ok", "unknown"]  # station I/O trusted, or stale / unreachable
    updated_at: datetime


def station_state(seq: Sequencer, control: SlotControl, station_id: str) -> StationState:
    """Build the state from the sequencer and the slot control."""
    ctx = seq.ctx

    def dt(t: float) -> datetime:
        return datetime.fromtimestamp(t, UTC)

    swap = None
    if ctx.active:
        swap = ActiveSwap(
            swap_id=ctx.swap_id,
            vehicle_id=ctx.vehicle_id,
            pack_type=ctx.pack_type,
            phase=ctx.state,
            started_at=dt(ctx.started_at),
            phase_since=dt(ctx.phase_started_at),
            reserved_slot=ctx.reserved_slot,
            reserved_serial=ctx.reserved_serial,
            free_slot=ctx.free_slot,
            pack_out=ctx.old_serial,
            pack_in=ctx.installed_serial,
            pack_locked=ctx.pack_locked,
            reason=ctx.reason,
        )
    alarms = list(control.alarms.active())
    if ctx.state in STOPPED:
        alarms.append(
            Alarm(
                scope=SWAP_SCOPE,
                code=ctx.state.value,
                severity=Severity.CRITICAL,
                message=ctx.reason or ctx.state.value,
                since=ctx.phase_started_at,
            )
        )
    reading, _ = seq.io_reading(clock.monotonic())
    return StationState(
        station=station_id,
        mode=seq.mode,
        phase=ctx.state,
        recovering=seq.recovering,
        swap=swap,
        blocking=list(seq.blocking),
        alarms=alarms,
        packs_ready=seq.packs_ready(),
        forecast=control.forecast.types if control.forecast is not None else {},
        io="ok" if reading is not None else "unknown",
        outlook=control.foresight.outlook,
        flex=control.foresight.offer,
        power=control.power_state(),
        updated_at=clock.utcnow(),
    )


class StatePublisher:
    """Keeps `<root>/state` up to date, through the journal."""

    def __init__(
        self, seq: Sequencer, control: SlotControl, journal: Journal, link: MqttLink
    ) -> None:
        self.seq = seq
        self.control = control
        self.journal = journal
        self.link = link
        self.topic = f"{link.topic_root}/state"
        self.station_id = link.topic_root.rsplit("/", 1)[-1]
        self.published = 0
        self._last: StationState | None = None
        self._pending: str | None = None  # journalled, not yet acknowledged by the broker
        self._reconnected = asyncio.Event()
        link.add_connect_hook(self._on_connect)

        control.on_forecast = self.seq.changed.set
        control.on_station_change = self.seq.changed.set  # alarms raised or cleared

    async def _on_connect(self) -> None:
        self._reconnected.set()
        self.seq.changed.set()

    async def run(self) -> None:
        """Journal and publish the state whenever it changes."""
        row = await self.journal.call(
            lambda c: c.execute("SELECT body, published FROM station_state").fetchone()
        )
        if row is not None and not row[1]:
            self._pending = str(row[0])
        while True:
            await self._woken()
            state = station_state(self.seq, self.control, self.station_id)
            old = self._last
            if old is None or _content(old) != _content(state):
                self._last = state
                self._pending = state.model_dump_json()
                await self._journal(self._pending)
            elif self._reconnected.is_set() and self._pending is None and old is not None:
                self._pending = old.model_dump_json()  # retained again after a reconnect
            self._reconnected.clear()
            if self._pending is not None:
                await self._publish(self._pending)

    async def _woken(self) -> None:
        """Until the swap or an alarm changed (at once), or slot data did (at most so often).

        Nothing is looked at while nothing changes.
        """
        seq, stepped = self.seq.changed, self.control.stepped
        if not seq.is_set():
            waits = {asyncio.ensure_future(seq.wait()), asyncio.ensure_future(stepped.wait())}
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiting in waits:
                    waiting.cancel()
            if not seq.is_set():  # slot data only: let a burst of polls settle
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(SLOT_DATA_EVERY_S):
                        await seq.wait()
        seq.clear()
        stepped.clear()

    async def _journal(self, body: str) -> None:
        def write(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.execute(
                    "INSERT OR REPLACE INTO station_state(id, body, published) VALUES (1, ?, 0)",
                    (body,),
                )

        # A copy of what the station shows, rebuilt at every start: no need to wait for the disk.
        await self.journal.call(write, durable=False)

    async def _publish(self, body: str) -> None:
        try:
            await self.link.publish(self.topic, body, qos=1, retain=True)
        except NotConnectedError:
            return  # published after the reconnect
        except BrokerRefusedError as exc:
            _log.warning("station state not published: %s", exc)
            return
        self.published += 1
        if self._pending == body:
            self._pending = None

            def mark(conn: sqlite3.Connection) -> None:
                with transaction(conn):
                    conn.execute("UPDATE station_state SET published = 1 WHERE body = ?", (body,))

            await self.journal.call(mark, durable=False)


def _content(state: StationState) -> dict[str, object]:
    return state.model_dump(exclude={"updated_at"})
