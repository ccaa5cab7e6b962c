"""`swapctl probe`: does every configured device answer as the daemon will ask it, and how fast.

The hardware check before a station enters service. Each rack is asked for its
identification or heartbeat register and then for every block the poller will read (so a rack
with fewer slots than configured, or a unit that refuses a block, shows here and not as a
rack the daemon takes offline); the slot count it reports is compared with the config. The
station I/O (PLC) is read whole (inputs, coils, vehicle id, heartbeat), the robot asked for its
status; the latency is the median of a few single-request round trips after the connection
is up. A device that answers with a Modbus exception is reported with it (it answers: it is
not "unreachable").
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from controller.config.model import StationConfig
from controller.runtime.devices import Links, build_rack, build_robot, build_station_io_driver
from drivers.errors import DeviceRejectedError, DriverError
from drivers.modbus.plan import Read
from drivers.rack import RackDriver
from drivers.robot.protocol import MsgType, RobotState, Target
from drivers.stationio import IoReading, StationIoDriver

SAMPLES = 3


@dataclass(frozen=True)
class ProbeResult:
    """One device's answer."""

    device: str
    address: str
    reachable: bool | None  # None: not probed
    latency_ms: float | None
    detail: str
    problems: tuple[str, ...] = ()  # it answers, but not as the daemon needs (exit 1)

    @property
    def ok(self) -> bool:
        """The device is ready for the daemon (or was not probed)."""
        return self.reachable is not False and not self.problems


async def probe_station(config: StationConfig, timeout_s: float = 3.0) -> list[ProbeResult]:
    """Probe every configured device, one after another (lines may be shared)."""
    # pymodbus logs every failed request itself, with hex dumps: the table says it better.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    links = Links()
    results: list[ProbeResult] = []
    try:
        for rack_cfg in config.racks:
            driver = build_rack(config, rack_cfg, links)
            results += await _probe_rack(driver, rack_cfg.unit_ids, timeout_s)
        # Before the links close: the PLC may share an RS-485 line with racks.
        io = build_station_io_driver(config, links)
        if io is not None:
            results.append(await _probe_station_io(io, timeout_s))
    finally:
        await links.close()
    if config.robot is not None:
        results.append(await _probe_robot(config, timeout_s))
    return results


async def _probe_robot(config: StationConfig, timeout_s: float) -> ProbeResult:
    link = build_robot(config)
    assert link is not None
    device = link.params.device
    runner = asyncio.create_task(link.run(), name="robot")
    try:
        try:
            async with asyncio.timeout(timeout_s):
                await link.ready.wait()
        except TimeoutError:
            return ProbeResult(
                "robot",
                device,
                False,
                None,
                f"no answer within {timeout_s:g} s (missing, busy or off)",
            )
        latencies = []
        try:
            for _ in range(SAMPLES):
                started = time.perf_counter()
                status = await link.command(MsgType.STATUS)
                latencies.append((time.perf_counter() - started) * 1000)
        except DriverError as exc:
            return ProbeResult("robot", device, False, None, str(exc))
        detail = (
            f"boot {status.boot_id:04x}, {RobotState(status.state).name.lower()} at"
            f" {Target(status.position).name.lower()}"
            + (f" {status.slot}" if status.position == Target.SLOT else "")
        )
        return ProbeResult("robot", device, True, statistics.median(latencies), detail)
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        await link.close()


async def _probe_rack(
    driver: RackDriver, unit_ids: list[int] | None, timeout_s: float
) -> list[ProbeResult]:
    address = driver.link.params.describe
    if driver.profile.layout == "unit" and unit_ids:
        # One charger per unit: each must answer, and every block of it be readable.
        out = []
        for slot, unit in zip(driver.slots, unit_ids, strict=True):

            def heartbeat(s: int = slot) -> Awaitable[str]:
                return _slot_heartbeat(driver, s)

            result = await _ask(
                f"rack {driver.name} slot {slot}",
                f"{address} unit {unit}",
                heartbeat,
                heartbeat,
                timeout_s,
            )
            mine = [r for r in driver.poll_blocks if r.unit == unit]
            out.append(await _with_blocks(result, driver, mine, timeout_s))
        return out

    async def ping() -> str:
        return str(await driver.read_heartbeat())

    result = await _ask(f"rack {driver.name}", address, lambda: _identity(driver), ping, timeout_s)
    result = await _with_blocks(result, driver, driver.poll_blocks, timeout_s)
    counted = _reported_slots(result.detail)
    if result.reachable and counted is not None and counted < len(driver.slots):
        problem = f"the rack reports {counted} slots, {len(driver.slots)} are configured"
        result = dataclasses.replace(result, problems=(problem, *result.problems))
    return [result]


