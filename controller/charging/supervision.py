"""Slot supervision rules: from a slot's readings over time to causes, trips and quarantine.

The rules, per slot (limits from `[supervision]`, BMS limits from the pack via the charger):

- `charger_fault`: the charger reports a fault code. No charging while it lasts.
- `sensor_fault`: a value outside its plausible range. No charging, not dispensable.
- `slot_data_stale`: the rack answers but this charger does not (or its heartbeat stopped).
  No charging. (A rack that does not answer at all is the rack-level alarm `rack_offline`.)
- `charge_temperature`: a cell outside the charging window (0-45 C), with hysteresis.
  No charging while it lasts.
- `over_temperature`: the hottest cell above `over_temp_c`. Trip and quarantine.
- `over_voltage`: voltage above the BMS limit plus a margin, on readings spanning
  `debounce_s`. Trip and quarantine.
- `over_current`: current above min(BMS limit, setpoint) plus a margin, on readings spanning
  `debounce_s`. Trip and quarantine.
- `charging_while_off`: current flows although the charger was told to stop, on readings
  spanning `debounce_s`. Trip and quarantine; a person must isolate the charger.
- `fast_temperature_rise`: the hottest cell rising faster than `fast_rise_c_per_min` over a
  full window (a possible thermal event). Trip and quarantine.

Rules are evaluated on each *new* reading, timed by the reading's own timestamp, so one
reading evaluated twice never satisfies a debounce. While a slot's data is stale nothing can
be known: the causes found on the last fresh reading are held (an alarm neither clears nor
re-raises because a poll failed), and the debounce and rise histories are kept.

A trip latches "no charging" on the slot and a quarantine latches "do not dispense" on the pack
(by serial); both survive restarts and are released by an operator. The alarm itself clears
when a fresh reading shows its cause gone.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from controller.config.model import SupervisionConfig
from controller.plant.alarms import Cause, Severity
from controller.plant.slots import SlotView
from drivers.rack import SlotReading

TRIPPING = frozenset(
    {
        "over_temperature",
        "over_voltage",
        "over_current",
        "fast_temperature_rise",
        "charging_while_off",
    }
)
STALE = "slot_data_stale"
CURRENT_FLOWING_A = 1.0


@dataclass(frozen=True, slots=True)
class SlotCheck:
    """The rules' verdict on one slot at one moment."""

    causes: dict[str, Cause]
    stale: bool = False  # the causes are held from the last fresh reading

    @property
    def trips(self) -> list[str]:
        """Causes that latch a trip and quarantine the pack."""
        return sorted(code for code in self.causes if code in TRIPPING)


@dataclass
class _Debounce:
    """A condition that must hold on readings spanning a time before it counts."""

    since: float | None = None

    def update(self, *, holds: bool, at: float, span: float) -> bool:
        if not holds:
            self.since = None
            return False
        if self.since is None:
            self.since = at
        return at - self.since >= span


@dataclass
class _History:
    last_at: float | None = None
    pack: str | None = None
    causes: dict[str, Cause] = field(default_factory=dict)
    over_v: _Debounce = field(default_factory=_Debounce)
    over_i: _Debounce = field(default_factory=_Debounce)
    off_current: _Debounce = field(default_factory=_Debounce)
    temps: deque[tuple[float, float]] = field(default_factory=deque)
    too_hot_or_cold: bool = False
    over_temp: bool = False

    def new_pack(self, serial: str | None) -> None:
        self.pack = serial
        self.temps.clear()
        self.over_v, self.over_i, self.off_current = _Debounce(), _Debounce(), _Debounce()
        self.too_hot_or_cold = self.over_temp = False


