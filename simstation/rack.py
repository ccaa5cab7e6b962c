"""The simulated charger rack: a real pymodbus server speaking a register profile.

It is the driver run in reverse: the register map comes from the same profile file and the
values go through the same codec. A physics task steps every slot's charger on simulated time,
reads the setpoints the controller wrote and publishes the measurements. Faults are injected
through methods (see `docs/simulator.md`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers import clock as clocks
from drivers.modbus.codec import RAW_RANGE, Value, WordOrder, decode, encode
from drivers.modbus.profile import RackProfile, RegisterSpec
from simstation.charger import SimCharger, SimPack
from simstation.clock import SimClock

_log = logging.getLogger(__name__)

FC_READ_HOLDING = 3
FC_WRITE_INPUT = 4  # the datastore's input block is written with the read code
TICK_S = 0.05


@dataclass(frozen=True)
class RackIdentityValues:
    """What the rack-level identity registers say."""

    vendor: str = "SWAPSIM"
    model: str = "R8"
    firmware: int = 102


class SimRack:
    """A rack of simulated chargers behind a Modbus TCP or RTU server."""

    def __init__(
        self,
        profile: RackProfile,
        slots: Sequence[int],
        *,
        unit_id: int = 1,
        unit_ids: Sequence[int] | None = None,
        clock: SimClock | None = None,
        ambient_c: float = 25.0,
        charger_max_a: float = 150.0,
        comm_timeout_s: float | None = None,
        identity: RackIdentityValues = RackIdentityValues(),
        seed: int = 3,
        tick_s: float = TICK_S,
    ) -> None:
        if tick_s <= 0:
            raise ValueError("tick_s must be > 0")
        self.tick_s = tick_s  # a physics step at least this often (real seconds), and on a write
        self.profile = profile
        self.slots = tuple(slots)
        if profile.layout == "unit":
            if unit_ids is None or len(unit_ids) != len(slots):
                raise ValueError("unit layout: one unit id per slot")
            self.units = tuple(unit_ids)
        else:
            self.units = (unit_id,) * len(slots)
        self.clock = clock or SimClock()
        self.ambient_c = ambient_c
        self.comm_timeout_s = comm_timeout_s
        self.identity = identity
        self.chargers = {slot: SimCharger(max_current_a=charger_max_a) for slot in self.slots}
        self.silent = False
        self.silent_units: set[int] = set()  # chargers (unit ids) that stopped answering
        self.drop_rate = 0.0  # share of answers lost on the way
        self._rng = random.Random(seed)  # noqa: S311 - simulation
        self._last_unit = 0
        self.requests = 0
        # Called after every physics tick with the simulated time (tests sample power here).
        self.on_tick: list[Callable[[float], None]] = []
        self._overrides: dict[tuple[int, str], list[int]] = {}
        self._encodings: dict[tuple[int, str], tuple[Value, list[int]]] = {}
        self._index = {slot: i for i, slot in enumerate(self.slots)}
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        self._physics: asyncio.Task[None] | None = None
        # Set by a handover or a setpoint write: the physics steps at once rather than at the
        # next tick, as a real charger applies a setpoint and reports a pack within
        # milliseconds (at 600x a 50 ms tick would be 30 simulated seconds late).
        self._nudge = asyncio.Event()
        # A setpoint write is being handled: nudge once it is answered, not from inside the
        # request (physics touching the datastore mid-request can garble transaction ids).
        self._written = False
        self._last_request = clocks.monotonic()
        self._rack_heartbeat = 0
        self._host = "127.0.0.1"
        self.port = 0
        self._serial_port: str | None = None
        limit = profile.slot_registers["current_limit"]
        self._limit_addresses = {
            (self.units[i], profile.slot_address(limit, i)): slot
            for i, slot in enumerate(self.slots)
        }

    # --- lifecycle -------------------------------------------------------------------------

    async def start_tcp(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve Modbus TCP; return the bound port (port 0 picks a free one)."""
        self._host, self.port = host, port
        await self._serve_tcp()
        self._start_physics()
        return self.port

    async def start_rtu(self, device: str, baudrate: int = 19200, parity: str = "E") -> None:
        """Serve Modbus RTU on a serial device (the device end of a pty pair)."""
        self._serial_port = device
        self._server = ModbusSerialServer(
            self._devices(),
            framer=FramerType.RTU,
            port=device,
            baudrate=baudrate,
            parity=parity,
            trace_packet=self._trace,
        )
        await self._server.serve_forever(background=True)
        await self._publish_all()
        self._start_physics()

    async def stop(self) -> None:
        """Stop serving and the physics; idempotent."""
        if self._physics is not None:
            self._physics.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._physics
            self._physics = None
        await self._shutdown_server()

    async def go_offline(self) -> None:
        """The rack vanishes: TCP stops listening and drops connections; RTU goes silent."""
        if self._serial_port is not None:
            self.silent = True
            return
        await self._shutdown_server()

    async def come_back(self) -> None:
        """The rack returns on the same address."""
        if self._serial_port is not None:
            self.silent = False
            return
        await self._serve_tcp()

    # --- what the robot and the tests do to it ------------------------------------------------

    def insert_pack(self, slot: int, pack: SimPack) -> None:
        """A pack is put into `slot`."""
        self.chargers[slot].insert(pack)
        self._nudge.set()

    def remove_pack(self, slot: int) -> SimPack:
        """The pack in `slot` is taken out."""
        pack = self.chargers[slot].remove()
        self._nudge.set()
        return pack

    def pack_in(self, slot: int) -> SimPack | None:
        """The pack in `slot`, if any."""
        return self.chargers[slot].pack

    # --- fault injection -----------------------------------------------------------------------

    def set_fault(self, slot: int, code: int) -> None:
        """The charger reports fault `code` (0 clears it)."""
        self.chargers[slot].fault_code = code

    def set_temperature(self, slot: int, temp_c: float | None) -> None:
        """Hold the pack at `temp_c` (None releases it to physics)."""
        self.chargers[slot].temp_override_c = temp_c

    def thermal_runaway(self, slot: int, c_per_min: float) -> None:
        """The pack's temperature ramps up at `c_per_min` of simulated time (0 stops it)."""
        self.chargers[slot].runaway_c_per_min = c_per_min

    def set_garbage(self, slot: int, register: str, raw: Sequence[int] | None) -> None:
        """Serve raw words for a register regardless of the physics (None restores it)."""
        key = (slot, register)
        if raw is None:
            self._overrides.pop(key, None)
            return
        words = self.profile.slot_registers[register].words
        if len(raw) != words:
            raise ValueError(f"{register} takes {words} word(s), got {len(raw)}")
        self._overrides[key] = list(raw)

    def set_disabled(self, slot: int, *, disabled: bool) -> None:
        """Take a slot out of service at the rack (status disabled)."""
        self.chargers[slot].disabled = disabled

    # --- internals -----------------------------------------------------------------------------

    async def _serve_tcp(self) -> None:
        self._server = ModbusTcpServer(
            self._devices(), address=(self._host, self.port), trace_packet=self._trace
        )
        await self._server.serve_forever(background=True)
        transport = self._server.transport
        if transport is not None and hasattr(transport, "sockets"):
            self.port = int(transport.sockets[0].getsockname()[1])
        await self._publish_all()

    async def _shutdown_server(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()  # type: ignore[no-untyped-call]

    def _start_physics(self) -> None:
        if self._physics is None:
            self._physics = asyncio.create_task(self._run_physics(), name="simrack-physics")

    def _trace(self, sending: bool, data: bytes) -> bytes:  # noqa: FBT001 - pymodbus hook
        if not sending:
            self.requests += 1
            self._last_request = clocks.monotonic()
            # The unit a request is for: RTU's first byte, or the MBAP header's seventh.
            if data:
                self._last_unit = (
                    data[0] if self._serial_port is not None else (data[6] if len(data) > 6 else 0)
                )
            return data
        if self._written:  # a setpoint write is answered: the physics may apply it
            self._written = False
            self._nudge.set()
        if self.silent or self._last_unit in self.silent_units:
            return b""
        if self.drop_rate and self._rng.random() < self.drop_rate:
            return b""  # a lossy line: this answer never arrives
        return data

    def _devices(self) -> list[SimDevice]:
        p = self.profile
        units = sorted(set(self.units))
        devices = []
        for unit in units:
            if p.layout == "block":
                n = len(self.slots)
                size = p.stride * (n - 1) + p.block_span
                start = p.base
            else:
                size, start = p.block_span, p.base
            input_blocks = [SimData(start, count=size, values=0, datatype=DataType.REGISTERS)]
            if p.rack and unit == self.units[0]:
                top = max(r.offset + r.words for r in p.rack)
                input_blocks.insert(0, SimData(0, count=top, values=0, datatype=DataType.REGISTERS))
            holding = [SimData(start, count=size, values=0, datatype=DataType.REGISTERS)]
            bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
            devices.append(
                SimDevice(
                    unit,
                    simdata=(bits, list(bits), holding, input_blocks),
                    action=functools.partial(self._on_access, unit),
                )
            )
        return devices

    async def _on_access(
        self,
        unit: int,
        function_code: int,
        _start: int,
        address: int,
        _count: int,
        _registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> None:
        """A real charger clamps a current limit above its rating (non-blocking hook)."""
        if not set_values or function_code not in {6, 16}:
            return
        self._written = True  # the physics applies it once the write is answered (`_trace`)
        limit = self.profile.slot_registers["current_limit"]
        for n in range(len(set_values)):
            if (unit, address + n) in self._limit_addresses:
                charger = self.chargers[self._limit_addresses[(unit, address + n)]]
                top = round(charger.max_current_a / limit.scale)
                set_values[n] = min(int(set_values[n]), top)  # type: ignore[call-overload]

    async def _run_physics(self) -> None:
        last = self.clock.now()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.tick_s):
                    await self._nudge.wait()
            self._nudge.clear()
            now = self.clock.now()
            dt, last = now - last, now
            # An unreachable rack keeps charging at its last setpoints: physics never pauses.
            await self._read_setpoints()
            await self._comm_watchdog()
            for charger in self.chargers.values():
                charger.step(dt, self.ambient_c)
            await self._publish_all()
            for hook in self.on_tick:
                hook(now)

    async def _comm_watchdog(self) -> None:
        """A real rack stops charging when its controller stops talking to it."""
        if self.comm_timeout_s is None or self._server is None:
            return
        if clocks.monotonic() - self._last_request <= self.comm_timeout_s:
            return
        enable = self.profile.slot_registers["charge_enable"]
        for slot, charger in self.chargers.items():
            if charger.enabled:
                charger.enabled = False
                i = self._index[slot]
                # The register says so too: a read-back shows the charger off.
                await self._server.async_setValues(
                    self.units[i], FC_READ_HOLDING, self.profile.slot_address(enable, i), [0]
                )

    async def _read_setpoints(self) -> None:
        server = self._server
        if server is None:
            return
        p = self.profile
        enable = p.slot_registers["charge_enable"]
        limit = p.slot_registers["current_limit"]
        for unit, start, size, members in self._holding_spans():
            words = [
                int(w) for w in await server.async_getValues(unit, FC_READ_HOLDING, start, size)
            ]
            for slot, i in members:
                a = p.slot_address(enable, i) - start
                b = p.slot_address(limit, i) - start
                charger = self.chargers[slot]
                charger.enabled = bool(decode(enable, words[a : a + enable.words], p.word_order))
                value = decode(limit, words[b : b + limit.words], p.word_order)
                charger.limit_a = float(value) if not isinstance(value, str) else 0.0

    def _holding_spans(self) -> list[tuple[int, int, int, list[tuple[int, int]]]]:
        """(unit, start, size, [(slot, index)]) covering every slot's holding registers."""
        p = self.profile
        holding = [r for r in p.slot if r.table == "holding"]
        lo = min(r.offset for r in holding)
        hi = max(r.offset + r.words for r in holding)
        spans: dict[int, list[tuple[int, int]]] = {}
        for slot, i in self._index.items():
            spans.setdefault(self.units[i], []).append((slot, i))
        out = []
        for unit, members in spans.items():
            first = min(i for _, i in members)
            last = max(i for _, i in members)
            start = p.base + (first * p.stride if p.layout == "block" else 0) + lo
            end = p.base + (last * p.stride if p.layout == "block" else 0) + hi
            out.append((unit, start, end - start, members))
        return out

    def _slot_values(self, slot: int) -> dict[str, Value]:
        c = self.chargers[slot]
        p = c.pack
        codes = self.profile.status_codes
        return {
            "status": codes[c.status],
            "pack_present": int(p is not None),
            "pack_serial": p.serial if p else "",
            "pack_type": p.pack_type if p else "",
            "soc": round(p.soc, 1) if p else 0,
            "soh": p.soh if p else 0,
            "voltage": round(c.voltage_v, 1),
            "current": round(c.current_a, 3),
            "temp_max": round(c.temp_max, 1) if c.temp_max is not None else 0,
            "temp_min": round(c.temp_min, 1) if c.temp_min is not None else 0,
            "fault_code": c.fault_code,
            "energy_wh": int(c.energy_wh),
            "power_w": c.power_w,
            "bms_voltage_max": p.bms_voltage_max if p else 0,
            "bms_current_max": p.bms_current_max if p else 0,
            "heartbeat": c.heartbeat,
        }

    def _encoded(self, slot: int, reg: RegisterSpec, value: Value) -> list[int]:
        """The register's words for `value`, encoded again only when the value changed.

        Most values of most slots stay put from one tick to the next; encoding every one of
        them every tick made a 40-slot rack's tick take 3 ms, during which it answers nobody.
        """
        key = (slot, reg.name)
        cached = self._encodings.get(key)
        if cached is not None and cached[0] == value and type(cached[0]) is type(value):
            return cached[1]
        words = _encode_clamped(reg, value, self.profile.word_order)
        self._encodings[key] = (value, words)
        return words

    async def _publish_all(self) -> None:
        server = self._server
        if server is None:
            return
        p = self.profile
        inputs = [r for r in p.slot if r.table == "input"]
        lo = min(r.offset for r in inputs)
        hi = max(r.offset + r.words for r in inputs)
        per_unit: dict[int, list[tuple[int, int]]] = {}
        for slot, i in self._index.items():
            per_unit.setdefault(self.units[i], []).append((slot, i))
        for unit, members in per_unit.items():
            first = min(i for _, i in members)
            last = max(i for _, i in members)
            step = p.stride if p.layout == "block" else 0
            start = p.base + first * step + lo
            block = [0] * (last * step + hi - first * step - lo)
            if p.layout == "block":
                # Keep what lies between the slot blocks (gaps read back as they are).
                block = [
                    int(w)
                    for w in await server.async_getValues(unit, FC_WRITE_INPUT, start, len(block))
                ]
            for slot, i in members:
                values = self._slot_values(slot)
                for reg in inputs:
                    words = self._overrides.get((slot, reg.name)) or self._encoded(
                        slot, reg, values.get(reg.name, 0)
                    )
                    at = p.slot_address(reg, i) - start
                    block[at : at + reg.words] = words
            await server.async_setValues(unit, FC_WRITE_INPUT, start, block)
        if p.rack:
            self._rack_heartbeat = (self._rack_heartbeat + 1) & 0xFFFF
            rack_values: dict[str, Value] = {
                "vendor": self.identity.vendor,
                "model": self.identity.model,
                "firmware": self.identity.firmware,
                "slot_count": len(self.slots),
                "rack_heartbeat": self._rack_heartbeat,
            }
            top = max(r.offset + r.words for r in p.rack)
            block = [0] * top
            for reg in p.rack:
                if reg.name in rack_values:
                    words = _encode_clamped(reg, rack_values[reg.name], p.word_order)
                    block[reg.offset : reg.offset + reg.words] = words
            await server.async_setValues(self.units[0], FC_WRITE_INPUT, 0, block)


def _encode_clamped(spec: RegisterSpec, value: Value, order: WordOrder) -> list[int]:
    """Encode, saturating numbers at the type's range (a real device saturates)."""
    try:
        return encode(spec, value, order)
    except (ValueError, TypeError):
        if isinstance(value, str):
            return encode(spec, value[: spec.words * 2], order)
        low, high = RAW_RANGE.get(spec.type, (-3.0e38, 3.0e38))  # f32: near its largest
        raw = min(max(value / spec.scale, low), high)
        return encode(spec, raw * spec.scale, order)
