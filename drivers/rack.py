"""A charger rack: its slots' readings, decoded from the planned reads, and its setpoints.

`RackDriver` does the batched I/O of one rack (what it reads, and when: `drivers.rackplan`);
`RackPoller` runs it every poll period, counts failures, declares the rack offline after N in
a row and re-probes it with backoff.
Readings are immutable and stamped; a value outside its plausible range is a sensor fault, not
a reading (the field is None and named in `sensor_faults`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from drivers import clock as clocks
from drivers.errors import (
    CommandNotAppliedError,
    DeviceConnectionError,
    DeviceRejectedError,
    DriverError,
)
from drivers.modbus.codec import Value, decode, encode
from drivers.modbus.link import ModbusLink
from drivers.modbus.plan import Item, Read, ReadGroup, bridge_limit_rtu, bridge_limit_tcp
from drivers.modbus.profile import RackProfile
from drivers.rackplan import Extract, RackPlan, StaticValues, compile_reads

_log = logging.getLogger(__name__)

UNIT_REST_MIN_S = 1.0
GRID_SKIP = 0.1  # a regular poll this close (x period) after an early one is skipped
UNIT_REST_MAX_S = 30.0
NUMERIC_FIELDS = (
    "soc",
    "soh",
    "voltage",
    "current",
    "power_w",
    "temp_max",
    "temp_min",
    "energy_wh",
    "current_limit",
    "bms_voltage_max",
    "bms_current_max",
)
PACK_FIELDS = frozenset(
    {
        "pack_serial",
        "pack_type",
        "soc",
        "soh",
        "temp_max",
        "temp_min",
        "bms_voltage_max",
        "bms_current_max",
    }
)


@dataclass(frozen=True, slots=True)
class SlotReading:
    """What one slot's charger reported in one poll; None means unknown."""

    slot: int
    at: float  # monotonic time its first read was sent in the poll: the data is at least that old
    wall: float  # the same moment, wall clock
    status: str
    pack_present: bool | None
    pack_serial: str | None
    pack_type: str | None
    soc: float | None
    soh: float | None
    voltage: float | None
    current: float | None
    power_w: float | None
    temp_max: float | None
    temp_min: float | None
    fault_code: int | None
    energy_wh: float | None
    charge_enable: bool | None
    current_limit: float | None
    bms_voltage_max: float | None
    bms_current_max: float | None
    heartbeat: int | None
    heartbeat_since: float  # monotonic time the heartbeat last changed
    sensor_faults: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RackIdentity:
    """Rack-level identification registers, as far as the profile has them."""

    values: Mapping[str, Value]


@dataclass(frozen=True, slots=True)
class PollResult:
    """One poll: readings of the slots that answered, errors of those that did not."""

    readings: dict[int, SlotReading]
    failed: dict[int, str]


@dataclass(frozen=True, slots=True)
class RackSnapshot:
    """The rack after a poll attempt."""

    rack: str
    at: float
    online: bool
    readings: Mapping[int, SlotReading]  # the latest good reading per slot (may be old)
    consecutive_failures: int
    error: str | None = None
    cycle_s: float = 0.0
    offline: bool = False  # declared offline: N polls in a row failed
    failed: Mapping[int, str] = field(default_factory=dict)  # slots that did not answer


