"""Slot state on MQTT: retained JSON per slot at `<root>/slots/<n>`.

Published when something changed beyond the configured deadbands (any change of status,
pack, staleness, alarms or latches counts), again `slot_refresh_s` after its last publish,
and all again after every reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

from controller.charging.control import SlotControl
from controller.config.model import DeadbandsConfig, PublishConfig
from controller.errors import BrokerRefusedError, NotConnectedError
from controller.mqtt.link import MqttLink
from controller.plant.alarms import Severity, slot_scope
from drivers import clock

_log = logging.getLogger(__name__)

WINDOW = 64  # publishes in flight at once (QoS 1: each waits for its PUBACK)
T = TypeVar("T")


class PackInfo(BaseModel):
    """The pack in a slot, as its BMS reports it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    serial: str | None
    type: str | None
    soc: float | None
    soh: float | None


class SlotAlarm(BaseModel):
    """An active alarm of the slot."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: str
    severity: Severity
    message: str
    since: datetime


class SlotState(BaseModel):
    """Retained message on `<root>/slots/<n>`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    slot: int
    rack: str
    status: str
    stale: bool
    stale_reason: str | None
    age_s: float | None
    pack: PackInfo | None
    voltage_v: float | None
    current_a: float | None
    power_w: float | None
    temp_min_c: float | None
    temp_max_c: float | None
    energy_wh: float | None
    charge_enable: bool | None
    current_limit_a: float | None
    bms_voltage_max_v: float | None
    bms_current_max_a: float | None
    fault_code: int | None
    sensor_faults: list[str]
    alarms: list[SlotAlarm]
    charging_blocked_by: list[str]
    tripped: str | None
    quarantined: str | None
    enabled: bool
    updated_at: datetime | None


DEADBAND_FIELDS = {
    "voltage_v": "voltage_v",
    "current_a": "current_a",
    "power_w": "power_w",
    "temp_min_c": "temp_c",
    "temp_max_c": "temp_c",
    "energy_wh": "energy_wh",
}
VOLATILE = frozenset({"age_s", "updated_at"})


def slot_state(control: SlotControl, slot: int, now: float) -> SlotState:
    """Build the published state of one slot."""
    view = control.book.view(slot, now)
    r = view.reading
    serial = r.pack_serial if r else None
    pack = None
    if r is not None and r.pack_present:
        pack = PackInfo(serial=r.pack_serial, type=r.pack_type, soc=r.soc, soh=r.soh)
    trip = control.trips.get(slot)
    quarantine = control.quarantine.get(serial) if serial else None
    return SlotState(
        slot=slot,
        rack=view.rack,
        status=r.status if r else "unknown",
        stale=view.stale,
        stale_reason=view.stale_reason,
        age_s=None if view.age_s is None else round(view.age_s, 3),
        pack=pack,
        voltage_v=r.voltage if r else None,
        current_a=r.current if r else None,
        power_w=None if r is None or r.power_w is None else round(r.power_w, 1),
        temp_min_c=r.temp_min if r else None,
        temp_max_c=r.temp_max if r else None,
        energy_wh=r.energy_wh if r else None,
        charge_enable=r.charge_enable if r else None,
        current_limit_a=r.current_limit if r else None,
        bms_voltage_max_v=r.bms_voltage_max if r else None,
        bms_current_max_a=r.bms_current_max if r else None,
        fault_code=r.fault_code if r else None,
        sensor_faults=list(r.sensor_faults) if r else [],
        alarms=[
            SlotAlarm(
                code=a.code,
                severity=a.severity,
                message=a.message,
                since=datetime.fromtimestamp(a.since, UTC),
            )
            for a in control.alarms.active(slot_scope(slot))
        ],
        charging_blocked_by=control.blockers(slot, now),
        tripped=trip.reason if trip else None,
        quarantined=quarantine.reason if quarantine else None,
        enabled=slot not in control.disabled_slots,
        updated_at=datetime.fromtimestamp(r.wall, UTC) if r else None,
    )


def significant_change(old: SlotState, new: SlotState, bands: DeadbandsConfig) -> bool:
    """True when `new` differs from `old` by at least a deadband (any change, for the rest)."""
    a = old.__dict__
    for key, value in new.__dict__.items():
        before = a[key]
        if key in VOLATILE or before == value:
            continue
        if key == "pack" and value is not None and before is not None:
            if {**value.__dict__, "soc": None} != {**before.__dict__, "soc": None}:
                return True
            if _moved(before.soc, value.soc, bands.soc):
                return True
            continue
        band = DEADBAND_FIELDS.get(key)
        if band is None or _moved(before, value, getattr(bands, band)):
            return True
    return False


