"""What may be asked of the station's power, typed: limits at run time and day-ahead prices.

Parsed strictly where they come in (the MQTT command server adds its envelope); answered by
controller/charging/gridcmds.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

SOURCE_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"
MAX_DURATION_S = 7 * 24 * 3600.0


class PowerRequest(BaseModel):
    """What every request to the power management carries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    by: str | None = Field(default=None, max_length=64, description="who asks (journalled)")


class SetPowerLimit(PowerRequest):
    """Limit the station's charging power (kW) from a source until lifted, or for a while."""

    source: str = Field(
        pattern=SOURCE_PATTERN,
        description="who limits (operator, grid_operator, ocpp ...): one limit per source",
    )
    kw: float = Field(ge=0, le=100_000)
    duration_s: float | None = Field(default=None, gt=0, le=MAX_DURATION_S)
    until: AwareDatetime | None = Field(default=None, description="ends then (RFC 3339)")
    if_within_offer: bool = Field(
        default=False,
        description="refuse it (with its predicted cost) unless the flexibility offer covers it",
    )


class ClearPowerLimit(PowerRequest):
    """Lift the limit of a source set at run time."""

    source: str = Field(pattern=SOURCE_PATTERN)


class Price(BaseModel):
    """A price for an interval."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: AwareDatetime
    end: AwareDatetime
    price: float = Field(ge=0, le=1000, description="per kWh, in the tariff's currency")


class SetTariff(PowerRequest):
    """Day-ahead prices: they win over the configured schedule where they cover."""

    prices: list[Price] = Field(min_length=1, max_length=200)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a power request did: said for a person, and as data for a program (`result`)."""

    message: str
    result: Mapping[str, Any] | None = field(default=None)
