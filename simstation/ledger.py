"""Energy by pack: what went into each pack while it sat in a slot, and the cheapest it could cost.

A pack's stay in a slot (from when it is seen there to when it is gone, or the run's end) is
one cycle: the energy charged into it then could have been bought at the cheapest minute of
the stay, and not earlier (it was in a car) nor later (it left, charged). The sum over every
cycle of its energy at that cheapest price is the bound a policy is measured against
(`Report.energy_cost_bound`, docs/power-management.md). Also the energy held by the packs in
the store at the start and the end (`store_kwh_start`, `store_kwh_end`): a policy that leaves
the store emptier has bought less, not cheaper.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class PackLedger:
    """Per pack cycle: when it began and the energy charged; the bound so far."""

    prices: Sequence[float] | None  # per minute of the day (None: no tariff)
    cycles: dict[str, tuple[float, float]] = field(default_factory=dict)  # serial -> (t0, kWh)
    where: dict[str, set[str]] = field(default_factory=dict)  # rack -> serials in it now
    rack_t: dict[str, float] = field(default_factory=dict)
    power: dict[str, dict[str, float]] = field(default_factory=dict)  # rack -> serial -> W
    store: dict[str, float] = field(default_factory=dict)  # rack -> kWh in its packs now
    start: dict[str, float] = field(default_factory=dict)  # rack -> kWh at its first step
    bound: float = 0.0

    @property
    def store_start(self) -> float | None:
        """KWh in the store's packs when the run began (each rack at its first step)."""
        return sum(self.start.values()) if self.start else None

    def on_tick(
        self, rack: str, day_s: float, packs: Sequence[tuple[str, float, float]], *, counting: bool
    ) -> None:
        """A rack's physics step at `day_s`: (serial, power W, kWh held) of every pack in it.

        The energy of the interval since the last step is the power the last step left (as
        the recorder counts it: the bound and the cost count the same energy).
        """
        last = self.rack_t.get(rack)
        before = self.power.get(rack, {})
        self.power[rack] = {serial: watts for serial, watts, _ in packs}
        self.rack_t[rack] = day_s
        self.store[rack] = sum(kwh for _, _, kwh in packs)
        if not counting:
            return
        self.start.setdefault(rack, self.store[rack])
        now = {serial for serial, _, _ in packs}
        for gone in self.where.get(rack, set()) - now:
            self._close(gone, day_s)
        self.where[rack] = now
        dt = 0.0 if last is None else max(0.0, day_s - last)
        for serial, _, _ in packs:
            t0, kwh = self.cycles.get(serial, (day_s, 0.0))
            self.cycles[serial] = (t0, kwh + before.get(serial, 0.0) * dt / 3.6e6)

    def close_all(self, day_s: float) -> None:
        """The run ends: every pack still in a slot ends its cycle now."""
        for serial in list(self.cycles):
            self._close(serial, day_s)

    def _close(self, serial: str, day_s: float) -> None:
        t0, kwh = self.cycles.pop(serial, (day_s, 0.0))
        if self.prices is not None and kwh > 0:
            self.bound += kwh * self.cheapest(t0, day_s)

    def cheapest(self, t0: float, t1: float) -> float:
        """The lowest price of any minute from `t0` to `t1` (seconds since midnight)."""
        assert self.prices is not None
        first, last = int(t0 // 60), int(t1 // 60)
        if last - first >= len(self.prices):
            return min(self.prices)
        return min(self.prices[m % len(self.prices)] for m in range(first, last + 1))
