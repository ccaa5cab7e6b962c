"""A simulated day at a station (`swapctl simulate`): the scenario file, validated.

A scenario is TOML: the station (slots, packs, chargers, grid limit, power policy), the cars
(arrivals, pack types, the SoC they bring, how long they wait), the faults to inject and the
simulated operator who clears them. Errors are reported as the station config's are, one line
each: `FILE: key.path: message (got VALUE)` (`controller.config.loader`).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from controller.config.loader import _message, _show, _suggest
from controller.config.model import NumbersNotBools
from controller.config.power import TariffConfig
from controller.config.toml import read_toml
from controller.errors import ConfigError, ConfigIssue
from drivers.errors import format_loc
from simstation.arrivals import read_day, returned_soc, sample_day

DAY_S = 86_400.0
# The sample days' daily profile (urban, DOMAIN.md): quiet at night, busy 08:00-21:00.
URBAN_PROFILE = (
    1.0, 0.6, 0.2, 0.1, 0.1, 0.3, 1.0, 3.0, 6.0, 6.0, 5.5, 5.0,
    5.5, 5.5, 5.0, 5.0, 5.5, 6.5, 7.0, 6.5, 5.5, 4.0, 2.5, 1.5,
)  # fmt: skip
# Pack types the simulator knows how big to make (kWh); others are 75 kWh.
PACK_KWH = {"STD75": 75.0, "LR100": 100.0}


class Model(NumbersNotBools):
    """Base: frozen, no unknown keys, no `true` for a number."""

    model_config = ConfigDict(frozen=True, extra="forbid")


Hour = Annotated[float, Field(ge=0, le=48)]
Minutes = Annotated[float, Field(gt=0, le=2880)]
PackType = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_.-]+$")]


class SimCircuit(Model):
    """A circuit between the grid connection and some of the simulated racks."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    parent: str | None = None
    limit_kw: float = Field(gt=0, le=100_000)
    racks: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=list, description="1 = the first simulated rack"
    )


class StationSpec(Model):
    """The simulated station and its controller's power settings."""

    slots: int = Field(ge=2, le=200)
    rack_slots: int = Field(default=12, ge=1, le=64, description="slots per simulated rack")
    packs: dict[PackType, Annotated[int, Field(ge=0)]] = Field(min_length=1)
    initial_soc: tuple[float, float] = (90.0, 100.0)
    charger_max_a: float = Field(default=150.0, gt=0, le=600)
    grid_limit_kw: float | None = Field(default=None, gt=0, le=100_000)
    safety_margin_kw: float = Field(default=0.0, ge=0, le=100_000)
    policy: Literal["demand", "equal", "cost"] = "demand"
    min_ready: dict[PackType, Annotated[int, Field(ge=0, le=100)]] = Field(default_factory=dict)
    # A time-of-use tariff (the report prices the energy with it; the cost policy plans by it).
    tariff: TariffConfig | None = None
    circuits: list[SimCircuit] = Field(default_factory=list, max_length=64)
    # The daemon is told the scenario's expected arrivals per hour ([power.demand]): the
    # demand-aware forecast, the cost policy and the flexibility offer use them.
    demand_profile: bool = True
    swap_s: float = Field(default=240.0, gt=0, le=3600, description="the daemon's bay time")
    min_dispense_soc: float = Field(default=90.0, ge=10, le=100)
    # kWh of a pack type (beside the known STD75 and LR100; any other type is 75 kWh).
    pack_kwh: dict[PackType, Annotated[float, Field(gt=0, le=1000)]] = Field(default_factory=dict)
    # Swap bays at the site, each all of the above (its own racks, packs, chargers, grid
    # connection) under its own daemon; the cars arrive once for the site and pick a bay.
    bays: int = Field(default=1, ge=1, le=8)

    def kwh(self, pack_type: str) -> float:
        """A pack type's capacity, kWh."""
        return self.pack_kwh.get(pack_type, PACK_KWH.get(pack_type, 75.0))

    @model_validator(mode="after")
    def _fits(self) -> StationSpec:
        lo, hi = self.initial_soc
        if not 0 <= lo <= hi <= 100:
            raise ValueError("initial_soc must be [low, high] with 0 <= low <= high <= 100")
        total = sum(self.packs.values())
        if total >= self.slots:
            raise ValueError(
                f"{total} packs need at least {total + 1} slots (a swap stores the returned"
                f" pack in a free slot before it fetches the charged one); slots = {self.slots}"
            )
        return self


