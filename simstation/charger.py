"""Physics of one slot: a CC-CV charger and the pack in it.

The pack's open-circuit voltage rises linearly with SoC from 3.30 to 4.20 V per cell; the
charger pushes constant current until the terminal voltage (OCV + I * R) reaches the BMS
limit, then holds that voltage while the current tapers, and stops (status full) when the
current falls below the cutoff or the target SoC is reached. Joule heat warms the pack, which
cools toward ambient. Faults are injected on top.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from drivers.modbus.profile import SlotStatus

CELL_OCV_EMPTY = 3.30
NOMINAL_V = 360.0  # a pack's nominal voltage (96 cells x 3.75 V): kWh -> Ah
CHARGE_V = 403.2  # a full pack's charge voltage (96 x 4.2 V): a charger's kW from its amps
CELL_OCV_FULL = 4.20
CUTOFF_C_RATE = 0.025  # stop when the CV current falls below this fraction of capacity
MAX_STEP_S = 10.0  # integrate in steps of at most this much simulated time


@dataclass
class SimPack:
    """A battery pack: identity and state; moved between slots, robot and vehicles."""

    serial: str
    pack_type: str = "STD75"
    capacity_kwh: float = 75.0
    soc: float = 30.0
    soh: float = 96.0
    temp_c: float = 25.0
    cells_series: int = 96
    internal_resistance_ohm: float = 0.10
    bms_current_max: float = 200.0
    heat_capacity_j_per_k: float = 450_000.0

    @property
    def bms_voltage_max(self) -> float:
        """Charge voltage limit the BMS reports."""
        return CELL_OCV_FULL * self.cells_series

    @property
    def capacity_ah(self) -> float:
        """Usable capacity in ampere-hours at nominal voltage, scaled by health."""
        nominal_v = (CELL_OCV_EMPTY + CELL_OCV_FULL) / 2 * self.cells_series
        return self.capacity_kwh * 1000 / nominal_v * self.soh / 100

    def ocv(self) -> float:
        """Open-circuit voltage at the present SoC."""
        cell = CELL_OCV_EMPTY + (CELL_OCV_FULL - CELL_OCV_EMPTY) * self.soc / 100
        return cell * self.cells_series


@dataclass
class SimCharger:
    """One slot's charger; `step()` advances it by simulated seconds."""

    max_current_a: float = 150.0
    target_soc: float = 100.0
    cooling_w_per_k: float = 200.0
    pack: SimPack | None = None
    enabled: bool = False
    limit_a: float = 0.0
    fault_code: int = 0
    disabled: bool = False
    full: bool = False
    current_a: float = 0.0
    voltage_v: float = 0.0
    energy_wh: float = 0.0
    heartbeat: int = 0
    temp_override_c: float | None = None
    runaway_c_per_min: float = 0.0

    @property
    def status(self) -> SlotStatus:
        """What the charger's status register says."""
        if self.disabled:
            return SlotStatus.DISABLED
        if self.fault_code:
            return SlotStatus.FAULT
        if self.pack is None:
            return SlotStatus.EMPTY
        if self.full:
            return SlotStatus.FULL
        return SlotStatus.CHARGING if self.current_a > 0 else SlotStatus.IDLE

    @property
    def power_w(self) -> float:
        """Power into the pack."""
        return self.voltage_v * self.current_a

    def insert(self, pack: SimPack) -> None:
        """A pack arrives in the slot."""
        if self.pack is not None:
            raise RuntimeError(f"slot already holds pack {self.pack.serial}")
        self.pack = pack
        self.energy_wh = 0.0
        self.current_a = 0.0
        self.voltage_v = pack.ocv()
        self.full = pack.soc >= self.target_soc
        self.temp_override_c = None
        self.runaway_c_per_min = 0.0

    def remove(self) -> SimPack:
        """The pack leaves the slot."""
        if self.pack is None:
            raise RuntimeError("slot is empty")
        pack, self.pack = self.pack, None
        self.current_a = self.voltage_v = 0.0
        self.full = False
        self.temp_override_c = None
        self.runaway_c_per_min = 0.0
        return pack

    def step(self, dt: float, ambient_c: float) -> None:
        """Advance `dt` simulated seconds."""
        self.heartbeat = (self.heartbeat + 1) & 0xFFFF
        steps = max(1, math.ceil(dt / MAX_STEP_S))
        for _ in range(steps):
            self._step(dt / steps, ambient_c)

    def _step(self, dt: float, ambient_c: float) -> None:
        pack = self.pack
        if pack is None:
            self.current_a = self.voltage_v = 0.0
            return
        current = 0.0
        can_charge = (
            self.enabled
            and not self.disabled
            and not self.fault_code
            and not self.full
            and self.limit_a > 0
        )
        if can_charge:
            r = pack.internal_resistance_ohm
            cc = min(self.limit_a, pack.bms_current_max, self.max_current_a)
            cv = max(0.0, (pack.bms_voltage_max - pack.ocv()) / r)
            current = min(cc, cv)
            # Full when the constant-voltage taper falls below the cutoff (a low limit in the
            # constant-current phase is not "full").
            tapered = cv < cc and current < CUTOFF_C_RATE * pack.capacity_ah
            if tapered or pack.soc >= self.target_soc:
                self.full = True
                current = 0.0
        ocv = pack.ocv()
        self.current_a = current
        self.voltage_v = ocv + current * pack.internal_resistance_ohm
        if current > 0:
            pack.soc = min(100.0, pack.soc + current * dt / (pack.capacity_ah * 3600) * 100)
            self.energy_wh += self.voltage_v * current * dt / 3600
        # Thermal: Joule heat in, cooling toward ambient out; faults override.
        if self.runaway_c_per_min:
            pack.temp_c += self.runaway_c_per_min * dt / 60
        elif self.temp_override_c is not None:
            pack.temp_c = self.temp_override_c
        else:
            heat = current**2 * pack.internal_resistance_ohm
            cool = self.cooling_w_per_k * (pack.temp_c - ambient_c)
            pack.temp_c += (heat - cool) * dt / pack.heat_capacity_j_per_k

    @property
    def temp_max(self) -> float | None:
        """Hottest cell."""
        return None if self.pack is None else self.pack.temp_c + 1.0

    @property
    def temp_min(self) -> float | None:
        """Coldest cell."""
        return None if self.pack is None else self.pack.temp_c - 2.0
