"""Slot supervision rules: from a slot's readings over time to causes, trips and quarantine.

The rules, per slot (limits from `[supervision]`, BMS limits from the pack via the charger):
- `charger_fault`: the charger reports a fault code. No charging while it lasts.
- `sensor_fault`: a value outside its plausible range. No charging, not dispensable.
- `slot_data_stale`: the rack answers but this charger's heartbeat stopped. No charging.
  (A rack that does not answer is the rack-level alarm `rack_offline`.)
- `charge_temperature`: a cell outside the charging window (0-45 C), with hysteresis.
  No charging while it lasts.
- `over_temperature`: the hottest cell above `over_temp_c`. Trip and quarantine.
- `over_voltage`: voltage above the BMS limit plus a margin for `debounce_s`. Trip and
  quarantine.
- `over_current`: current above min(BMS limit, setpoint) plus a margin for `debounce_s`.
  Trip and quarantine.
- `fast_temperature_rise`: the hottest cell rising faster than `fast_rise_c_per_min` (a
  possible thermal event). Trip and quarantine.

A trip latches "no charging" on the slot and a quarantine latches "do not dispense" on the pack
(by serial); both survive restarts and are released by an operator. The alarm itself clears
when its cause clears.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from controller.alarms import Cause, Severity
from controller.config import SupervisionConfig
from controller.slots import SlotView

TRIPPING = frozenset({"over_temperature", "over_voltage", "over_current", "fast_temperature_rise"})


@dataclass(frozen=True, slots=True)
class SlotCheck:
    """The rules' verdict on one slot at one moment."""

    causes: dict[str, Cause]
    inhibit: bool  # charging must be off now

    @property
    def trips(self) -> list[str]:
        """Causes that latch a trip and quarantine the pack."""
        return sorted(code for code in self.causes if code in TRIPPING)


@dataclass
class _History:
    over_v_since: float | None = None
    over_i_since: float | None = None
    temps: deque[tuple[float, float]] = field(default_factory=deque)
    pack: str | None = None
    too_hot_or_cold: bool = False


class SlotRules:
    """Evaluates the rules; keeps the little history the debounces and the rise rate need."""

    def __init__(self, cfg: SupervisionConfig) -> None:
        self.cfg = cfg
        self._history: dict[int, _History] = {}

    def check(self, view: SlotView, now: float) -> SlotCheck:
        """Evaluate every rule for one slot at monotonic time `now`."""
        h = self._history.setdefault(view.slot, _History())
        causes: dict[str, Cause] = {}
        r = view.reading
        if view.stale:
            if view.charger_silent:
                causes["slot_data_stale"] = Cause(
                    Severity.WARNING, f"slot data stale: {view.stale_reason}"
                )
            # Stale data cannot be supervised: charging must stop, and history is void.
            h.over_v_since = h.over_i_since = None
            h.temps.clear()
            return SlotCheck(causes, inhibit=True)
        assert r is not None
        if r.pack_serial != h.pack:  # another pack: its history is not this one's
            h.pack = r.pack_serial
            h.temps.clear()
            h.over_v_since = h.over_i_since = None
            h.too_hot_or_cold = False
        if r.sensor_faults:
            causes["sensor_fault"] = Cause(
                Severity.WARNING, f"implausible value(s): {', '.join(r.sensor_faults)}"
            )
        if r.fault_code:
            causes["charger_fault"] = Cause(Severity.WARNING, f"charger fault code {r.fault_code}")
        if r.pack_present:
            self._temperatures(r.temp_min, r.temp_max, h, now, causes)
            self._electrical(view, h, now, causes)
        else:
            h.temps.clear()
            h.over_v_since = h.over_i_since = None
        inhibit = bool(causes)
        return SlotCheck(causes, inhibit=inhibit)

    def _temperatures(
        self,
        t_min: float | None,
        t_max: float | None,
        h: _History,
        now: float,
        causes: dict[str, Cause],
    ) -> None:
        cfg = self.cfg
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
        if t_max > cfg.over_temp_c:
            causes["over_temperature"] = Cause(
                Severity.CRITICAL, f"hottest cell {t_max:.1f} C above {cfg.over_temp_c:g} C"
            )
        h.temps.append((now, t_max))
        while h.temps and now - h.temps[0][0] > cfg.fast_rise_window_s:
            h.temps.popleft()
        t0, first = h.temps[0]
        elapsed = now - t0
        if elapsed >= min(cfg.fast_rise_window_s / 3, 10.0):
            rate = (t_max - first) / elapsed * 60
            if rate > cfg.fast_rise_c_per_min:
                causes["fast_temperature_rise"] = Cause(
                    Severity.CRITICAL,
                    f"hottest cell rising {rate:.1f} C/min (limit {cfg.fast_rise_c_per_min:g}):"
                    " possible thermal event",
                )

    def _electrical(
        self, view: SlotView, h: _History, now: float, causes: dict[str, Cause]
    ) -> None:
        cfg = self.cfg
        r = view.reading
        assert r is not None
        v_limit = r.bms_voltage_max
        over_v = (
            v_limit is not None
            and r.voltage is not None
            and (r.voltage > v_limit + cfg.over_voltage_margin_v)
        )
        h.over_v_since = (now if h.over_v_since is None else h.over_v_since) if over_v else None
        if h.over_v_since is not None and now - h.over_v_since >= cfg.debounce_s:
            causes["over_voltage"] = Cause(
                Severity.CRITICAL, f"{r.voltage:.1f} V above the BMS limit {v_limit:.1f} V"
            )
        limits = [x for x in (r.bms_current_max, r.current_limit) if x is not None]
        i_limit = min(limits) if limits else None
        over_i = (
            i_limit is not None
            and r.current is not None
            and (r.current > i_limit + cfg.over_current_margin_a)
        )
        h.over_i_since = (now if h.over_i_since is None else h.over_i_since) if over_i else None
        if h.over_i_since is not None and now - h.over_i_since >= cfg.debounce_s:
            causes["over_current"] = Cause(
                Severity.CRITICAL, f"{r.current:.1f} A above the limit {i_limit:.1f} A"
            )