class RackDriver:
    """Reads and writes one rack's slots through a shared `ModbusLink`."""

    def __init__(
        self,
        name: str,
        profile: RackProfile,
        link: ModbusLink,
        slots: Sequence[int],
        *,
        unit_id: int | None = None,
        unit_ids: Sequence[int] | None = None,
        clock: Callable[[], float] = clocks.monotonic,
        static_period_s: float | None = None,
    ) -> None:
        if profile.layout == "block" and unit_id is None:
            raise ValueError(f"rack {name}: profile {profile.name} needs unit_id")
        if profile.layout == "unit" and (unit_ids is None or len(unit_ids) != len(slots)):
            raise ValueError(f"rack {name}: profile {profile.name} needs one unit id per slot")
        self.name = name
        self.profile = profile
        self.link = link
        self.clock = clock  # stamps readings; the link's timeouts stay on wall time
        self.slots = tuple(slots)
        self._units = (
            tuple(unit_ids)
            if profile.layout == "unit" and unit_ids
            else (unit_id or 1,) * len(slots)
        )
        self._index = {slot: i for i, slot in enumerate(self.slots)}
        limit = (
            bridge_limit_rtu(link.params.serial.baudrate)
            if link.params.serial is not None
            else bridge_limit_tcp(profile.max_read)
        )
        self.plan = RackPlan.build(profile, self.slots, self._units, limit)
        # What one poll reads, every time (the bench compares it with `fast.minimum()`).
        self.items: list[Item] = list(self.plan.fast.items)
        self.reads: list[Read] = []
        self._extract: list[Extract] = []
        self.set_plan(list(self.plan.fast.reads))
        self.static = StaticValues(
            self.plan, profile.static_period_s if static_period_s is None else static_period_s
        )
        self._static_reads: dict[frozenset[int], list[tuple[Read, Extract]]] = {}
        self._heartbeats: dict[int, tuple[int | None, float]] = {}
        self._unit_rest: dict[int, tuple[float, float, str]] = {}  # unit -> (until, pause, why)

    @property
    def fast(self) -> ReadGroup:
        """The group read every poll, as planned (`planned` requests, `minimum()` at best)."""
        return self.plan.fast

    @property
    def poll_blocks(self) -> list[Read]:
        """Every block polls read: the fast group's and the static group's of every slot."""
        return [*self.reads, *self.plan.static.reads]

    def set_plan(self, reads: list[Read]) -> None:
        """Use these reads for the fast group (the planner's, or another plan to compare with)."""
        self.reads = reads
        self._extract = [extract for _, extract in compile_reads(reads, self.profile.word_order)]

    @property
    def registers_per_cycle(self) -> int:
        """Registers transferred by a poll that reads the fast group only (gaps included)."""
        return sum(r.count for r in self.reads)

    async def read_all(self) -> dict[int, SlotReading]:
        """One poll of every slot; raises if any read fails (see `poll` for partial results)."""
        result = await self.poll()
        if result.failed:
            raise DeviceRejectedError(next(iter(result.failed.values())))
        return result.readings

    async def poll(self) -> PollResult:
        """One poll: the fast group's reads, decoded into a reading per slot.

        The static values that do not ride in them (`drivers.rackplan`) are read in the same
        poll for the slots that need them (a new pack, or `static_period_s` elapsed), before
        the readings are built; otherwise a reading carries them from the previous poll's.
        On a rack of several units (RS-485, a charger per unit) one silent charger must not
        blind the station to the others, nor slow the line down for them: a unit that fails is
        skipped for the rest of the poll, its slots are reported in `failed`, and it is
        re-probed with a growing pause, at the end of a poll. If nothing at all could be read,
        the first error is raised. A reading is stamped with the time its first read was
        sent: the data is at least that old.
        """
        now = self.clock()
        wall = clocks.wall() - now  # wall clock = the stamp + this
        many = len(set(self._units)) > 1
        state = _PollState(
            {slot: {} for slot in self.slots},
            many=many,
            resting={u for u, (until, _, _) in self._unit_rest.items() if many and until > now},
        )
        due = self.static.start_poll(now)
        await self._read_into(state, list(zip(self.reads, self._extract, strict=True)))
        # A pack's static values are read in the same poll that first sees it, before any
        # reading is built: no reading carries a new pack with the old pack's serial.
        wanted = frozenset(
            slot
            for slot, unit in zip(self.slots, self._units, strict=True)
            if slot in state.stamps
            and unit not in state.failed_units
            and self.static.to_read(slot, state.values[slot], due=due)
        )
        if wanted:
            await self._read_into(state, self._static_plan(wanted))
        for unit in set(self._units) - state.failed_units.keys() - state.resting:
            self._unit_rest.pop(unit, None)
        failed = {}
        for slot, unit in zip(self.slots, self._units, strict=True):
            if unit in state.failed_units:
                failed[slot] = state.failed_units[unit]
            elif unit in state.resting:
                until, _, why = self._unit_rest[unit]
                failed[slot] = f"unit {unit}: {why} (next try in {until - now:.0f} s)"
        if len(failed) == len(self.slots):
            raise state.first_error or DeviceRejectedError(next(iter(failed.values())))
        readings: dict[int, SlotReading] = {}
        for slot, vals in state.values.items():
            stamp = state.stamps.get(slot)
            if slot in failed or stamp is None:
                continue
            if slot not in wanted:
                self.static.fill(slot, vals)
            reading = readings[slot] = self._reading(slot, vals, stamp, stamp + wall)
            self.static.remember(slot, vals, present=reading.pack_present)
        return PollResult(readings, failed)

    async def _read_into(self, state: _PollState, plan: list[tuple[Read, Extract]]) -> None:
        """Make the reads of `plan`, decoding into `state`; a unit that fails is skipped after."""
        # Healthy units first; units due for a re-probe last; resting units not at all.
        plan = sorted(plan, key=lambda pair: pair[0].unit in self._unit_rest)
        for read, extract in plan:
            if read.unit in state.failed_units or read.unit in state.resting:
                continue
            sent = self.clock()
            probe = read.unit in self._unit_rest and state.many
            try:
                words = await self.link.read_registers(
                    read.table,
                    read.unit,
                    read.address,
                    read.count,
                    retries=0 if probe else None,  # a silent unit is asked once, not pleaded with
                )
            except DeviceConnectionError:
                raise  # the line itself is down: nothing else can be read
            except DriverError as exc:
                state.failed_units[read.unit] = str(exc)
                state.first_error = state.first_error or exc
                self._rest(read.unit, str(exc))
                continue
            for slot, name, start, decoder in extract:
                state.values[slot][name] = decoder(words, start)
                state.stamps.setdefault(slot, sent)

    def _static_plan(self, slots: frozenset[int]) -> list[tuple[Read, Extract]]:
        """The static group's reads for `slots`, compiled once per set of slots."""
        plan = self._static_reads.get(slots)
        if plan is None:
            if len(self._static_reads) >= 64:  # a bound: in practice single slots and all
                self._static_reads.clear()
            reads = self.plan.static_reads(slots)
            plan = self._static_reads[slots] = compile_reads(reads, self.profile.word_order)
        return plan

    def _rest(self, unit: int, why: str) -> None:
        """A unit failed: leave it out of polls for a while, longer each time."""
        _, pause, _ = self._unit_rest.get(unit, (0.0, UNIT_REST_MIN_S / 2, why))
        pause = min(pause * 2, UNIT_REST_MAX_S)
        self._unit_rest[unit] = (self.clock() + pause, pause, why)

    async def read_identity(self) -> RackIdentity:
        """Read the identity registers (and rack heartbeat) from the first unit, on demand."""
        values: dict[str, Value] = {}
        order = self.profile.word_order
        for read in self.plan.identity.reads:
            words = await self.link.read_registers(read.table, read.unit, read.address, read.count)
            for item in read.items:
                start = item.address - read.address
                values[item.key[1]] = decode(
                    item.spec, words[start : start + item.spec.words], order
                )
        return RackIdentity(values)

    async def read_heartbeat(self) -> int | None:
        """The cheapest liveness check: the rack heartbeat, or the first slot's."""
        rack_hb = next((r for r in self.profile.rack if r.name == "rack_heartbeat"), None)
        if rack_hb is not None:
            words = await self.link.read_registers(
                rack_hb.table, self._units[0], rack_hb.offset, rack_hb.words
            )
        else:
            reg = self.profile.slot_registers["heartbeat"]
            words = await self.link.read_registers(
                reg.table, self._units[0], self.profile.slot_address(reg, 0), reg.words
            )
        return int(words[0])

    async def read_slot_heartbeat(self, slot: int) -> int:
        """One slot's charger heartbeat (on its own unit in the unit layout)."""
        i = self._index[slot]
        reg = self.profile.slot_registers["heartbeat"]
        words = await self.link.read_registers(
            reg.table, self._units[i], self.profile.slot_address(reg, i), reg.words
        )
        return int(words[0])

    async def write_limit(self, slot: int, amps: float) -> float:
        """Write a slot's current limit and read it back; return what the charger holds (A).

        `CommandNotAppliedError` when the read-back differs (a charger that clamps a limit or
        ignores the write).
        """
        return float(await self._write_verified(slot, "current_limit", amps))

    async def write_enable(self, slot: int, *, on: bool, verify: bool = True) -> bool:
        """Switch a slot's charger on or off and read it back (`CommandNotAppliedError`).

        `verify=False` (an off in a hurry, at shutdown): written, not read back.
        """
        return bool(await self._write_verified(slot, "charge_enable", int(on), verify=verify))

    async def _write_verified(
        self, slot: int, name: str, value: float, *, verify: bool = True
    ) -> Value:
        i = self._index[slot]
        unit = self._units[i]
        spec = self.profile.slot_registers[name]
        try:
            words = encode(spec, value, self.profile.word_order)
        except (ValueError, TypeError) as exc:
            raise CommandNotAppliedError(f"rack {self.name} slot {slot}: {exc}") from exc
        address = self.profile.slot_address(spec, i)
        await self.link.write_registers(unit, address, words)
        if not verify:
            return decode(spec, words, self.profile.word_order)
        back = await self.link.read_registers(spec.table, unit, address, spec.words)
        if back != words:
            raise CommandNotAppliedError(
                f"rack {self.name} slot {slot}: wrote {name}={words}, read back {back}"
            )
        return decode(spec, back, self.profile.word_order)

    def _reading(
        self, slot: int, values: dict[str, Value | None], now: float, wall: float
    ) -> SlotReading:
        faults = [name for name, value in values.items() if value is None]
        code = values.get("status")
        status = (
            self.profile.status_names.get(int(code), "unknown")
            if isinstance(code, (int, float))
            else "unknown"
        )
        if status == "unknown" and "status" not in faults:
            faults.append("status")
        present_raw = values.get("pack_present")
        present = None if present_raw is None else bool(present_raw)
        if present is False:
            # An empty slot reports zeros and blanks for the pack: they are not readings.
            for name in PACK_FIELDS:
                values[name] = None
            faults = [f for f in faults if f not in PACK_FIELDS]
        elif present and not values.get("pack_serial"):
            faults.append("pack_serial")
            values["pack_serial"] = None
        heartbeat = values.get("heartbeat")
        hb = int(heartbeat) if isinstance(heartbeat, (int, float)) else None
        last, since = self._heartbeats.get(slot, (None, now))
        if hb != last:
            since = now
        self._heartbeats[slot] = (hb, since)

        def num(name: str) -> float | None:
            v = values.get(name)
            return float(v) if isinstance(v, (int, float)) else None

        def text(name: str) -> str | None:
            v = values.get(name)
            return v if isinstance(v, str) and v else None

        enable = values.get("charge_enable")
        fault_code = values.get("fault_code")
        return SlotReading(
            slot=slot,
            at=now,
            wall=wall,
            status=status,
            pack_present=present,
            pack_serial=text("pack_serial"),
            pack_type=text("pack_type"),
            soc=num("soc"),
            soh=num("soh"),
            voltage=num("voltage"),
            current=num("current"),
            power_w=num("power_w"),
            temp_max=num("temp_max"),
            temp_min=num("temp_min"),
            fault_code=int(fault_code) if isinstance(fault_code, (int, float)) else None,
            energy_wh=num("energy_wh"),
            charge_enable=None if enable is None else bool(enable),
            current_limit=num("current_limit"),
            bms_voltage_max=num("bms_voltage_max"),
            bms_current_max=num("bms_current_max"),
            heartbeat=hb,
            heartbeat_since=since,
            sensor_faults=tuple(sorted(set(faults))),
        )


