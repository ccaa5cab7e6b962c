"""The station I/O (the station PLC): its inputs, outputs and registers over Modbus.

`StationIoDriver` reads the whole I/O map in one request per table (discrete inputs, coils,
registers) and writes coils, verifying each write by reading it back. `StationIoPoller` runs it
every poll period with the same semantics as the rack poller: the next poll is due one period
after the previous one began, the PLC is declared offline after N failed polls in a row and is
then re-probed with a capped, jittered backoff.

Readings are immutable and stamped with the time the poll's first request was sent; staleness
(reading age, a heartbeat that stopped) is judged by the consumer, from the reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from drivers import clock
from drivers.errors import CommandNotAppliedError, DecodeError, DriverError
from drivers.modbus.codec import Decoder, compile_decoder
from drivers.modbus.ioprofile import BitTable, IoProfile
from drivers.modbus.link import ModbusLink
from drivers.modbus.profile import Table

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IoReading:
    """What the PLC reported in one poll."""

    at: float  # monotonic time the poll's first request was sent: the data is at least this old
    wall: float  # the same moment, wall clock
    inputs: Mapping[str, bool]  # discrete inputs by name
    coils: Mapping[str, bool]  # coils (outputs) as the PLC holds them, by name
    vehicle_id: str | None  # None when empty (no vehicle) or implausible (not printable ASCII)
    heartbeat: int | None
    heartbeat_since: float  # monotonic time the heartbeat last changed


@dataclass(frozen=True, slots=True)
class IoSnapshot:
    """The station I/O after a poll attempt."""

    at: float
    online: bool
    reading: IoReading | None  # the latest good reading (may be old)
    consecutive_failures: int
    error: str | None = None
    offline: bool = False  # declared offline: N polls in a row failed
    cycle_s: float = 0.0  # how long the poll took


@dataclass(frozen=True, slots=True)
class _BitRead:
    table: BitTable
    address: int
    count: int
    names: tuple[tuple[str, int], ...]  # (name, index in the read)


@dataclass(frozen=True, slots=True)
class _RegisterRead:
    table: Table
    address: int
    count: int
    values: tuple[tuple[str, int, Decoder], ...]  # (name, index in the read, decoder)


class StationIoDriver:
    """Reads and writes the station PLC through a `ModbusLink` (possibly a shared RS-485 line)."""

    def __init__(
        self, profile: IoProfile, link: ModbusLink, unit: int, *, name: str = "station I/O"
    ) -> None:
        self.profile = profile
        self.link = link
        self.unit = unit
        self.name = name
        self._bits = {table: _bit_read(profile, table) for table in ("discrete", "coil")}
        self._registers = [
            _register_read(profile, table)
            for table in ("input", "holding")
            if any(r.table == table for r in profile.registers)
        ]
        self._heartbeat: tuple[int | None, float] | None = None  # (last value, since)

    @property
    def requests_per_read(self) -> int:
        """Modbus requests one `read()` takes."""
        return len(self._bits) + len(self._registers)

    async def read(self) -> IoReading:
        """One poll of the whole map: one request per table; raises a `DriverError`."""
        sent = clock.monotonic()
        wall = clock.wall()
        inputs = await self._read_bits(self._bits["discrete"])
        coils = await self._read_bits(self._bits["coil"])
        values: dict[str, object] = {}
        for read in self._registers:
            words = await self.link.read_registers(read.table, self.unit, read.address, read.count)
            for name, start, decoder in read.values:
                values[name] = decoder(words, start)
        vid = values.get("vehicle_id")
        hb_raw = values.get("heartbeat")
        hb = hb_raw if isinstance(hb_raw, int) else None
        last = self._heartbeat
        since = sent if last is None or last[0] != hb else last[1]
        self._heartbeat = (hb, since)
        return IoReading(
            at=sent,
            wall=wall,
            inputs=MappingProxyType(inputs),
            coils=MappingProxyType(coils),
            vehicle_id=vid if isinstance(vid, str) and vid else None,
            heartbeat=hb,
            heartbeat_since=since,
        )

    async def read_coils(self) -> dict[str, bool]:
        """The coils as the PLC holds them now (one request)."""
        return await self._read_bits(self._bits["coil"])

    async def set_coil(self, name: str, value: bool) -> None:  # noqa: FBT001 - the coil's state
        """Write one coil and verify it by reading it back (`CommandNotAppliedError`)."""
        address = self._coil_address(name)
        await self.link.write_coil(self.unit, address, value=value)
        back = await self.link.read_bits("coil", self.unit, address, 1)
        if back[0] != value:
            raise CommandNotAppliedError(
                f"{self.name}: wrote coil {name}={int(value)}, read back {int(back[0])}"
            )

    async def set_coils(self, **values: bool) -> None:
        """Write several coils, then verify them all with one read of the coils.

        Coils being cleared are written before coils being set, so that two outputs that
        must not be on together (lift_raise, lift_lower) never are because of the order.
        """
        addresses = {name: self._coil_address(name) for name in values}
        for name, value in sorted(values.items(), key=lambda kv: kv[1]):
            await self.link.write_coil(self.unit, addresses[name], value=value)
        if not values:
            return
        back = await self.read_coils()
        wrong = [
            f"{name}={int(value)} (read back {int(back[name])})"
            for name, value in values.items()
            if back[name] != value
        ]
        if wrong:
            raise CommandNotAppliedError(f"{self.name}: coils not applied: {', '.join(wrong)}")

    def _coil_address(self, name: str) -> int:
        try:
            return self.profile.coils[name]
        except KeyError:
            raise ValueError(
                f"{self.name}: no coil {name!r} in profile {self.profile.name!r}"
                f" (coils: {', '.join(sorted(self.profile.coils))})"
            ) from None

    async def _read_bits(self, read: _BitRead) -> dict[str, bool]:
        bits = await self.link.read_bits(read.table, self.unit, read.address, read.count)
        if len(bits) < read.count:
            raise DecodeError(f"{self.name}: {read.table} read returned {len(bits)} bits")
        return {name: bits[i] for name, i in read.names}


def _bit_read(profile: IoProfile, table: BitTable) -> _BitRead:
    named = profile.bits(table)
    start = min(named.values())
    count = max(named.values()) - start + 1
    return _BitRead(table, start, count, tuple((n, a - start) for n, a in named.items()))


def _register_read(profile: IoProfile, table: Table) -> _RegisterRead:
    regs = [r for r in profile.registers if r.table == table]
    start = min(r.offset for r in regs)
    count = max(r.offset + r.words for r in regs) - start
    return _RegisterRead(
        table,
        start,
        count,
        tuple((r.name, r.offset - start, compile_decoder(r, profile.word_order)) for r in regs),
    )


@dataclass
class IoPollerStats:
    """Counters of the station I/O poller."""

    cycles: int = 0
    failures: int = 0
    cycle_times: list[float] = field(default_factory=list)


class StationIoPoller:
    """Polls the PLC every period; offline after N failures in a row, then backoff re-probes."""

    def __init__(
        self,
        driver: StationIoDriver,
        *,
        poll_period_s: float,
        offline_after: int,
        on_snapshot: Callable[[IoSnapshot], None],
        backoff_max_s: float = 30.0,
        keep_cycle_times: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        self.driver = driver
        self.period = poll_period_s
        self.offline_after = offline_after
        self.backoff_max_s = max(backoff_max_s, poll_period_s)
        self._on_snapshot = on_snapshot
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._keep = keep_cycle_times
        self.stats = IoPollerStats()
        self.online = False
        self.failures = 0
        self.reading: IoReading | None = None
        self.last_error: str | None = None
        self._wake = asyncio.Event()

    @property
    def offline(self) -> bool:
        """Declared offline: `offline_after` polls in a row failed."""
        return self.failures >= self.offline_after

    def poll_soon(self) -> None:
        """Cut the current wait short (after a command, or to re-probe now)."""
        self._wake.set()

    async def run(self) -> None:
        """Poll forever."""
        name = self.driver.name
        backoff = self.period
        while True:
            started = clock.monotonic()
            self._wake.clear()  # a poll_soon() from now on asks for the poll after this one
            try:
                reading = await self.driver.read()
            except DriverError as exc:
                self.failures += 1
                self.stats.failures += 1
                self.last_error = str(exc)
                if self.failures == self.offline_after:
                    self.online = False
                    _log.warning("%s offline after %d failed polls: %s", name, self.failures, exc)
                elif self.failures == 1:
                    _log.info("%s: poll failed: %s", name, exc)
            else:
                if not self.online:
                    _log.info("%s online", name)
                self.online = True
                self.failures = 0
                self.last_error = None
                self.reading = reading
                backoff = self.period
            cycle = clock.monotonic() - started
            self.stats.cycles += 1
            if self._keep:
                self.stats.cycle_times.append(cycle)
            self._on_snapshot(
                IoSnapshot(
                    clock.monotonic(),
                    self.online,
                    self.reading,
                    self.failures,
                    self.last_error,
                    offline=self.offline,
                    cycle_s=cycle,
                )
            )
            if self.online or not self.offline:
                # One period after this poll began (an early poll, after a command, moves the
                # schedule rather than stretching it).
                next_at = started + self.period
            else:
                # Offline: re-probe with capped exponential backoff and jitter.
                next_at = clock.monotonic() + backoff * self._rng.uniform(0.75, 1.0)
                backoff = min(backoff * 2, self.backoff_max_s)
            await self._sleep_until(next_at)

    async def _sleep_until(self, when: float) -> None:
        delay = when - clock.monotonic()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