def _moved(before: Any, after: Any, band: float) -> bool:
    if before is None or after is None:
        return before is not after
    return abs(float(after) - float(before)) >= band if band > 0 else after != before


class SlotPublisher:
    """Keeps `<root>/slots/<n>` up to date, driven by the slot control's changes.

    The slot control names the slots whose view may have changed after each step; only those
    are built and compared, and the ones that moved go out together (QoS 1, pipelined in a
    bounded window), each slot's newest state replacing an older one not yet sent. A slot is
    published again `slot_refresh_s` after its last publish (the refresh, spread over the
    period), and every slot after a reconnect.
    """

    def __init__(self, control: SlotControl, link: MqttLink, cfg: PublishConfig) -> None:
        self.control = control
        self.link = link
        self.cfg = cfg
        self._last: dict[int, SlotState] = {}
        # One entry per slot (its refresh time, a heap): a slot published again meanwhile has
        # its entry moved when it comes up, not one entry per publish.
        self._refresh: list[tuple[float, int]] = []
        self._published_at: dict[int, float] = {}
        self.published = 0
        link.add_connect_hook(self._on_connect)

    async def _on_connect(self) -> None:
        self._last.clear()  # the broker may have lost retained messages: send all again
        self.control.dirty.update(self.control.book.slots)
        self.control.changed.set()

    def last(self, slot: int) -> SlotState | None:
        """The slot's state as last published (None: not yet)."""
        return self._last.get(slot)

    def topic(self, slot: int) -> str:
        """Topic of a slot."""
        return f"{self.link.topic_root}/slots/{slot}"

    async def run(self) -> None:
        """Publish changes as the slot control reports them, and each slot's refresh when due."""
        self.control.dirty.update(self.control.book.slots)  # everything once at start
        self.control.changed.set()
        while True:
            due = self._refresh[0][0] if self._refresh else None
            wait = None if due is None else max(0.0, due - clock.monotonic())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self.control.changed.wait()
            self.control.changed.clear()
            if not self.link.connected.is_set():
                continue  # the connect hook asks for every slot again
            await self.publish_changes(clock.monotonic())

    async def publish_changes(self, now: float) -> None:
        """Publish the slots whose state moved beyond the deadbands, and the refreshes due."""
        slots, self.control.dirty = self.control.dirty, set()
        refresh = self._due_refreshes(now)
        out: dict[int, SlotState] = {}
        for slot in sorted(slots | refresh):
            state = slot_state(self.control, slot, now)
            old = self._last.get(slot)
            if (
                slot not in refresh
                and old is not None
                and not significant_change(old, state, self.cfg.deadbands)
            ):
                continue
            out[slot] = state
        for chunk in _chunks(list(out.items()), WINDOW):
            results = await self.link.publish_many(
                [(self.topic(slot), state.model_dump_json()) for slot, state in chunk],
                qos=1,
                retain=True,
            )
            now = clock.monotonic()
            for (slot, state), result in zip(chunk, results, strict=True):
                if isinstance(result, NotConnectedError):
                    self.control.dirty.add(slot)  # sent again after the reconnect
                    continue
                if isinstance(result, BrokerRefusedError):
                    # Not retried until it changes or its refresh: no flood of refusals.
                    _log.warning("slot %d state not published: %s", slot, result)
                else:
                    self.published += 1
                self._last[slot] = state
                if slot not in self._published_at:
                    heapq.heappush(self._refresh, (now + self.cfg.slot_refresh_s, slot))
                self._published_at[slot] = now

    def _due_refreshes(self, now: float) -> set[int]:
        """Slots whose last publish is `slot_refresh_s` old (a newer publish moves the entry)."""
        due: set[int] = set()
        while self._refresh and self._refresh[0][0] <= now:
            _, slot = heapq.heappop(self._refresh)
            at = self._published_at[slot] + self.cfg.slot_refresh_s
            if at <= now:
                due.add(slot)
            # Due: next one a period after this publish; else: when its last publish is old.
            heapq.heappush(
                self._refresh, (now + self.cfg.slot_refresh_s if at <= now else at, slot)
            )
        return due


def _chunks(items: list[T], size: int) -> list[list[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