class PoissonArrivals(Model):
    """Cars at random (a Poisson process) with an hourly profile."""

    kind: Literal["poisson"]
    per_day: float = Field(gt=0, le=10_000, description="expected cars in 24 h")
    hourly: list[Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: list(URBAN_PROFILE), min_length=24, max_length=24
    )

    @model_validator(mode="after")
    def _some(self) -> PoissonArrivals:
        if not any(self.hourly):
            raise ValueError("hourly: at least one hour must have a weight > 0")
        return self


class FileArrivals(Model):
    """Cars at the times of a file (one `YYYY-M-D H:MM:SS` per line) or a shipped sample day."""

    kind: Literal["file"]
    path: str = Field(min_length=1, description="relative to the scenario file, or a sample day")


class GammaSoc(Model):
    """SoC of the arriving packs, Gamma(k, theta) %, clipped to 3-85 (the sample project's)."""

    k: float = Field(default=3.0, gt=0, le=100)
    theta: float = Field(default=12.0, gt=0, le=100)


class RangeSoc(Model):
    """SoC of the arriving packs, uniform in a range."""

    range: tuple[float, float]

    @model_validator(mode="after")
    def _ordered(self) -> RangeSoc:
        lo, hi = self.range
        if not 0 <= lo <= hi <= 100:
            raise ValueError("range must be [low, high] with 0 <= low <= high <= 100")
        return self


class FaultBase(Model):
    """When a fault strikes (hour of the day) and for how long, in simulated minutes."""

    kind: str
    at_h: Hour
    duration_min: Minutes | None = None  # default per kind


class RobotJam(FaultBase):
    """The robot jams half-way through the next command of kind `command` from `at_h` on."""

    kind: Literal["robot_jam"]
    command: Literal["UNLOCK", "REMOVE", "STORE", "FETCH", "INSTALL", "LOCK"] = "REMOVE"


class RackOffline(FaultBase):
    """A rack stops answering (its server goes away) for `duration_min` (default 10)."""

    kind: Literal["rack_offline"]
    rack: int = Field(default=1, ge=1, description="1 = the first simulated rack")


class DoorOpen(FaultBase):
    """A door of the next car in the bay opens mid-swap (lift up) for `duration_min` (1)."""

    kind: Literal["door_open"]


class ChargerFault(FaultBase):
    """A slot's charger reports a fault `code` for `duration_min` (default 30)."""

    kind: Literal["charger_fault"]
    slot: int = Field(ge=1)
    code: int = Field(default=7, ge=1, le=65535)


class Estop(FaultBase):
    """The E-stop chain opens for `duration_min` (default 2)."""

    kind: Literal["estop"]


Fault = Annotated[
    RobotJam | RackOffline | DoorOpen | ChargerFault | Estop, Field(discriminator="kind")
]
DEFAULT_DURATION_MIN = {
    "robot_jam": 0.0,
    "rack_offline": 10.0,
    "door_open": 1.0,
    "charger_fault": 30.0,
    "estop": 2.0,
}


class FaultRate(Model):
    """Faults of one kind at random (Poisson), `per_day` on average."""

    kind: Literal["robot_jam", "rack_offline", "door_open", "charger_fault", "estop"]
    per_day: float = Field(gt=0, le=1000)
    duration_min: Minutes | None = None


class GridEvent(Model):
    """A limit from the grid operator at `at_h` for `duration_min` (set_power_limit over MQTT)."""

    at_h: Hour
    duration_min: Minutes
    kw: float | None = Field(default=None, ge=0, le=100_000)
    share: float | None = Field(default=None, ge=0, le=1, description="of grid_limit_kw")
    source: str = Field(default="grid_operator", pattern=r"^[a-z][a-z0-9_-]{0,31}$")

    @model_validator(mode="after")
    def _one_size(self) -> GridEvent:
        if (self.kw is None) == (self.share is None):
            raise ValueError("give kw or share (of station.grid_limit_kw), one of them")
        return self


class Operator(Model):
    """The simulated operator: resets a swap fault (or E-stop) this long after it stopped."""

    reset_after_min: float = Field(default=5.0, ge=0, le=1440)


