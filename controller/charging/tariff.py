"""The price of energy by time: the configured time-of-use schedule, day-ahead prices over it.

`power.tariff.periods` give a price for every minute of the day (station local time);
`set_tariff` (MQTT) sets prices for given intervals ahead (a day-ahead market's), which win
where they cover. Pure: no I/O (gridcmds.py journals what is set).
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from datetime import datetime

from controller.config.power import TariffConfig

MAX_PRICES = 800  # day-ahead intervals held (a week of quarter-hour prices: bounded anyway)
MAX_AHEAD_S = 7 * 86400.0  # day-ahead prices are taken for at most this far ahead


@dataclass(frozen=True, slots=True)
class Interval:
    """A price for [start, end) in wall seconds."""

    start: float
    end: float
    price: float


class Tariff:
    """Prices now and ahead."""

    def __init__(self, cfg: TariffConfig | None) -> None:
        self.cfg = cfg
        self.ahead: list[Interval] = []  # sorted, not overlapping
        self._by_minute: list[tuple[float, str | None]] = []
        if cfg is not None:
            table: list[tuple[float, str | None]] = [(0.0, None)] * 1440
            for p in cfg.periods:
                a = int(p.start[:2]) * 60 + int(p.start[3:])
                b = int(p.end[:2]) * 60 + int(p.end[3:])
                minutes = range(a, b) if a < b else [*range(a, 1440), *range(b)]
                for m in minutes:
                    table[m] = (p.price, p.name)
            self._by_minute = table

    def __bool__(self) -> bool:
        return self.cfg is not None or bool(self.ahead)

    def price_at(self, at: datetime) -> tuple[float, str | None] | None:
        """The price per kWh at local time `at`, and its period's name (None: no tariff)."""
        wall = at.timestamp()
        ahead = self.ahead  # one read: the list is replaced, never changed in place
        i = bisect_right([iv.start for iv in ahead], wall) - 1
        if i >= 0 and wall < ahead[i].end:
            return ahead[i].price, "day-ahead"
        if not self._by_minute:
            return None
        return self._by_minute[at.hour * 60 + at.minute]

    def set_ahead(self, intervals: list[Interval], now: float) -> None:
        """Day-ahead prices: they replace those held where they overlap; ended ones dropped."""
        keep = [
            iv
            for iv in self.ahead
            if iv.end > now and not any(iv.start < n.end and n.start < iv.end for n in intervals)
        ]
        # The nearest are kept: they are the ones in force next.
        self.ahead = sorted([*keep, *intervals], key=lambda iv: iv.start)[:MAX_PRICES]


def minute_prices(cfg: TariffConfig) -> list[float]:
    """The configured price of every minute of the day (00:00 first)."""
    return [price for price, _ in Tariff(cfg)._by_minute]  # noqa: SLF001 - its own table