@dataclass
class _PollState:
    """What one poll has gathered so far."""

    values: dict[int, dict[str, Value | None]]
    many: bool  # several units: one that fails is left out, the others are still read
    resting: set[int]  # units left out of this poll
    stamps: dict[int, float] = field(default_factory=dict)  # slot -> its first read's send time
    failed_units: dict[int, str] = field(default_factory=dict)
    first_error: DriverError | None = None


@dataclass
class PollerStats:
    """Counters of one poller."""

    cycles: int = 0
    failures: int = 0
    cycle_times: list[float] = field(default_factory=list)


class RackPoller:
    """Polls one rack every period; offline after N failures in a row, then backoff re-probes."""

    def __init__(
        self,
        driver: RackDriver,
        *,
        poll_period_s: float,
        offline_after: int,
        on_snapshot: Callable[[RackSnapshot], None],
        backoff_max_s: float = 30.0,
        keep_cycle_times: bool = False,
        rng: random.Random | None = None,
        phase_s: float = 0.0,
    ) -> None:
        self.driver = driver
        self.period = poll_period_s
        # The first poll goes at once; the schedule after it is shifted by `phase_s`, so that
        # racks with one period do not all answer in the same instant (their work spreads).
        self.phase_s = phase_s
        self.offline_after = offline_after
        self.backoff_max_s = max(backoff_max_s, poll_period_s)
        self._on_snapshot = on_snapshot
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._keep = keep_cycle_times
        self.stats = PollerStats()
        self.online = False
        self.failures = 0
        self.readings: dict[int, SlotReading] = {}
        self.last_error: str | None = None
        self._wake = asyncio.Event()
        self._silent: set[int] = set()

    def poll_soon(self) -> None:
        """Cut the current wait short (after a command, or to re-probe now)."""
        self._wake.set()

    async def run(self) -> None:
        """Poll forever."""
        backoff = self.period
        grid = clocks.monotonic() + self.phase_s  # the schedule: grid + k x period
        while True:
            started = clocks.monotonic()
            self._wake.clear()  # a poll_soon() from now on asks for the poll after this one
            await self.poll_once()
            if self.online or self.failures < self.offline_after:
                backoff = self.period
                # The schedule's next point: a fixed grid, so that racks keep their phases
                # (an early poll, after a command, does not move it; it skips a regular poll
                # that would follow within a tenth of a period).
                k = math.floor((started + GRID_SKIP * self.period - grid) / self.period) + 1
                next_at = grid + k * self.period
            else:
                # Offline: re-probe with capped exponential backoff and jitter.
                next_at = clocks.monotonic() + backoff * self._rng.uniform(0.75, 1.0)
                backoff = min(backoff * 2, self.backoff_max_s)
            await self._sleep_until(next_at)

    async def poll_once(self) -> RackSnapshot:
        """One poll: count it, hand its snapshot to `on_snapshot`, and return it."""
        name = self.driver.name
        started = clocks.monotonic()
        failed: dict[int, str] = {}
        try:
            result = await self.driver.poll()
        except DriverError as exc:
            self.failures += 1
            self.stats.failures += 1
            self.last_error = str(exc)
            if self.failures == self.offline_after:
                self.online = False
                _log.warning("rack %s offline after %d failed polls: %s", name, self.failures, exc)
            elif self.failures == 1:
                _log.info("rack %s: poll failed: %s", name, exc)
        else:
            if not self.online:
                _log.info("rack %s online (%d slots)", name, len(self.driver.slots))
            self.online = True
            self.failures = 0
            self.last_error = None
            self.readings.update(result.readings)
            failed = result.failed
            for slot in failed.keys() - self._silent:
                _log.warning("rack %s slot %d not answering: %s", name, slot, failed[slot])
            self._silent = set(failed)
        cycle = clocks.monotonic() - started
        self.stats.cycles += 1
        if self._keep:
            self.stats.cycle_times.append(cycle)
        snapshot = RackSnapshot(
            name,
            self.driver.clock(),
            self.online,
            dict(self.readings),
            self.failures,
            self.last_error,
            cycle,
            offline=self.failures >= self.offline_after,
            failed=failed,
        )
        self._on_snapshot(snapshot)
        return snapshot

    async def _sleep_until(self, when: float) -> None:
        delay = when - clocks.monotonic()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
