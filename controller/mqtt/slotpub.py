"""Slot state on MQTT: retained JSON per slot at `<root>/slots/<n>`.

Published when something changed beyond the configured deadbands (any change of status,
pack, staleness, alarms or latches counts), as a periodic full refresh, and all again after
every reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from controller.charging.control import SlotControl
from controller.config.model import DeadbandsConfig, PublishConfig
from controller.errors import BrokerRefusedError, NotConnectedError
from controller.mqtt.link import MqttLink
from controller.plant.alarms import Severity, slot_scope

_log = logging.getLogger(__name__)

TICK_S = 0.1


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
    """True when `new` differs from `old` by more than the deadbands."""
    a, b = old.model_dump(), new.model_dump()
    for key, value in b.items():
        if key in VOLATILE:
            continue
        before = a[key]
        if key == "pack" and value and before:
            if {k: v for k, v in value.items() if k != "soc"} != {
                k: v for k, v in before.items() if k != "soc"
            }:
                return True
            if _moved(before.get("soc"), value.get("soc"), bands.soc):
                return True
            continue
        band = DEADBAND_FIELDS.get(key)
        if band is not None:
            if _moved(before, value, getattr(bands, band)):
                return True
        elif before != value:
            return True
    return False


def _moved(before: Any, after: Any, band: float) -> bool:
    if before is None or after is None:
        return before is not after
    return abs(float(after) - float(before)) >= band if band > 0 else after != before


class SlotPublisher:
    """Keeps `<root>/slots/<n>` up to date."""

    def __init__(self, control: SlotControl, link: MqttLink, cfg: PublishConfig) -> None:
        self.control = control
        self.link = link
        self.cfg = cfg
        self._last: dict[int, SlotState] = {}
        self._last_full = 0.0
        self.published = 0
        link.add_connect_hook(self._on_connect)

    async def _on_connect(self) -> None:
        self._last.clear()  # the broker may have lost retained messages: send all again

    def topic(self, slot: int) -> str:
        """Topic of a slot."""
        return f"{self.link.topic_root}/slots/{slot}"

    async def run(self) -> None:
        """Publish changes as they happen."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TICK_S):
                    await self.control.changed.wait()
            self.control.changed.clear()
            if self.link.connected.is_set():
                await self.publish_changes(time.monotonic())

    async def publish_changes(self, now: float) -> None:
        """Publish every slot whose state moved (or all, when the refresh is due)."""
        full = now - self._last_full >= self.cfg.slot_refresh_s
        for slot in self.control.book.slots:
            state = slot_state(self.control, slot, now)
            old = self._last.get(slot)
            if (
                not full
                and old is not None
                and not significant_change(old, state, self.cfg.deadbands)
            ):
                continue
            try:
                await self.link.publish(
                    self.topic(slot), state.model_dump_json(), qos=1, retain=True
                )
            except NotConnectedError:
                return
            except BrokerRefusedError as exc:
                # Not retried until it changes or the periodic refresh: no flood of refusals.
                _log.warning("slot %d state not published: %s", slot, exc)
                self._last[slot] = state
                continue
            self._last[slot] = state
            self.published += 1
        if full:
            self._last_full = now
