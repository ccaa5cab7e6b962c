"""What a simulated run observes: the station's events, the racks' power, a sample a minute.

`Recorder` is one bay's (its fleet's events, its racks' physics steps); `SitePower` sums the
power of every bay's racks at each physics step (a site's peak). Times are simulated seconds
since the simulated day's midnight.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from controller.swap.phase import Phase
from simstation.ledger import PackLedger
from simstation.report import (
    AlarmEntry,
    FaultEntry,
    GridEventResult,
    LifeSample,
    RecordCheck,
    Sample,
)
from simstation.station import SimStation
from simstation.traffic import Fleet

SAMPLE_EVERY_S = 60.0  # simulated
SEEN_KEEP = 20_000  # event seqs remembered to drop a redelivered event
OVERRUN_S = 0.1  # wall seconds: a wake-up this late is an overrun (60 simulated s at 600x)


@dataclass
class Recorder:
    """What the run observes: events (deduplicated), power at the racks, samples."""

    fleet: Fleet
    seen: set[int] = field(default_factory=set)
    alarms: list[AlarmEntry] = field(default_factory=list)
    phases: dict[str, list[tuple[float, str]]] = field(default_factory=dict)  # swap -> (t, to)
    faults: list[FaultEntry] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    rack_w: dict[str, float] = field(default_factory=dict)
    # The same as the controller counts it against the grid limit: amps x the BMS voltage limit.
    rack_budget_w: dict[str, float] = field(default_factory=dict)
    rack_t: dict[str, float] = field(default_factory=dict)
    energy_kwh: float = 0.0
    peak_w: float = 0.0
    load: list[float] = field(default_factory=list)  # the 1-min load: start, max, end
    counting: bool = False
    life: list[LifeSample] = field(default_factory=list)
    records: RecordCheck | None = None
    sim_kib: int = 0  # what the simulator holds of the run (`Report.sim_records_kib`)
    log: list[str] = field(default_factory=list)  # fleet.log's lines, written at the end
    _held: dict[str, int] = field(default_factory=dict)  # records already counted, per kind
    _held_bytes: int = 0
    prices: list[float] | None = None  # the tariff's price of every minute of the day
    grid_events: list[GridEventResult] = field(default_factory=list)
    ledger: PackLedger = field(default_factory=lambda: PackLedger(None))
    cost: float = 0.0  # the energy's price, summed at every physics step
    energy_by_hour: dict[int, float] = field(default_factory=dict)  # hour since midnight -> kWh
    overrun_max_s: float = 0.0  # wall time: the latest the run's own timer woke (loop lag)
    overruns: int = 0  # wall time: wake-ups later than OVERRUN_S

    def held_kib(self) -> int:
        """What the simulator holds of the run so far, counted as it grows (records only grow)."""
        kinds: dict[str, list[Any]] = {
            "samples": self.samples,
            "phases": list(self.phases.values()),
            "alarms": self.alarms,
            "faults": self.faults,
            "life": self.life,
            "log": self.log,
        }
        for kind, items in kinds.items():
            done = self._held.get(kind, 0)
            self._held_bytes += deep_size(*items[done:])
            self._held[kind] = len(items)
        seen = sys.getsizeof(self.seen) + 32 * len(self.seen)  # bounded: at most SEEN_KEEP
        return (self._held_bytes + seen) // 1024

    def on_event(self, event: dict[str, Any]) -> None:
        """Alarms and swap phases from `<root>/events` (at least once: by `seq`)."""
        seq = event.get("seq")
        if isinstance(seq, int):
            if seq in self.seen:
                return
            self.seen.add(seq)
            if len(self.seen) > SEEN_KEEP:
                # A repeat comes soon after its first delivery (a reconnect's redelivery): the
                # last few thousand are enough, and a month's run does not hold them all.
                self.seen = {n for n in self.seen if n > seq - SEEN_KEEP // 2}
        kind = event.get("kind")
        data = event.get("data") or {}
        t = self.fleet.time_of(event.get("at"))
        if t is None or not self.counting:
            return
        if kind in {"alarm_raised", "alarm_cleared"}:
            self.alarms.append(
                AlarmEntry(
                    t_s=round(t, 1),
                    kind="raised" if kind == "alarm_raised" else "cleared",
                    scope=str(data.get("scope")),
                    code=str(data.get("code")),
                    severity=str(data.get("severity")),
                    message=str(data.get("message")),
                )
            )
        elif kind == "swap_phase":
            self.phases.setdefault(str(data.get("swap_id")), []).append((t, str(data.get("to"))))

    def on_tick(self, rack: str, sim_now: float, power_w: float, budget_w: float = 0.0) -> None:
        """After a physics step of a rack: power and energy (and power as budgeted)."""
        self.rack_budget_w[rack] = budget_w
        last = self.rack_t.get(rack)
        self.rack_t[rack] = sim_now
        if self.counting and last is not None:
            kwh = self.rack_w.get(rack, 0.0) * (sim_now - last) / 3.6e6
            self.energy_kwh += kwh
            day_s = self.fleet.now()  # since the simulated day's midnight (the step's end)
            hour = int(day_s // 3600)
            self.energy_by_hour[hour] = self.energy_by_hour.get(hour, 0.0) + kwh
            if self.prices is not None:
                self.cost += kwh * self.prices[int(day_s // 60) % 1440]
        self.rack_w[rack] = power_w
        if self.counting:
            self.peak_w = max(self.peak_w, sum(self.rack_w.values()))

    def step_times(self) -> dict[str, list[float]]:
        """Simulated seconds spent in each phase, over every swap."""
        out: dict[str, list[float]] = {}
        for transitions in self.phases.values():
            ordered = sorted(transitions)
            for (t0, phase), (t1, _) in itertools.pairwise(ordered):
                if phase not in {Phase.IDLE, Phase.COMPLETE}:
                    out.setdefault(phase, []).append(max(0.0, t1 - t0))
        return out


@dataclass
class SitePower:
    """The charging power over every bay's racks at each physics step: the site's peak."""

    rack_w: dict[str, float] = field(default_factory=dict)
    peak_w: float = 0.0
    counting: bool = False

    def on_tick(self, rack: str, power_w: float) -> None:
        """A rack's power after its physics step."""
        self.rack_w[rack] = power_w
        if self.counting:
            self.peak_w = max(self.peak_w, sum(self.rack_w.values()))


