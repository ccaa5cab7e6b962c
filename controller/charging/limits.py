"""The station's power limit: every source of one, combined as the minimum, and which binds.

Sources: the grid connection (`power.grid_limit_kw`), the time window in force
(`power.time_limits`), and limits set at run time (`set_power_limit`: an operator, the grid
operator, OCPP), each until it is lifted or its end passes. The budget the allocator shares is
the lowest of them less `power.safety_margin_kw`. Run-time limits are journalled before they
take effect (controller/charging/gridcmds.py) and restored at start until they end. Pure
bookkeeping: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import time as dtime

from pydantic import AwareDatetime, BaseModel, ConfigDict

from controller.config.model import PowerConfig

MAX_RUNTIME_SOURCES = 16  # run-time limits held at once (one per source label)
GRID = "grid connection"


@dataclass(frozen=True, slots=True)
class RunLimit:
    """A limit set at run time."""

    source: str
    kw: float
    until: float | None  # wall seconds; None: until lifted
    set_at: float
    by: str | None = None


class LimitState(BaseModel):
    """One source of a limit, as `state` shows it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str
    limit_kw: float
    until: AwareDatetime | None = None


class PowerState(BaseModel):
    """The station's power on `state`: the limit in force, what binds, every source."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    limit_kw: float | None  # the lowest source (None: no limit at all)
    binding: str | None  # the source of `limit_kw`
    budget_kw: float | None  # what the chargers share: the limit less the safety margin
    sources: list[LimitState]
    policy: str
    price: float | None = None  # the tariff's price now, per kWh
    currency: str | None = None


def budget_w(cfg: PowerConfig, at: datetime) -> float | None:
    """The configured budget at local time `at` (None: unlimited); no run-time limits."""
    return PowerLimits(cfg).budget_w(at)


class PowerLimits:
    """Every limit on the station's power, and their minimum."""

    def __init__(self, cfg: PowerConfig) -> None:
        self.cfg = cfg
        self.runtime: dict[str, RunLimit] = {}

    def sources(self, at: datetime) -> list[tuple[str, float, float | None]]:
        """(source, kW, end in wall seconds or None) of every limit in force at `at`."""
        out: list[tuple[str, float, float | None]] = []
        if self.cfg.grid_limit_kw is not None:
            out.append((GRID, self.cfg.grid_limit_kw, None))
        now = at.time()
        out += [
            (f"time window {w.start}-{w.end}", w.limit_kw, _next_at(at, w.end))
            for w in self.cfg.time_limits
            if _in_window(now, _hhmm(w.start), _hhmm(w.end))
        ]
        wall = at.timestamp()
        out += [
            (r.source, r.kw, r.until)
            for r in self.runtime.values()
            if r.until is None or r.until > wall
        ]
        return out

    @property
    def limited(self) -> bool:
        """Whether any limit may be in force (configured, or set at run time)."""
        return (
            self.cfg.grid_limit_kw is not None or bool(self.cfg.time_limits) or bool(self.runtime)
        )

    def binding(self, at: datetime) -> tuple[str, float] | None:
        """The source whose limit is lowest at `at`, and that limit (None: no limit)."""
        found = self.sources(at)
        if not found:
            return None
        source, kw, _ = min(found, key=lambda s: (s[1], s[0]))
        return source, kw

    def budget_w(self, at: datetime) -> float | None:
        """What the chargers may draw together at `at`: the lowest limit less the margin."""
        bind = self.binding(at)
        if bind is None:
            return None
        return max(0.0, (bind[1] - self.cfg.safety_margin_kw) * 1000.0)

    def next_change(self, at: datetime) -> float | None:
        """Wall seconds of the next moment the limits change with time alone (None: never)."""
        wall = at.timestamp()
        times = [r.until for r in self.runtime.values() if r.until is not None and r.until > wall]
        times += [_next_at(at, edge) for w in self.cfg.time_limits for edge in (w.start, w.end)]
        return min(times, default=None)

    def prune(self, wall: float) -> list[RunLimit]:
        """Drop the run-time limits that have ended by `wall`; returns them."""
        ended = [r for r in self.runtime.values() if r.until is not None and r.until <= wall]
        for r in ended:
            del self.runtime[r.source]
        return ended

    def state(self, at: datetime) -> PowerState:
        """What `state` shows of the limits at `at`."""
        bind = self.binding(at)
        budget = self.budget_w(at)
        tariff = self.cfg.tariff
        return PowerState(
            limit_kw=None if bind is None else bind[1],
            binding=None if bind is None else bind[0],
            budget_kw=None if budget is None else round(budget / 1000.0, 3),
            sources=[
                LimitState(
                    source=s,
                    limit_kw=kw,
                    until=None if until is None else datetime.fromtimestamp(until, at.tzinfo),
                )
                for s, kw, until in sorted(self.sources(at), key=lambda s: (s[1], s[0]))
            ],
            policy=self.cfg.policy,
            currency=None if tariff is None else tariff.currency,
        )


def _hhmm(text: str) -> dtime:
    hours, minutes = text.split(":")
    return dtime(int(hours), int(minutes))


def _in_window(now: dtime, start: dtime, end: dtime) -> bool:
    if start <= end:
        return start <= now < end
    return now >= start or now < end  # wraps past midnight


def _next_at(at: datetime, hhmm: str) -> float:
    """Wall seconds of the next `hhmm` (local, after `at`)."""
    t = _hhmm(hhmm)
    candidate = at.replace(hour=t.hour, minute=t.minute, second=0, microsecond=0)
    if candidate <= at:
        candidate += timedelta(days=1)
    return candidate.timestamp()