class SlotRules:
    """Evaluates the rules; keeps the little history the debounces and the rise rate need."""

    def __init__(self, cfg: SupervisionConfig) -> None:
        self.cfg = cfg
        self._history: dict[int, _History] = {}

    def hold(self, slot: int, code: str, cause: Cause) -> None:
        """Hold a cause known from before a restart until a fresh reading judges it."""
        self._history.setdefault(slot, _History()).causes[code] = cause

    def check(self, view: SlotView) -> SlotCheck:
        """The slot's causes now."""
        h = self._history.setdefault(view.slot, _History())
        r = view.reading
        if view.stale or r is None:
            held = {k: v for k, v in h.causes.items() if k != STALE}
            if view.charger_silent:
                held[STALE] = Cause(Severity.WARNING, f"slot data stale: {view.stale_reason}")
            return SlotCheck(held, stale=True)
        if r.at != h.last_at:
            h.last_at = r.at
            h.causes = self._evaluate(r, h)
        return SlotCheck(dict(h.causes))

    def _evaluate(self, r: SlotReading, h: _History) -> dict[str, Cause]:
        if r.pack_serial != h.pack:  # another pack: its history is not this one's
            h.new_pack(r.pack_serial)
        causes: dict[str, Cause] = {}
        if r.sensor_faults:
            causes["sensor_fault"] = Cause(
                Severity.WARNING, f"implausible value(s): {', '.join(r.sensor_faults)}"
            )
        if r.fault_code:
            causes["charger_fault"] = Cause(Severity.WARNING, f"charger fault code {r.fault_code}")
        if r.pack_present is not False:  # present, or unknown: supervise what we can
            self._temperatures(r, h, causes)
            self._electrical(r, h, causes)
        return causes

    def _temperatures(self, r: SlotReading, h: _History, causes: dict[str, Cause]) -> None:
        cfg = self.cfg
        t_min, t_max = r.temp_min, r.temp_max
        if t_min is None or t_max is None:
            return
        lo, hi, hyst = cfg.charge_temp_min_c, cfg.charge_temp_max_c, cfg.temp_hysteresis_c
        if h.too_hot_or_cold:
            h.too_hot_or_cold = t_min < lo + hyst or t_max > hi - hyst
        else:
            h.too_hot_or_cold = t_min < lo or t_max > hi
        if h.too_hot_or_cold:
            causes["charge_temperature"] = Cause(
                Severity.WARNING,
                f"cells at {t_min:.1f}..{t_max:.1f} C, outside the charging window"
                f" {lo:g}..{hi:g} C",
            )
        limit = cfg.over_temp_c - (hyst if h.over_temp else 0.0)
        h.over_temp = t_max > limit
        if h.over_temp:
            causes["over_temperature"] = Cause(
                Severity.CRITICAL, f"hottest cell {t_max:.1f} C above {cfg.over_temp_c:g} C"
            )
        self._rise(r.at, t_max, h, causes)

    def _rise(self, at: float, t_max: float, h: _History, causes: dict[str, Cause]) -> None:
        cfg = self.cfg
        h.temps.append((at, t_max))
        while len(h.temps) > 1 and at - h.temps[1][0] >= cfg.fast_rise_window_s:
            h.temps.popleft()
        t0, first = h.temps[0]
        elapsed = at - t0
        # Judged over (nearly) a whole window only: a single step of the sensor's resolution
        # must not read as a thermal event.
        if elapsed >= 0.9 * cfg.fast_rise_window_s:
            rate = (t_max - first) / elapsed * 60
            if rate > cfg.fast_rise_c_per_min:
                causes["fast_temperature_rise"] = Cause(
                    Severity.CRITICAL,
                    f"hottest cell rising {rate:.1f} C/min (limit {cfg.fast_rise_c_per_min:g}):"
                    " possible thermal event",
                )

    def _electrical(self, r: SlotReading, h: _History, causes: dict[str, Cause]) -> None:
        cfg = self.cfg
        v_limit = r.bms_voltage_max
        over_v = (
            v_limit is not None
            and r.voltage is not None
            and r.voltage > v_limit + cfg.over_voltage_margin_v
        )
        if h.over_v.update(holds=over_v, at=r.at, span=cfg.debounce_s):
            causes["over_voltage"] = Cause(
                Severity.CRITICAL, f"{r.voltage:.1f} V above the BMS limit {v_limit:.1f} V"
            )
        limits = [x for x in (r.bms_current_max, r.current_limit) if x is not None]
        i_limit = min(limits) if limits else None
        over_i = (
            i_limit is not None
            and r.current is not None
            and r.current > i_limit + cfg.over_current_margin_a
        )
        if h.over_i.update(holds=over_i, at=r.at, span=cfg.debounce_s):
            causes["over_current"] = Cause(
                Severity.CRITICAL, f"{r.current:.1f} A above the limit {i_limit:.1f} A"
            )
        flowing = (
            r.charge_enable is False and r.current is not None and r.current > CURRENT_FLOWING_A
        )
        if h.off_current.update(holds=flowing, at=r.at, span=cfg.debounce_s):
            causes["charging_while_off"] = Cause(
                Severity.CRITICAL,
                f"{r.current:.1f} A flowing although the charger was switched off:"
                " isolate the charger",
            )
