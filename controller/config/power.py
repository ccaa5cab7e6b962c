"""The `[power]` section: the grid connection, its circuits, limits by time, tariffs, demand.

docs/power-management.md explains every key; controller/config/checks.py checks that the
circuit tree closes (every rack on a circuit, every parent known, no cycle).
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import Field, model_validator

from controller.config.base import Name, Seconds, Section

HHMM = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"


class TimeLimit(Section):
    """A lower grid limit for part of the day (station local time; may wrap past midnight)."""

    start: str = Field(pattern=HHMM, description="HH:MM")
    end: str = Field(pattern=HHMM, description="HH:MM")
    limit_kw: float = Field(ge=0, le=100_000)


class PackTypeConfig(Section):
    """What the forecast assumes of a pack type until it has watched one charge."""

    capacity_ah: float = Field(default=208.0, gt=0, le=10_000, description="at 100 % SoH")
    taper_start_soc: float = Field(
        default=80.0,
        ge=10,
        lt=100,
        description="SoC where the constant-voltage taper begins at the charger's maximum"
        " current (learned from the packs once they taper)",
    )


class Circuit(Section):
    """A node between the grid connection and the racks: a feeder, a transformer, a breaker."""

    name: Name
    parent: Name | None = Field(
        default=None, description="the circuit it hangs on; none: the grid connection itself"
    )
    limit_kw: float = Field(gt=0, le=100_000, description="the most its racks may draw together")


class TariffPeriod(Section):
    """One price for part of the day (station local time, HH:MM; may wrap past midnight)."""

    start: str = Field(pattern=HHMM, description="HH:MM")
    end: str = Field(pattern=HHMM, description="HH:MM; equal to start: the whole day")
    price: float = Field(ge=0, le=1000, description="per kWh, in the tariff's currency")
    name: str | None = Field(default=None, max_length=32, description="peak, flat, valley ...")


class TariffConfig(Section):
    """A time-of-use price schedule (day-ahead prices set over MQTT override it where given)."""

    currency: str = Field(default="CNY", min_length=1, max_length=8)
    source: str | None = Field(
        default=None, max_length=400, description="where the prices are from"
    )
    periods: list[TariffPeriod] = Field(min_length=1, max_length=48)

    @model_validator(mode="after")
    def _covers_the_day(self) -> Self:
        minutes = [0] * 1440
        for period in self.periods:
            for m in _minutes(period.start, period.end):
                minutes[m] += 1
        gap = next((m for m, n in enumerate(minutes) if n == 0), None)
        if gap is not None:
            raise ValueError(
                f"the periods must cover the whole day: {gap // 60:02d}:{gap % 60:02d} is in none"
            )
        twice = next((m for m, n in enumerate(minutes) if n > 1), None)
        if twice is not None:
            raise ValueError(
                f"the periods must not overlap: {twice // 60:02d}:{twice % 60:02d} is in two"
            )
        return self


def _minutes(start: str, end: str) -> range | list[int]:
    """The minutes of the day from `start` up to `end` (wrapping past midnight)."""
    a = int(start[:2]) * 60 + int(start[3:])
    b = int(end[:2]) * 60 + int(end[3:])
    if a < b:
        return range(a, b)
    return [*range(a, 1440), *range(b)]


PerHour = Annotated[float, Field(ge=0, le=10_000)]


class DemandConfig(Section):
    """What the station expects of its cars: the demand-aware forecast and the cost policy."""

    arrivals_per_hour: list[PerHour] = Field(
        min_length=24,
        max_length=24,
        description="expected cars an hour, 00:00 to 23:00 station local time",
    )
    pack_mix: dict[str, Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=dict,
        description="pack type -> share of the cars (none given: an even share of every type"
        " the station knows)",
    )
    swap_s: float = Field(
        default=300.0,
        gt=0,
        le=3600,
        description="a swap in the bay, start to end (a returned pack is stored about half-way)",
    )
    max_wait_min: float = Field(
        default=15.0, gt=0, le=1440, description="how long a car waits for a pack before it leaves"
    )
    returned_soc: float = Field(
        default=30.0,
        ge=0,
        le=100,
        description="the SoC the cars' packs come back with, until the station has seen some",
    )


class PowerConfig(Section):
    """Sharing the grid connection among the chargers (docs/power-management.md)."""

    grid_limit_kw: float | None = Field(
        default=None, gt=0, le=100_000, description="the station's grid limit; none: unlimited"
    )
    safety_margin_kw: float = Field(default=0.0, ge=0, le=100_000)
    charger_max_kw: float = Field(
        default=60.0,
        gt=0,
        le=1000,
        description="the most one charger can draw; a stale or faulted slot counts at this",
    )
    time_limits: list[TimeLimit] = Field(default_factory=list, max_length=48)
    policy: Literal["demand", "equal", "cost"] = "demand"
    circuits: list[Circuit] = Field(
        default_factory=list, max_length=256, description="feeders between grid and racks"
    )
    tariff: TariffConfig | None = None
    demand: DemandConfig | None = None
    plan_horizon_h: float = Field(
        default=12.0, ge=1, le=48, description="how far ahead the cost policy plans"
    )
    min_ready: dict[str, int] = Field(
        default_factory=dict, description="pack type -> ready packs to keep on hand"
    )
    min_current_a: float = Field(
        default=5.0, ge=0, le=100, description="below this a charger waits for power instead"
    )
    derate_hot_c: float = Field(
        default=35.0, ge=0, le=60, description="above this the current falls linearly to the"
        " supervision's charge_temp_max_c",
    )  # fmt: skip
    derate_cold_c: float = Field(
        default=10.0, ge=-30, le=40, description="below this the current falls linearly to"
        " the supervision's charge_temp_min_c",
    )  # fmt: skip
    pack_types: dict[str, PackTypeConfig] = Field(default_factory=dict)
    forecast_every_s: Seconds = 5.0

    @model_validator(mode="after")
    def _derate_order(self) -> Self:
        if self.derate_cold_c >= self.derate_hot_c:
            raise ValueError("derate_cold_c must be below derate_hot_c")
        if self.policy == "cost" and (self.tariff is None or self.demand is None):
            raise ValueError("policy 'cost' needs [power.tariff] and [power.demand]")
        return self
