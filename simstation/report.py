"""The report of a simulated day (`swapctl simulate`): one typed model, written as JSON and HTML.

Times are simulated seconds from the start of the simulated day (`t_s`), durations simulated
seconds. Every car that arrived is in `cars` with its outcome, so the accounting can be
checked: `arrivals == served + turned_away + waiting`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Model(BaseModel):
    """Base: frozen, no unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class StationSummary(Model):
    """What was simulated."""

    slots: int
    packs: dict[str, int]  # pack type -> packs stocked at the start
    charger_kw: float  # one charger's maximum
    grid_limit_kw: float | None
    policy: str  # power policy
    bays: int = 1  # swap bays, each with all of the above (`bays` below for each one)


class Car(Model):
    """One car and what became of it."""

    vehicle_id: str
    pack_type: str
    soc: float  # of the pack it brought
    arrived_s: float
    outcome: Literal["served", "turned_away", "waiting", "failed"]
    # failed: its swap ended aborted or failed (counted in served's complement, see Report)
    wait_s: float | None = None  # arrival to swap start (authorised), for served/failed
    swap_s: float | None = None  # swap start to its end
    swap_id: str | None = None
    reason: str | None = None  # why turned away / failed
    # How long it waited, whatever became of it: to its swap's start, to giving up (turned
    # away), or to the end of the run (still waiting).
    waited_s: float | None = None
    bay: int = 1  # the bay whose queue it joined


class HourStat(Model):
    """One hour of the run (the last one may be shorter)."""

    start_s: float  # simulated seconds since midnight
    arrived: int
    served: int  # swaps that ended completed within the hour
    failed: int
    turned_away: int  # cars that gave up within the hour
    # Shares of the hour, from the per-minute samples: a swap under way; no swap although cars
    # were waiting (no charged pack of their type, or the station blocked); nobody there.
    busy: float
    waiting_for_pack: float
    idle: float
    grid_kw: float = 0.0  # mean charging power over the hour (measured: volts x amps)
    # The same as the controller budgets it against the grid limit (amps x the BMS voltage
    # limit, a few % above the measured power): what `binding` compares with the usable grid.
    budget_kw: float = 0.0
    # What held the hour's swaps back (`binding_limit`): "bay" (a swap under way nearly all
    # the hour), "charged packs: grid" or "charged packs: chargers" (cars waited with the bay
    # free, while charging ran at the grid limit as the controller budgets it, `budget_kw`, or
    # below it, at the chargers' own current),
    # or "none" (cars were served as they came).
    binding: str = "none"


class LifeSample(Model):
    """The daemon's process and journal after each simulated hour (a long run's leak check)."""

    t_s: float  # simulated seconds since midnight of the first day
    served: int  # swaps completed so far
    rss_kib: int  # resident memory now (on virtual time the simulator shares the process)
    fds: int  # open file descriptors
    threads: int
    journal_kib: int  # the journal's files (database, WAL) on disk
    sim_kib: int = 0  # what the simulator holds of the run by then (`Report.sim_records_kib`)


class RecordCheck(Model):
    """The swap records' chain verified at the end of the run (`swapctl records verify`)."""

    ok: bool
    count: int
    problem: str | None = None


class Sample(Model):
    """The station at one moment (every `sample_every_s` simulated seconds)."""

    t_s: float
    grid_kw: float  # total charging power, measured at the simulated rack(s)
    budget_kw: float = 0.0  # the same as the controller budgets it (amps x BMS voltage limit)
    ready: dict[str, int]  # dispensable packs per type (the station's own `packs_ready`)
    queue: int  # cars waiting (not yet authorised)
    phase: str  # the station's swap phase
    # The station's forecasts then, per type: ready packs at +5..60 min with nobody arriving
    # (`forecast`) and with the cars expected (`outlook`, the demand-aware one), and the
    # source of the power limit that bound.
    forecast: dict[str, dict[str, int]] = Field(default_factory=dict)
    outlook: dict[str, dict[str, float]] = Field(default_factory=dict)
    binding: str | None = None


class AlarmEntry(Model):
    """An alarm raised or cleared (from the station's events)."""

    t_s: float
    kind: Literal["raised", "cleared"]
    scope: str
    code: str
    severity: str
    message: str


class FaultEntry(Model):
    """A fault the scenario injected."""

    t_s: float
    what: str


class Percentiles(Model):
    """A distribution in a few numbers (simulated seconds)."""

    n: int
    mean: float
    p50: float
    p90: float
    p99: float
    max: float


class BayStat(Model):
    """One bay of a site of several: what it served and how its time went."""

    bay: int
    station_id: str
    arrivals: int  # cars that joined its queue
    served: int
    failed: int
    turned_away: int
    waiting: int
    busy: float  # shares of the run (`HourStat`'s, over the whole run)
    waiting_for_pack: float
    idle: float
    energy_kwh: float
    swap_p50_s: float
    records: RecordCheck | None = None