class Scenario(Model):
    """A simulated day (or part of one) at a station."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    speed: float = Field(default=720.0, gt=0, le=5000, description="simulated s per wall s")
    seed: int = 1
    start_h: Hour = 0.0
    # Up to a year: the arrivals' hourly profile repeats every day (a long life's leak check).
    duration_h: float | None = Field(default=None, gt=0, le=24 * 366)
    end_h: float | None = Field(default=None, gt=0, le=48)
    max_wait_min: float = Field(default=15.0, gt=0, le=1440)
    station: StationSpec
    arrivals: PoissonArrivals | FileArrivals = Field(discriminator="kind")
    pack_mix: dict[PackType, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)
    soc: GammaSoc | RangeSoc = GammaSoc()
    operator: Operator = Operator()
    faults: list[Fault] = Field(default_factory=list, max_length=1000)
    fault_rates: list[FaultRate] = Field(default_factory=list, max_length=20)
    grid_events: list[GridEvent] = Field(default_factory=list, max_length=100)

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        if self.duration_h is not None and self.end_h is not None:
            raise ValueError("give duration_h or end_h, not both")
        if self.end_h is not None and self.end_h <= self.start_h:
            raise ValueError(f"end_h ({self.end_h:g}) must be after start_h ({self.start_h:g})")
        mix = self.pack_mix or dict.fromkeys(self.station.packs, 1.0)
        unknown = sorted(set(mix) - set(self.station.packs))
        if unknown:
            raise ValueError(
                f"pack_mix: the station stocks no {', '.join(unknown)}"
                f" (station.packs: {', '.join(sorted(self.station.packs))})"
            )
        if not any(mix.values()):
            raise ValueError("pack_mix: at least one pack type must have a weight > 0")
        if self.station.policy == "cost" and self.station.tariff is None:
            raise ValueError("station.policy 'cost' needs station.tariff")
        if any(e.share is not None for e in self.grid_events) and not self.station.grid_limit_kw:
            raise ValueError("grid_events: a share needs station.grid_limit_kw")
        return self

    @property
    def start_s(self) -> float:
        """Simulated seconds since midnight at which the run starts."""
        return self.start_h * 3600.0

    @property
    def run_s(self) -> float:
        """Simulated seconds the run lasts."""
        if self.end_h is not None:
            return (self.end_h - self.start_h) * 3600.0
        return (self.duration_h if self.duration_h is not None else 24.0) * 3600.0

    def mix(self) -> dict[str, float]:
        """Pack type -> weight of the arriving cars."""
        return dict(self.pack_mix) if self.pack_mix else dict.fromkeys(self.station.packs, 1.0)


class LoadedScenario:
    """A scenario and where it came from (file arrivals are relative to it)."""

    def __init__(self, scenario: Scenario, path: Path) -> None:
        self.scenario = scenario
        self.path = path

    def expected_per_hour(self) -> list[float]:
        """The cars expected in each hour of the day (what the daemon is told as its profile).

        Poisson: the scenario's own rates. A recorded day: the sample days' profile scaled to
        the day's count (a station knows its usual day, not the day to come).
        """
        spec = self.scenario.arrivals
        if isinstance(spec, PoissonArrivals):
            weights, total = list(spec.hourly), spec.per_day
        else:
            weights, total = list(URBAN_PROFILE), float(len(read_day(self.arrivals_path())))
        scale = total / sum(weights)
        return [round(w * scale, 3) for w in weights]

    def arrivals_path(self) -> Path:
        """The arrivals file: relative to the scenario, or a shipped sample day."""
        spec = self.scenario.arrivals
        assert isinstance(spec, FileArrivals)
        candidate = Path(spec.path)
        if not candidate.is_absolute():
            candidate = self.path.parent / candidate
        if candidate.is_file():
            return candidate
        return sample_day(spec.path)


def load_scenario(path: Path | str) -> LoadedScenario:
    """Read and validate a scenario; raise `ConfigError` listing every problem."""
    path = Path(path)
    data = read_toml(path)
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(path, [_issue(err) for err in exc.errors()]) from None
    loaded = LoadedScenario(scenario, path)
    issues = _semantic_issues(loaded)
    if issues:
        raise ConfigError(path, issues)
    return loaded


def _issue(err: Any) -> ConfigIssue:
    loc = tuple(p for p in err["loc"] if p not in {"poisson", "file", "GammaSoc", "RangeSoc"})
    # A discriminated union names the variant in the location: keep the key path only.
    loc = tuple(p for p in loc if not (isinstance(p, str) and p in DEFAULT_DURATION_MIN))
    kind = err["type"]
    message = _message(kind, err["msg"], err.get("ctx") or {})
    if kind == "extra_forbidden":
        sections: dict[tuple[Any, ...], type[BaseModel]] = {
            (): Scenario,
            ("station",): StationSpec,
            ("operator",): Operator,
        }
        section = sections.get(loc[:-1])
        if section is not None:
            message += _suggest(str(loc[-1]), section.model_fields)
    if kind == "union_tag_invalid":
        message = f"kind must be one of {(err.get('ctx') or {}).get('expected_tags')}"
    got = None
    value = err.get("input")
    if kind != "missing" and value is not None and not isinstance(value, dict):
        got = _show(value)
    return ConfigIssue(format_loc(loc), message, got=got)


def _semantic_issues(loaded: LoadedScenario) -> list[ConfigIssue]:
    """What the model alone cannot check: files, slots and faults in the run's window."""
    sc = loaded.scenario
    issues: list[ConfigIssue] = []
    if isinstance(sc.arrivals, FileArrivals):
        try:
            read_day(loaded.arrivals_path())
        except (OSError, ValueError) as exc:
            issues.append(ConfigIssue("arrivals.path", str(exc), got=repr(sc.arrivals.path)))
    racks = -(-sc.station.slots // sc.station.rack_slots)
    for i, circuit in enumerate(sc.station.circuits):
        if any(n > racks for n in circuit.racks):
            issues.append(
                ConfigIssue(
                    f"station.circuits[{i}].racks",
                    f"the station has {racks} simulated racks",
                    got=str(circuit.racks),
                )
            )
    end_h = sc.start_h + sc.run_s / 3600.0
    for i, fault in enumerate(sc.faults):
        if not sc.start_h <= fault.at_h < end_h:
            issues.append(
                ConfigIssue(
                    f"faults[{i}].at_h",
                    f"must be within the run, {sc.start_h:g} <= at_h < {end_h:g}",
                    got=f"{fault.at_h:g}",
                )
            )
        if isinstance(fault, ChargerFault) and fault.slot > sc.station.slots:
            issues.append(
                ConfigIssue(
                    f"faults[{i}].slot",
                    f"the station has {sc.station.slots} slots",
                    got=str(fault.slot),
                )
            )
        if isinstance(fault, RackOffline) and fault.rack > racks:
            issues.append(
                ConfigIssue(
                    f"faults[{i}].rack",
                    f"the station has {racks} simulated rack(s) of up to"
                    f" {sc.station.rack_slots} slots",
                    got=str(fault.rack),
                )
            )
    return issues


# --- what the scenario generates --------------------------------------------------------------


def arrival_times(loaded: LoadedScenario, rng: random.Random) -> list[float]:
    """Arrival times, simulated seconds since midnight, within the run's window, sorted."""
    sc = loaded.scenario
    start, end = sc.start_s, sc.start_s + sc.run_s
    if isinstance(sc.arrivals, FileArrivals):
        day = read_day(loaded.arrivals_path())
        # A window past midnight replays the day again.
        times = [t + d * DAY_S for d in range(int(end // DAY_S) + 1) for t in day]
        return sorted(t for t in times if start <= t < end)
    weights = sc.arrivals.hourly
    total = sum(weights)
    times = []
    hour = int(start // 3600)
    while hour * 3600.0 < end:
        rate = sc.arrivals.per_day * weights[hour % 24] / total / 3600.0  # cars per second
        t = hour * 3600.0
        while rate > 0:
            t += rng.expovariate(rate)
            if t >= (hour + 1) * 3600.0:
                break
            if start <= t < end:
                times.append(t)
        hour += 1
    return times


def car_soc(sc: Scenario, rng: random.Random) -> float:
    """SoC of an arriving car's pack, %."""
    if isinstance(sc.soc, RangeSoc):
        return round(rng.uniform(*sc.soc.range), 1)
    if (sc.soc.k, sc.soc.theta) == (3.0, 12.0):
        return round(returned_soc(rng), 1)
    return round(min(85.0, max(3.0, rng.gammavariate(sc.soc.k, sc.soc.theta))), 1)


def fault_schedule(sc: Scenario, rng: random.Random) -> list[tuple[float, FaultBase | FaultRate]]:
    """(time since midnight, fault) of every fault: the listed ones and the random ones."""
    out: list[tuple[float, FaultBase | FaultRate]] = [(f.at_h * 3600.0, f) for f in sc.faults]
    start, end = sc.start_s, sc.start_s + sc.run_s
    for rate in sc.fault_rates:
        t = start
        while True:
            t += rng.expovariate(rate.per_day / DAY_S)
            if t >= end:
                break
            out.append((t, rate))
    return sorted(out, key=lambda item: item[0])


def duration_s(fault: FaultBase | FaultRate) -> float:
    """How long a fault lasts, simulated seconds."""
    minutes = fault.duration_min
    return 60.0 * (minutes if minutes is not None else DEFAULT_DURATION_MIN[fault.kind])
