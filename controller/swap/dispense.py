"""Dispense policy: which charged pack a swap gets, and where the returned pack goes.

A pack can be dispensed when its slot's data is fresh, the pack is of the requested type,
charged to at least `swap.min_dispense_soc`, its cells inside the charging window, and nothing
is wrong with it or its slot: no active alarm on the slot, no trip, not quarantined, the slot
in service. Among those the preference order is:

1. the highest state of charge (the driver gets the most range);
2. then the highest state of health;
3. then the coolest hottest cell;
4. then the lowest slot number (a deterministic tie-break).

The returned pack goes into the lowest-numbered empty slot that is in service, with fresh
data and no alarm. No swap is authorised without both.
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.charging.control import SlotControl
from controller.config.model import StationConfig
from controller.errors import NoPackError
from controller.plant.alarms import slot_scope
from controller.plant.slots import SlotView
from drivers import clock


@dataclass(frozen=True, slots=True)
class Choice:
    """A pack to dispense and the slot for the returned one."""

    slot: int
    serial: str
    pack_type: str
    soc: float
    free_slot: int


def choose(
    config: StationConfig,
    control: SlotControl,
    pack_type: str,
    *,
    exclude: set[int] | None = None,
    busy: set[int] | None = None,
) -> Choice:
    """The pack to dispense for `pack_type` and the slot for the returned pack.

    `exclude`: slots whose pack is not to be dispensed (reserved, just handed over: their
    reading may lag); `busy`: slots that cannot take the returned pack (held by the swap).
    """
    now = clock.monotonic()
    exclude = exclude or set()
    of_type = 0
    best_soc: float | None = None
    reasons: dict[str, int] = {}
    candidates: list[tuple[float, float, float, int, str]] = []
    for view in control.book.views(now):
        r = view.reading
        if r is None or not r.pack_present or r.pack_type != pack_type or view.slot in exclude:
            continue
        of_type += 1
        why = why_not(config, control, view, pack_type)
        if why == "not charged enough" and r.soc is not None:
            best_soc = max(best_soc or 0.0, r.soc)
        if why is not None:
            reasons[why] = reasons.get(why, 0) + 1
            continue
        assert r.pack_serial is not None
        assert r.soc is not None
        assert r.temp_max is not None
        candidates.append((-r.soc, -(r.soh or 0.0), r.temp_max, view.slot, r.pack_serial))
    if not candidates:
        raise NoPackError(_no_pack(pack_type, of_type, reasons, best_soc, config))
    soc, _, _, slot, serial = min(candidates)
    free = free_slot(control, exclude=(busy or set()) | {slot})
    return Choice(slot=slot, serial=serial, pack_type=pack_type, soc=-soc, free_slot=free)


def why_not(  # noqa: PLR0911 - one return per check, in order
    config: StationConfig, control: SlotControl, view: SlotView, pack_type: str
) -> str | None:
    """Why the pack in this slot cannot be dispensed for `pack_type`; None if it can."""
    r = view.reading
    cfg = config.supervision
    if r is None or not r.pack_present:
        return "no pack"
    if r.pack_type != pack_type:
        return f"of type {r.pack_type}"
    why = _unfit(control, view.slot, stale=view.stale, serial=r.pack_serial)
    if why is not None:
        return why
    if r.pack_serial is None:
        return "serial not read"
    if r.soc is None or r.soc < config.swap.min_dispense_soc:
        return "not charged enough"
    if (
        r.temp_min is None
        or r.temp_max is None
        or r.temp_min < cfg.charge_temp_min_c
        or r.temp_max > cfg.charge_temp_max_c
    ):
        return "too hot or cold"
    return None


def still_dispensable(
    config: StationConfig, control: SlotControl, slot: int, serial: str, pack_type: str
) -> str | None:
    """Why a reserved pack can no longer be dispensed; None if it still can."""
    view = control.book.view(slot, clock.monotonic())
    r = view.reading
    if r is not None and r.pack_present and r.pack_serial not in {None, serial}:
        return f"slot {slot} now holds {r.pack_serial}"
    return why_not(config, control, view, pack_type)


def slot_free(control: SlotControl, slot: int) -> bool:
    """The slot can take a returned pack now."""
    view = control.book.view(slot, clock.monotonic())
    r = view.reading
    return (
        r is not None
        and not view.stale
        and r.pack_present is False
        and r.status == "empty"
        and _unfit(control, slot, stale=view.stale, serial=None) is None
    )


def free_slot(control: SlotControl, *, exclude: set[int]) -> int:
    """The lowest empty slot fit to take a returned pack."""
    for slot in control.book.slots:
        if slot not in exclude and slot_free(control, slot):
            return slot
    raise NoPackError(
        "no free slot for the returned pack (every slot is full, out of service"
        " or without fresh data)"
    )


def ready_counts(
    config: StationConfig, control: SlotControl, *, exclude: set[int] | None = None
) -> dict[str, int]:
    """Packs that could be dispensed now, per pack type (not counting slots in `exclude`)."""
    counts: dict[str, int] = {}
    now = clock.monotonic()
    for view in control.book.views(now):
        r = view.reading
        if r is None or not r.pack_present or r.pack_type is None:
            continue
        if exclude and view.slot in exclude:
            counts.setdefault(r.pack_type, 0)
            continue
        counts.setdefault(r.pack_type, 0)
        fit = _unfit(control, view.slot, stale=view.stale, serial=r.pack_serial) is None
        if fit and r.soc is not None and r.soc >= config.swap.min_dispense_soc:
            counts[r.pack_type] += 1
    return counts


def _unfit(control: SlotControl, slot: int, *, stale: bool, serial: str | None) -> str | None:
    if stale:
        return "no fresh data"
    if control.alarms.active(slot_scope(slot)):
        return "slot alarm"
    if slot in control.trips:
        return "slot tripped"
    if slot in control.disabled_slots:
        return "slot out of service"
    if serial is not None and serial in control.quarantine:
        return "quarantined"
    return None


def _no_pack(
    pack_type: str,
    of_type: int,
    reasons: dict[str, int],
    best_soc: float | None,
    config: StationConfig,
) -> str:
    if of_type == 0:
        return f"no pack of type {pack_type} in the station"
    parts = [f"{n} {why}" for why, n in sorted(reasons.items())]
    text = (
        f"none of the {of_type} pack(s) of type {pack_type} can be dispensed ({', '.join(parts)})"
    )
    if best_soc is not None:
        text += f"; the best is at {best_soc:.1f} %, {config.swap.min_dispense_soc:g} % needed"
    return text