class ForecastCheck(Model):
    """A forecast against what was ready later: its error over the run, busy or quiet hours."""

    forecast: Literal["static", "demand"]  # `forecast` (nobody arriving) or `outlook`
    horizon_min: int
    hours: Literal["busy", "quiet"]  # busy: the profile expects at least its mean an hour
    n: int
    mae: float  # mean absolute error, packs
    bias: float  # mean of forecast - actual, packs
    within_one: float  # share within one pack


class GridEventResult(Model):
    """A grid operator's limit: what the station answered, and its predicted cost."""

    t_s: float
    limit_kw: float
    duration_min: float
    code: str | None  # the reply's (None: unanswered)
    message: str = ""
    predicted_turned_away: float | None = None
    predicted_below_floor: float | None = None


class Report(Model):
    """Everything a simulated day came to."""

    scenario: str
    description: str = ""
    station: StationSummary
    speed: float  # simulated seconds per wall second (on virtual time: as it came out)
    clock: Literal["wall", "virtual"] = "wall"  # how time ran (`swapctl simulate --clock`)
    start_s: float = 0.0  # simulated seconds since midnight at which the run began
    duration_s: float  # simulated seconds run
    wall_s: float  # wall-clock seconds it took
    arrivals: int
    served: int  # swaps completed
    failed: int = 0  # swaps that ended aborted or failed (the car left without a new pack)
    turned_away: int  # gave up waiting (max wait) before a swap started
    waiting: int  # still waiting (or in the bay) at the end
    waits: Percentiles  # of the cars whose swap started
    # Of every car: the turned-away ones at their time to give up, the waiting ones until the end.
    waits_all: Percentiles | None = None
    hours: list[HourStat] = Field(default_factory=list)
    swap_times: Percentiles  # of the completed swaps
    step_s: dict[str, Percentiles]  # per swap phase (lifting, removing, ...)
    cars: list[Car]
    samples: list[Sample]
    alarms: list[AlarmEntry] = Field(default_factory=list)
    faults: list[FaultEntry] = Field(default_factory=list)
    energy_kwh: float = 0.0
    energy_by_hour: list[float] = Field(default_factory=list)  # kWh in each hour of the run
    energy_cost: float | None = None  # at the tariff's prices (None: no tariff)
    cost_per_swap: float | None = None
    currency: str | None = None
    # The cheapest the energy charged could have cost: each pack's at the lowest price of its
    # stay in a slot (simstation/ledger.py); and the energy in the store's packs at the start
    # and the end (a policy that ends with an emptier store bought less, not cheaper).
    energy_cost_bound: float | None = None
    store_kwh_start: float | None = None
    store_kwh_end: float | None = None
    binding_by_hour: list[str] = Field(default_factory=list)  # the limit that bound, per hour
    forecast_check: list[ForecastCheck] = Field(default_factory=list)
    grid_events: list[GridEventResult] = Field(default_factory=list)
    peak_grid_kw: float = 0.0
    # The machine while it ran: its 1-minute load average at the start, the highest seen, at
    # the end, and its cores (a loaded machine delays a wall-clock-scaled run's round trips).
    load: list[float] = Field(default_factory=list)  # [start, max, end]
    cores: int = 0
    life: list[LifeSample] = Field(default_factory=list)  # one per simulated hour
    records: RecordCheck | None = None
    # What the simulator itself holds of the run (its per-car, per-swap and per-minute records)
    # at the end: on virtual time it shares the daemon's process, so this much of the RSS's
    # growth is the simulator's, not the daemon's.
    sim_records_kib: int = 0
    # Wall time only: how late the run's own 0.25 s timer woke at worst, and how often by more than
    # 0.1 s (the loop could not keep up: every handover was late by as much, times the speed).
    overrun_max_s: float = 0.0
    overruns: int = 0
    # A site of several bays (`station.bays`): each bay's own figures; the ones above are the
    # site's (cars, hours and samples over every bay, alarms' scopes prefixed `bay N/`).
    bays: list[BayStat] = Field(default_factory=list)

    def accounted(self) -> bool:
        """Every arrival is served, failed, turned away or still waiting."""
        return self.arrivals == self.served + self.failed + self.turned_away + self.waiting


def percentiles(values: list[float]) -> Percentiles:
    """Summary of `values` (all zero when empty)."""
    if not values:
        return Percentiles(n=0, mean=0.0, p50=0.0, p90=0.0, p99=0.0, max=0.0)
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return Percentiles(
        n=len(ordered),
        mean=round(sum(ordered) / len(ordered), 2),
        p50=round(at(0.5), 2),
        p90=round(at(0.9), 2),
        p99=round(at(0.99), 2),
        max=round(ordered[-1], 2),
    )
