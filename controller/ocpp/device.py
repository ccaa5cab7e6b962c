"""The device model the CSMS sees: slots as EVSEs, and the few variables that matter.

Each battery slot is one EVSE with one connector (1). OCPP numbers EVSEs 1..N: the slots, in
their order, are EVSE 1..N (slots 1..N, the usual numbering, keep their numbers). Its status:

| status | when |
|---|---|
| `Unavailable` | the slot is disabled (`set_slot`), or its data is stale (unknown: not available) |
| `Faulted` | the slot is tripped, or has an active alarm of severity `critical` |
| `Occupied` | a pack is in the slot |
| `Available` | the slot is empty and usable |
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from controller.charging.control import SlotControl
from controller.config.model import StationConfig
from controller.plant.alarms import slot_scope

FAULT_SEVERITIES = frozenset({"critical"})
# How the swap picks the pack it gives (controller/swap/dispense.py): the highest SoC, then
# the highest SoH, then the coolest.
DISPENSE_ORDER = "HighestSoC,HighestSoH,CoolestFirst"


def evse_ids(slots: Iterable[int]) -> dict[int, int]:
    """Slot -> EVSE id: 1..N in slot order."""
    return {slot: n for n, slot in enumerate(sorted(slots), start=1)}


def evse_status(control: SlotControl, slot: int, now: float) -> str:
    """The connector status of slot `slot` (see the module's table)."""
    view = control.book.view(slot, now)
    if slot in control.disabled_slots or view.stale or view.reading is None:
        return "Unavailable"
    if slot in control.trips or any(
        str(a.severity) in FAULT_SEVERITIES for a in control.alarms.active(slot_scope(slot))
    ):
        return "Faulted"
    return "Occupied" if view.reading.pack_present else "Available"


@dataclass
class Variable:
    """One variable of the device model: read, and written if `write` is given."""

    read: Callable[[], str]
    write: Callable[[str], str | None] | None = None  # None: done; else why not
    unit: str | None = None


@dataclass
class Settings:
    """What the CSMS may change at run time (not written back to station.toml)."""

    heartbeat_s: int
    meter_interval_s: int
    changed: list[str] = field(default_factory=list)


def _positive(lo: int, hi: int, set_: Callable[[int], None]) -> Callable[[str], str | None]:
    def write(value: str) -> str | None:
        if not value.isdigit() or not lo <= int(value) <= hi:
            return f"an integer {lo}..{hi}"
        set_(int(value))
        return None

    return write


def variables(config: StationConfig, settings: Settings) -> dict[tuple[str, str], Variable]:
    """The variables, by (component, variable) name, as OCPP 2.1's device model names them."""
    ocpp = config.ocpp
    assert ocpp is not None

    def set_heartbeat(value: int) -> None:
        settings.heartbeat_s = value
        settings.changed.append("heartbeat")

    def set_meter(value: int) -> None:
        settings.meter_interval_s = value
        settings.changed.append("meter")

    types = sorted(config.power.pack_types) if config.power.pack_types else []
    return {
        ("OCPPCommCtrlr", "HeartbeatInterval"): Variable(
            lambda: str(settings.heartbeat_s), _positive(1, 86_400, set_heartbeat), "s"
        ),
        ("SampledDataCtrlr", "TxUpdatedInterval"): Variable(
            lambda: str(settings.meter_interval_s), _positive(1, 3600, set_meter), "s"
        ),
        ("ChargingStation", "VendorName"): Variable(lambda: ocpp.vendor),
        ("ChargingStation", "Model"): Variable(lambda: ocpp.model),
        ("ChargingStation", "Identity"): Variable(lambda: ocpp.identity or config.station_id),
        ("EVSE", "Count"): Variable(lambda: str(config.slot_count)),
        ("SmartChargingCtrlr", "RateUnit"): Variable(lambda: "W"),
        # The swap: which pack is given out, and from what charge.
        ("BatterySwapCtrlr", "DispenseOrder"): Variable(lambda: DISPENSE_ORDER),
        ("BatterySwapCtrlr", "MinDispenseSoC"): Variable(
            lambda: f"{config.swap.min_dispense_soc:g}", unit="Percent"
        ),
        ("BatterySwapCtrlr", "PackTypes"): Variable(lambda: ",".join(types)),
    }