async def _with_blocks(
    result: ProbeResult, driver: RackDriver, reads: list[Read], timeout_s: float
) -> ProbeResult:
    """Read every block the poller will read; add what fails to the result's problems."""
    if not result.reachable:
        return result
    problems: list[str] = []
    for read in reads:
        slots = sorted({item.key[0] for item in read.items})
        what = (
            f"{read.table} {read.address}..{read.address + read.count - 1}"
            f" (slot{'s' if len(slots) > 1 else ''} {_span(slots)})"
        )
        try:
            async with asyncio.timeout(timeout_s):
                await driver.link.read_registers(read.table, read.unit, read.address, read.count)
        except DeviceRejectedError as exc:
            problems.append(f"{what}: the device answers {_exception(exc)}")
        except (DriverError, TimeoutError) as exc:
            problems.append(f"{what}: {exc or 'no answer'}")
    return dataclasses.replace(result, problems=(*result.problems, *problems))


def _span(slots: list[int]) -> str:
    return str(slots[0]) if len(slots) == 1 else f"{slots[0]}-{slots[-1]}"


def _exception(exc: DeviceRejectedError) -> str:
    """'device failure (exception 04)', from the link's message."""
    return str(exc).rsplit(": ", 1)[-1]


def _reported_slots(detail: str) -> int | None:
    marker = " slots (configured "
    if marker not in detail:
        return None
    head = detail.split(marker, 1)[0].rsplit(" ", 1)[-1]
    return int(head) if head.isdigit() else None


async def _probe_station_io(driver: StationIoDriver, timeout_s: float) -> ProbeResult:
    """One full read of the I/O map (shown), then single-request round trips (timed)."""

    async def ident() -> str:
        return _io_detail(await driver.read())

    async def ping() -> str:
        return _bits(await driver.read_coils())  # one request, like a rack's heartbeat

    address = f"{driver.link.params.describe} unit {driver.unit}"
    return await _ask(driver.name, address, ident, ping, timeout_s)


def _bits(values: Mapping[str, bool]) -> str:
    return " ".join(f"{name}={int(value)}" for name, value in values.items())


def _io_detail(reading: IoReading) -> str:
    vehicle = reading.vehicle_id if reading.vehicle_id is not None else "none"
    heartbeat = reading.heartbeat if reading.heartbeat is not None else "unreadable"
    return (
        f"inputs {_bits(reading.inputs)}; coils {_bits(reading.coils)};"
        f" vehicle {vehicle}; heartbeat {heartbeat}"
    )


async def _identity(driver: RackDriver) -> str:
    if not driver.profile.rack:
        return f"heartbeat {await driver.read_heartbeat()}"
    ident = (await driver.read_identity()).values
    parts = [str(ident[k]) for k in ("vendor", "model") if k in ident]
    if "firmware" in ident:
        parts.append(f"fw {ident['firmware']}")
    if "slot_count" in ident:
        parts.append(f"{ident['slot_count']} slots (configured {len(driver.slots)})")
    return " ".join(parts)


async def _slot_heartbeat(driver: RackDriver, slot: int) -> str:
    return f"heartbeat {await driver.read_slot_heartbeat(slot)}"


async def _ask(
    device: str,
    address: str,
    ident: Callable[[], Awaitable[str]],
    ping: Callable[[], Awaitable[str]],
    timeout_s: float,
) -> ProbeResult:
    try:
        async with asyncio.timeout(timeout_s):
            detail = await ident()
        # ident() connected and identified; now time single-register round trips.
        latencies = []
        for _ in range(SAMPLES):
            started = time.perf_counter()
            async with asyncio.timeout(timeout_s):
                await ping()
            latencies.append((time.perf_counter() - started) * 1000)
    except DeviceRejectedError as exc:
        # It answers, with a Modbus exception: reachable, and not fit for service.
        return ProbeResult(device, address, True, None, "", (f"answers {_exception(exc)}",))
    except (DriverError, TimeoutError) as exc:
        return ProbeResult(device, address, False, None, str(exc) or "no answer")
    return ProbeResult(device, address, True, statistics.median(latencies), str(detail))


def render(results: list[ProbeResult]) -> str:
    """A table for the terminal."""
    rows = [("device", "address", "result", "latency", "detail")]
    for r in results:
        state = {True: "reachable", False: "UNREACHABLE", None: "-"}[r.reachable]
        if r.reachable and r.problems:
            state = "NOT READY"
        latency = "-" if r.latency_ms is None else f"{r.latency_ms:.1f} ms"
        detail = "; ".join(x for x in (r.detail, *r.problems) if x)
        rows.append((r.device, r.address, state, latency, detail))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True)) + "  " + row[4]
        for row in rows
    )