def tick_hook(
    rec: Recorder, name: str, rack: Any, site: SitePower | None = None
) -> Callable[[float], None]:
    """A rack's physics step, as `rack.on_tick` calls it: to `rec` (and to the site's sum)."""

    def hook(sim_now: float) -> None:
        chargers = [c for c in rack.chargers.values() if c.pack is not None]
        budget = sum(c.current_a * c.pack.bms_voltage_max for c in chargers)
        power_w = sum(c.power_w for c in chargers)
        rec.on_tick(name, sim_now, power_w, budget)
        packs = [
            (c.pack.serial, c.power_w, c.pack.soc / 100 * c.pack.capacity_kwh) for c in chargers
        ]
        rec.ledger.on_tick(name, rec.fleet.now(), packs, counting=rec.counting)
        if site is not None:
            site.on_tick(f"{rec.fleet.bay}/{name}", power_w)

    return hook


def deep_size(*roots: object) -> int:
    """Bytes held by `roots` and everything they reach (containers, objects' attributes)."""
    seen: set[int] = set()
    stack: list[object] = list(roots)
    total = 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, type):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif isinstance(obj, (str, bytes, int, float, bool)) or obj is None:
            continue
        elif hasattr(obj, "__dict__"):
            stack.append(vars(obj))
        elif dataclasses.is_dataclass(obj):
            stack.extend(getattr(obj, f.name) for f in dataclasses.fields(obj))
    return total


async def sample_minutes(rec: Recorder, fleet: Fleet, sim: SimStation, end_s: float) -> None:
    """The station every simulated minute."""
    t = fleet.now()
    while t < end_s:
        state = fleet._state or {}  # noqa: SLF001
        ready = state.get("packs_ready") or {}
        power = state.get("power") or {}
        rec.samples.append(
            Sample(
                t_s=round(t, 1),
                grid_kw=round(sum(rec.rack_w.values()) / 1000.0, 2),
                budget_kw=round(sum(rec.rack_budget_w.values()) / 1000.0, 2),
                ready={str(k): int(v) for k, v in ready.items()},
                queue=len(fleet.queue),
                phase=str(state.get("phase", "?")),
                forecast={
                    str(k): {h: int(n) for h, n in (v.get("ready_in_min") or {}).items()}
                    for k, v in (state.get("forecast") or {}).items()
                },
                outlook={
                    str(k): {h: float(n) for h, n in (v.get("expected") or {}).items()}
                    for k, v in (state.get("outlook") or {}).items()
                },
                binding=power.get("binding"),
            )
        )
        t += SAMPLE_EVERY_S
        await asyncio.sleep(max(0.0, sim.clock.real(t - fleet.now())))
