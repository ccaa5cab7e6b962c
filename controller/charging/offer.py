"""The flexibility offer: what the station could shed for 15, 30 and 60 minutes, and its cost.

The cost of a lower limit is counted in cars: the ready-pack forecast run with the lower
budget for the curtailment's length, then the demand-aware outlook (outlook.py) over four
hours against the same without it: the extra cars expected to leave without a pack, and the extra
packs short of `min_ready` when the curtailment ends. The offer for a length is the deepest
shed of 25, 50, 75 or 100 % of the present draw whose cost stays within half a car and half a
pack. Pure: run on a worker thread.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from pydantic import AwareDatetime, BaseModel, ConfigDict

from controller.charging.forecast import forecast
from controller.charging.outlook import Returned, TypeOutlook, outlooks
from controller.charging.power import Demand, PowerModel
from controller.config.power import DemandConfig

LENGTHS_MIN = (15, 30, 60)
SHEDS = (0.25, 0.5, 0.75, 1.0)
LOOK_MIN = 240  # the cost is counted over this long from now (a peak outlasts a cut)
MAX_CARS = 0.5  # extra cars turned away that a shed in the offer may cost
MAX_SHORT = 0.5  # extra packs short of the floor likewise


class OfferStep(BaseModel):
    """One shed and what it would cost."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    limit_kw: float
    shed_kw: float
    turned_away: float  # extra cars expected to leave without a pack (over four hours)
    below_floor: float  # extra packs short of min_ready when it ends


class FlexOffer(BaseModel):
    """Published on `<root>/flex` (docs/mqtt-api.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    at: AwareDatetime
    draw_kw: float  # the chargers' draw now (as budgeted: amps x BMS voltage limit)
    offer_kw: dict[str, float]  # "15", "30", "60" -> kW it can shed at a cost within bounds
    steps: dict[str, list[OfferStep]]


@dataclass(frozen=True, slots=True)
class OfferCheck:
    """A limit judged against the offer: within it or not, and its predicted cost."""

    within: bool
    predicted: dict[str, float] | None
    text: str


@dataclass(frozen=True, slots=True)
class Inputs:
    """What a cost is computed from (a snapshot of the slot control's)."""

    model: PowerModel
    demands: Sequence[Demand]
    budget_w: float | None
    ready: Mapping[str, int]
    demand: DemandConfig
    min_ready: Mapping[str, int]
    at: datetime
    margin_w: float
    draw_kw: float  # the chargers' draw now (as budgeted: amps x BMS voltage limit)
    returned: Returned  # what decides when the packs the cars bring are charged
    waiting: Mapping[str, int]  # per type: cars refused lately for want of a pack


def cost(
    inputs: Inputs, limit_kw: float, seconds: float,
    base: dict[str, TypeOutlook] | None = None,
) -> OfferStep:  # fmt: skip
    """What holding the station to `limit_kw` for `seconds` from now would cost.

    `base`: the outlook without it (`baseline`), when several costs share one.
    """
    minutes = max(1, min(LOOK_MIN, math.ceil(seconds / 60.0)))
    cut_w = max(0.0, limit_kw * 1000.0 - inputs.margin_w)
    if base is None or str(minutes) not in next(iter(base.values()), _EMPTY).expected:
        base = baseline(inputs, (minutes,))
    cut = _outlook(inputs, (cut_w, seconds), sorted({minutes, LOOK_MIN}))
    end, last = str(minutes), str(LOOK_MIN)
    extra_cars = sum(cut[t].turned_away[last] - base[t].turned_away[last] for t in cut)
    extra_short = sum(cut[t].below_floor[end] - base[t].below_floor[end] for t in cut)
    return OfferStep(
        limit_kw=round(limit_kw, 1),
        # The chargers' share under the limit is the limit less the margin.
        shed_kw=round(max(0.0, inputs.draw_kw - (limit_kw - inputs.margin_w / 1000.0)), 1),
        turned_away=round(max(0.0, extra_cars), 2),
        below_floor=round(max(0.0, extra_short), 2),
    )


def baseline(inputs: Inputs, lengths: tuple[int, ...] = LENGTHS_MIN) -> dict[str, TypeOutlook]:
    """The outlook as things are, at the ends of `lengths` and over the four hours."""
    return _outlook(inputs, None, sorted({*lengths, LOOK_MIN}))


def build_offer(inputs: Inputs) -> FlexOffer:
    """The offer for 15, 30 and 60 minutes at the present draw (one baseline for all)."""
    draw_kw = inputs.draw_kw
    base = baseline(inputs)
    steps: dict[str, list[OfferStep]] = {}
    offer: dict[str, float] = {}
    for length in LENGTHS_MIN:
        mine = [cost(inputs, draw_kw * (1 - shed), length * 60.0, base) for shed in SHEDS]
        steps[str(length)] = mine
        fine = [s.shed_kw for s in mine if s.turned_away <= MAX_CARS and s.below_floor <= MAX_SHORT]
        offer[str(length)] = max(fine, default=0.0)
    return FlexOffer(at=inputs.at, draw_kw=round(draw_kw, 1), offer_kw=offer, steps=steps)


def judge(step: OfferStep) -> OfferCheck:
    """Whether a limit's cost is within the offer's bounds, said for a person."""
    within = step.turned_away <= MAX_CARS and step.below_floor <= MAX_SHORT
    text = (
        f"{step.limit_kw:g} kW would cost about {step.turned_away:g} car(s) turned away and"
        f" {step.below_floor:g} ready pack(s) below the floor"
    )
    predicted = {"turned_away": step.turned_away, "below_floor": step.below_floor}
    return OfferCheck(within, predicted, text)


_EMPTY = TypeOutlook(expected={}, low={}, high={}, cars={}, turned_away={}, below_floor={})


def _outlook(
    inputs: Inputs, cut: tuple[float, float] | None, horizons: Sequence[int]
) -> dict[str, TypeOutlook]:
    fc = forecast(
        inputs.model, inputs.demands, inputs.budget_w, inputs.ready, horizon_min=LOOK_MIN, cut=cut
    )
    return outlooks(
        inputs.demand, fc.supply_s, inputs.ready, inputs.min_ready, inputs.at, horizons,
        inputs.returned, fc.spare_w, inputs.waiting,
    )  # fmt: skip
