"""What the slot control sees coming: the cars, their packs, the cost of a lower limit.

With `power.demand`, after every ready-pack forecast (forecast.py) it works out, on worker
threads: the cost policy's plan (plan.py: which slots wait for a cheaper hour), the
demand-aware outlook (outlook.py) at most every `OUTLOOK_EVERY_S`, and the flexibility offer
(offer.py) every `OFFER_EVERY_S`. It also keeps what they learn from the station: the SoC of
the packs the cars bring back, and the cars refused lately for want of a charged pack.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import TYPE_CHECKING

from controller.charging.forecast import Forecast
from controller.charging.offer import FlexOffer, Inputs, OfferCheck, build_offer, cost
from controller.charging.offer import judge as judge_offer
from controller.charging.outlook import Returned, TypeOutlook, outlooks
from controller.charging.plan import plan_deferred
from controller.config.power import DemandConfig
from controller.plant.slots import SlotView
from drivers import clock as clocks

if TYPE_CHECKING:
    from controller.charging.control import SlotControl

_log = logging.getLogger(__name__)

WAITING_KEEP = 200  # cars refused for want of a pack remembered at most
RETURNED_KEEP = 100  # returned packs' SoC remembered per type
NOMINAL_V = 400.0  # a pack's voltage until one is seen charging
OFFER_EVERY_S = 600.0  # the flexibility offer is made again this often
OUTLOOK_EVERY_S = 30.0  # the demand-aware outlook at most this often (the forecast: more)
HORIZONS = (5, 15, 30, 60)


class Foresight:
    """The demand-aware outlook, the cost plan and the offer of one `SlotControl`."""

    def __init__(self, control: SlotControl) -> None:
        self.control = control
        self.outlook: dict[str, TypeOutlook] = {}
        self.offer: FlexOffer | None = None
        self.deferred: dict[int, str] = {}  # slots the cost policy holds back now, and why
        self._offer_at: float | None = None  # the station's clock at the last offer
        self._outlook_at: float | None = None  # ... and at the last outlook
        self._serials: dict[int, str | None] = {}  # slot -> the pack last seen in it
        # pack type -> the SoC of the packs lately put into a slot (the cars' returned packs)
        self.returned_socs: dict[str, collections.deque[float]] = {}
        # vehicle -> (pack type, when) of the cars refused lately for want of a charged pack
        self._waiting_cars: dict[str, tuple[str, float]] = {}

    @property
    def active(self) -> bool:
        """Whether the station was given an arrival profile (`power.demand`)."""
        return self.control.config.power.demand is not None

    async def update(self, fc: Forecast) -> None:
        """After a forecast: the outlook, the cost plan, and the offer when it is due.

        Advice, not control: a failure is logged and the last results stand (the plan's
        deferrals are dropped, so that nothing waits on a plan that could not be made).
        """
        try:
            await self._update(fc)
        except Exception:  # noqa: BLE001 - the forecast task must go on whatever this does
            _log.exception("the demand-aware outlook, plan or offer failed")
            if self.deferred:
                self.deferred = {}
                self.control.touch(*self.control.book.slots)

    async def _update(self, fc: Forecast) -> None:
        inputs = self.inputs()
        if inputs is None:
            return
        now = self.control.clock()
        if self._outlook_at is None or now - self._outlook_at >= OUTLOOK_EVERY_S:
            self._outlook_at = now
            self.outlook = await asyncio.to_thread(
                outlooks, inputs.demand, fc.supply_s, inputs.ready, inputs.min_ready, inputs.at,
                HORIZONS, inputs.returned, fc.spare_w, inputs.waiting,
            )  # fmt: skip
        await self._replan(inputs)
        if self._offer_at is None or now - self._offer_at >= OFFER_EVERY_S:
            self._offer_at = now
            self.offer = await asyncio.to_thread(build_offer, inputs)

    async def assess_limit(
        self, kw: float, duration_s: float, inputs: Inputs | None = None
    ) -> OfferCheck:
        """What a limit of `kw` for `duration_s` would cost, and whether the offer covers it.

        `inputs`: the station as it was before the limit (default: as it is now).
        """
        inputs = inputs or self.inputs()
        if inputs is None:
            return OfferCheck(True, None, "no power.demand profile: the cost is not predicted")
        try:
            step = await asyncio.to_thread(cost, inputs, kw, duration_s)
        except Exception:  # noqa: BLE001 - a prediction that fails must not fail the limit
            _log.exception("the cost of a %g kW limit could not be predicted", kw)
            return OfferCheck(False, None, "its cost could not be predicted (see the log)")
        return judge_offer(step)

    def inputs(self) -> Inputs | None:
        """A snapshot of what the outlook, the plan and the offer are computed from."""
        c = self.control
        cfg = c.config.power
        if cfg.demand is None:
            return None
        alloc = c.allocation
        return Inputs(
            model=c.power,
            demands=list(c.demands),
            budget_w=alloc.budget_w,
            ready=c.ready_counts(),
            demand=cfg.demand,
            min_ready=dict(cfg.min_ready),
            at=clocks.localnow(),
            margin_w=cfg.safety_margin_kw * 1000.0,
            draw_kw=alloc.bound_w / 1000.0,
            returned=self._returned(cfg.demand),
            waiting=self.waiting_counts(cfg.demand.max_wait_min * 60.0),
        )

    async def _replan(self, inputs: Inputs) -> None:
        """The cost policy: which slots wait for a cheaper hour; shared again if that moved."""
        c = self.control
        cfg = c.config.power
        if cfg.policy != "cost":
            return
        deferred = await asyncio.to_thread(
            plan_deferred,
            inputs.demands,
            budget_w=inputs.budget_w,
            ready_now=inputs.ready,
            demand=inputs.demand,
            min_ready=inputs.min_ready,
            tariff=c.tariff,
            at=inputs.at,
            horizon_h=cfg.plan_horizon_h,
            ready_soc=c.config.swap.min_dispense_soc,
        )
        if deferred != self.deferred:
            self.deferred = deferred
            c.touch(*c.book.slots)

    def _returned(self, demand: DemandConfig) -> Returned:
        """What decides when the packs the cars bring are ready (outlook.recharge_of)."""
        c = self.control
        wanting = [d for d in c.demands if d.wants and d.volt_bound_v > 0]
        volts = sum(d.volt_bound_v for d in wanting) / len(wanting) if wanting else NOMINAL_V
        types = set(self.returned_socs) | set(demand.pack_mix) | set(c.ready_counts())
        return Returned(
            socs={t: list(self.returned_socs.get(t, ())) or [demand.returned_soc] for t in types},
            capacity_ah={t: c.power.pack_type(t).capacity_ah for t in types},
            ready_soc=c.config.swap.min_dispense_soc,
            max_current_a=c.config.charging.max_current_a,
            volts=volts,
            delay_min=demand.swap_s / 120.0,
        )

    def note_waiting(self, vehicle_id: str, pack_type: str) -> None:
        """A car was refused for want of a charged pack: it waits (for `max_wait_min`)."""
        self._waiting_cars.pop(vehicle_id, None)
        self._waiting_cars[vehicle_id] = (pack_type, self.control.clock())
        while len(self._waiting_cars) > WAITING_KEEP:
            del self._waiting_cars[next(iter(self._waiting_cars))]

    def note_served(self, vehicle_id: str) -> None:
        """A car's swap was authorised: it no longer waits."""
        self._waiting_cars.pop(vehicle_id, None)

    def waiting_counts(self, patience_s: float) -> dict[str, int]:
        """Cars per pack type refused for want of a pack within `patience_s` (still waiting)."""
        now = self.control.clock()
        counts: dict[str, int] = {}
        for pack_type, since in self._waiting_cars.values():
            if now - since <= patience_s:
                counts[pack_type] = counts.get(pack_type, 0) + 1
        return counts

    def note_returned(self, view: SlotView) -> None:
        """A pack newly in a slot that had been seen before: a car's, its SoC remembered."""
        r = view.fresh
        if r is None:
            return
        serial = r.pack_serial if r.pack_present else None
        seen = view.slot in self._serials and serial != self._serials[view.slot]
        if seen and serial and r.pack_type is not None and r.soc is not None:
            kept = self.returned_socs.setdefault(
                r.pack_type, collections.deque(maxlen=RETURNED_KEEP)
            )
            kept.append(r.soc)
        self._serials[view.slot] = serial
