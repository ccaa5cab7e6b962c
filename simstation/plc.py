"""The simulated station PLC: the bay's vehicle, lift, gate and safety chain behind Modbus TCP.

It is the station I/O driver run in reverse: the I/O map comes from the same profile file and
the registers go through the same codec. A physics task, every `tick_s` of real time (one PLC
cycle), reads the coils the controller wrote, steps the lift, the gate and the vehicle on
simulated time, and publishes every input and register; the heartbeat counts the cycles.

The vehicle drives in (`arrive`) through the open gate, rolls onto the positioning rollers, is
switched off by its driver, and drives out by itself once released (gate open, green light,
lift down, its pack locked in) after it stopped in position. Misbehaviour is injected through
methods (`open_door`, `leave_early`, ...), and `bay` is what the simulated robot works on from
below. `unsafe_lowerings` counts PLC cycles in which the lift went down under a vehicle without
a locked pack: a test asserts it stays 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from dataclasses import dataclass

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.modbus.codec import encode
from drivers.modbus.ioprofile import IoProfile
from simstation.charger import SimPack
from simstation.clock import SimClock

_log = logging.getLogger(__name__)

TICK_S = 0.02  # one PLC cycle, real time
# Vehicles remembered after they left (tests and conservation checks look at the recent ones):
# a month's run does not hold ten thousand.
DEPARTED_KEEP = 200
FC_COILS = 1
FC_DISCRETE = 2
FC_HOLDING = 3
FC_INPUT = 4
FUNCTION_BY_TABLE = {"input": FC_INPUT, "holding": FC_HOLDING}


class SimLift:
    """The vehicle lift: position 0.0 (down) .. 1.0 (up), driven by the raise/lower outputs."""

    def __init__(self, lift_time_s: float = 8.0, position: float = 0.0) -> None:
        if lift_time_s <= 0:
            raise ValueError("lift_time_s must be > 0")
        self.lift_time_s = lift_time_s
        self.position = min(max(position, 0.0), 1.0)

    @property
    def up(self) -> bool:
        """At its top (the lift_up limit switch)."""
        return self.position >= 1.0

    @property
    def down(self) -> bool:
        """At its bottom (the lift_down limit switch)."""
        return self.position <= 0.0

    def step(self, dt: float, *, raising: bool, lowering: bool) -> None:
        """Advance `dt` simulated seconds; moves only when exactly one direction is driven."""
        if raising == lowering:
            return
        delta = dt / self.lift_time_s
        self.position = min(max(self.position + (delta if raising else -delta), 0.0), 1.0)


@dataclass
class SimVehicle:
    """A car that comes to swap its pack; timings in simulated seconds."""

    vehicle_id: str
    pack: SimPack | None
    locked: bool = True  # the pack is bolted in
    doors_closed: bool = True
    brake_ok: bool = True  # parking brake applied and gear in P
    hv_off: bool = False
    in_position: bool = False
    positioning_s: float = 20.0  # from arrival until on the positioning rollers, centred
    power_down_s: float = 5.0  # from in position until its high voltage is off
    leave_s: float = 10.0  # from release until it has driven out


class _Phase(enum.Enum):
    POSITIONING = "positioning"
    POWERING_DOWN = "powering down"
    PARKED = "parked"
    LEAVING = "leaving"


class PlcBay:
    """The vehicle in the bay as the robot sees it from below (`simstation.robot.Vehicle`)."""

    def __init__(self, plc: SimPlc) -> None:
        self._plc = plc

    @property
    def pack(self) -> SimPack | None:
        """The pack of the vehicle in the bay; None without a vehicle."""
        vehicle = self._plc.vehicle
        return vehicle.pack if vehicle is not None else None

    @pack.setter
    def pack(self, pack: SimPack | None) -> None:
        vehicle = self._plc.vehicle
        if vehicle is not None:
            vehicle.pack = pack
        elif pack is not None:
            raise RuntimeError("no vehicle in the bay to take the pack")

    @property
    def locked(self) -> bool:
        """Whether the vehicle's pack is bolted in; False without a vehicle."""
        vehicle = self._plc.vehicle
        return vehicle.locked if vehicle is not None else False

    @locked.setter
    def locked(self, locked: bool) -> None:
        vehicle = self._plc.vehicle
        if vehicle is not None:  # without one, the bolts turn in the air
            vehicle.locked = locked

    def robot_can_work(self) -> bool:
        """A vehicle is present, in position, its HV off, and the lift is up."""
        vehicle = self._plc.vehicle
        return vehicle is not None and vehicle.in_position and vehicle.hv_off and self._plc.lift.up


class SimPlc:
    """The station PLC behind a Modbus TCP server, built from an I/O profile."""

    def __init__(
        self,
        profile: IoProfile,
        *,
        clock: SimClock | None = None,
        unit_id: int = 1,
        lift_time_s: float = 8.0,
        tick_s: float = TICK_S,
    ) -> None:
        if tick_s <= 0:
            raise ValueError("tick_s must be > 0")
        self.profile = profile
        self.clock = clock or SimClock()
        self.unit_id = unit_id
        self.tick_s = tick_s  # one PLC cycle, real seconds
        self.lift = SimLift(lift_time_s)
        self.estop_ok = True
        self.light_curtain_clear = True
        self.plc_ok = True
        self.gate_is_open = False
        self.vehicle: SimVehicle | None = None
        self.departed: list[SimVehicle] = []  # the last DEPARTED_KEEP to 2x that, oldest first
        self.accidents = 0  # vehicles that drove off the raised lift
        self.unsafe_lowerings = 0  # cycles lowering a vehicle without a locked pack
        self.silent = False  # receive requests but never answer
        self.requests = 0
        self.heartbeat = 0
        self.coils: dict[str, bool] = dict.fromkeys(profile.coils, False)  # as last scanned
        self.bay = PlcBay(self)
        self.port = 0
        self._host = "127.0.0.1"
        self._phase = _Phase.PARKED
        self._phase_at = 0.0  # simulated time the phase began
        self._forced: dict[str, bool] = {}
        self._garbage: dict[str, list[int]] = {}
        self._stuck: dict[int, bool] = {}  # coil address -> the value writes are held at
        self._server: ModbusTcpServer | None = None
        self._physics: asyncio.Task[None] | None = None
        # Set once an output write has been answered: the next cycle runs at once (the outputs
        # act now, not up to a cycle later, which at 600x would be seconds of simulated time).
        # Not from inside the request: physics touching the datastore while pymodbus handles a
        # request can get replies stamped with the wrong transaction id.
        self._nudge = asyncio.Event()
        self._written = False

    # --- lifecycle -------------------------------------------------------------------------

    async def start_tcp(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve Modbus TCP; return the bound port (port 0 picks a free one)."""
        self._host, self.port = host, port
        await self._serve_tcp()
        if self._physics is None:
            self._physics = asyncio.create_task(self._run_physics(), name="simplc-physics")
        return self.port

    async def stop(self) -> None:
        """Stop serving and the physics; idempotent."""
        if self._physics is not None:
            self._physics.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._physics
            self._physics = None
        await self._shutdown_server()

    async def go_offline(self) -> None:
        """The PLC vanishes: stop listening and drop connections (physics goes on)."""
        await self._shutdown_server()

    async def come_back(self) -> None:
        """The PLC returns on the same port, as after a reboot: every coil off."""
        if self._server is None:
            await self._serve_tcp()

    # --- the vehicle -------------------------------------------------------------------------

    def arrive(self, vehicle: SimVehicle) -> None:
        """A vehicle drives into the bay: present now, in position and powered down later."""
        if self.vehicle is not None:
            raise RuntimeError(f"bay occupied by {self.vehicle.vehicle_id}")
        spec = self.profile.register_specs["vehicle_id"]
        if not vehicle.vehicle_id.isascii() or not vehicle.vehicle_id.isprintable():
            raise ValueError(f"vehicle id {vehicle.vehicle_id!r}: printable ASCII only")
        encode(spec, vehicle.vehicle_id)  # ValueError when it does not fit the register
        vehicle.in_position = False
        vehicle.hv_off = False
        self.vehicle = vehicle
        self._enter(_Phase.POSITIONING, self.clock.now())

    def open_door(self) -> None:
        """A door of the vehicle opens."""
        self._present().doors_closed = False

    def close_door(self) -> None:
        """Every door of the vehicle is closed again."""
        self._present().doors_closed = True

    def press_brake(self) -> None:
        """The driver releases the parking brake or leaves P (brake_gear_ok false)."""
        self._present().brake_ok = False

    def release_brake(self) -> None:
        """Parking brake applied and gear in P again (brake_gear_ok true)."""
        self._present().brake_ok = True

    def power_up(self) -> None:
        """The driver switches the vehicle on (HV on); it stays on."""
        vehicle = self._present()
        vehicle.hv_off = False
        if self._phase is _Phase.POWERING_DOWN:
            self._enter(_Phase.PARKED, self.clock.now())

    def power_down(self) -> None:
        """The driver switches the vehicle off again (HV off)."""
        vehicle = self._present()
        vehicle.hv_off = True
        if self._phase is _Phase.POWERING_DOWN:
            self._enter(_Phase.PARKED, self.clock.now())

    def leave_early(self) -> None:
        """The vehicle drives off now, whatever the state (with whatever pack it has)."""
        vehicle = self._present()
        if not self.lift.down:
            self.accidents += 1
            _log.warning(
                "vehicle %s drove off the lift at %.0f %%: accident",
                vehicle.vehicle_id,
                self.lift.position * 100,
            )
        self._depart()

    # --- fault injection -----------------------------------------------------------------------

    def force_input(self, name: str, value: bool | None) -> None:  # noqa: FBT001
        """Publish `value` for a discrete input regardless of the physics (None releases it)."""
        if name not in self.profile.discrete_inputs:
            raise KeyError(f"no discrete input {name!r} in profile {self.profile.name!r}")
        if value is None:
            self._forced.pop(name, None)
        else:
            self._forced[name] = value

    def set_garbage(self, register: str, raw: list[int] | None) -> None:
        """Serve raw words for a register regardless of the physics (None restores it)."""
        words = self.profile.register_specs[register].words
        if raw is None:
            self._garbage.pop(register, None)
            return
        if len(raw) != words:
            raise ValueError(f"{register} takes {words} word(s), got {len(raw)}")
        self._garbage[register] = list(raw)

    async def force_coil(self, name: str, value: bool) -> None:  # noqa: FBT001
        """Set an output at the PLC itself (as from its panel); the next cycle acts on it."""
        server = self._require_server()
        await server.async_setValues(self.unit_id, FC_COILS, self.profile.coils[name], [value])

    async def stick_coil(self, name: str, value: bool | None) -> None:  # noqa: FBT001
        """The output is stuck at `value`: writes to it do not take (None frees it)."""
        address = self.profile.coils[name]
        if value is None:
            self._stuck.pop(address, None)
            return
        self._stuck[address] = value
        await self.force_coil(name, value)

    async def read_coils(self) -> dict[str, bool]:
        """The coils as the PLC holds them now."""
        server = self._require_server()
        return await self._coil_values(server)

    # --- what the PLC publishes ----------------------------------------------------------------

    def inputs(self) -> dict[str, bool]:
        """Every discrete input as the next cycle publishes it."""
        v = self.vehicle
        values = {
            "vehicle_present": v is not None,
            "vehicle_in_position": v is not None and v.in_position,
            "vehicle_hv_off": v is not None and v.hv_off,
            "doors_closed": v is not None and v.doors_closed,
            "brake_gear_ok": v is not None and v.brake_ok,
            "lift_up": self.lift.up,
            "lift_down": self.lift.down,
            "estop_ok": self.estop_ok,
            "light_curtain_clear": self.light_curtain_clear,
            "gate_open": self.gate_is_open,
            "plc_ok": self.plc_ok,
        }
        out = {name: values.get(name, False) for name in self.profile.discrete_inputs}
        out.update(self._forced)
        return out

    # --- internals -----------------------------------------------------------------------------

    def _present(self) -> SimVehicle:
        if self.vehicle is None:
            raise RuntimeError("no vehicle in the bay")
        return self.vehicle

    def _enter(self, phase: _Phase, at: float) -> None:
        self._phase, self._phase_at = phase, at

    def _depart(self) -> None:
        vehicle = self._present()
        vehicle.in_position = False
        vehicle.hv_off = False
        self.departed.append(vehicle)
        if len(self.departed) >= 2 * DEPARTED_KEEP:
            del self.departed[:-DEPARTED_KEEP]
        self.vehicle = None
        self._enter(_Phase.PARKED, self.clock.now())

    def _released(self) -> bool:
        v = self.vehicle
        return (
            v is not None
            and self.coils.get("gate_open", False)
            and self.coils.get("signal_go", False)
            and self.lift.down
            and v.pack is not None
            and v.locked
        )

    def _step(self, now: float, dt: float) -> None:
        """One PLC cycle of physics at simulated time `now`, `dt` after the previous one."""
        # The E-stop chain cuts the lift motor's power, whatever the outputs say.
        raising = self.coils.get("lift_raise", False) and self.estop_ok
        lowering = self.coils.get("lift_lower", False) and self.estop_ok
        v = self.vehicle
        moving_down = lowering and not raising and not self.lift.down
        if moving_down and v is not None and (v.pack is None or not v.locked):
            self.unsafe_lowerings += 1
            _log.error("lowering vehicle %s without a locked pack", v.vehicle_id)
        self.lift.step(dt, raising=raising, lowering=lowering)
        if v is None:
            return
        # Each phase ends at its own simulated time, however long the cycle.
        if self._phase is _Phase.POSITIONING and now - self._phase_at >= v.positioning_s:
            v.in_position = True
            self._enter(_Phase.POWERING_DOWN, self._phase_at + v.positioning_s)
        if self._phase is _Phase.POWERING_DOWN and now - self._phase_at >= v.power_down_s:
            v.hv_off = True
            self._enter(_Phase.PARKED, self._phase_at + v.power_down_s)
        if self._phase in {_Phase.POWERING_DOWN, _Phase.PARKED} and self._released():
            # Stopped in position, the driver goes on the green light.
            v.hv_off = False
            self._enter(_Phase.LEAVING, now)
        if self._phase is _Phase.LEAVING and now - self._phase_at >= v.leave_s:
            _log.info("vehicle %s drove out", v.vehicle_id)
            self._depart()

    def _require_server(self) -> ModbusTcpServer:
        if self._server is None:
            raise RuntimeError("the PLC is not serving")
        return self._server

    async def _serve_tcp(self) -> None:
        self._server = ModbusTcpServer(
            [self._device()], address=(self._host, self.port), trace_packet=self._trace
        )
        await self._server.serve_forever(background=True)
        transport = self._server.transport
        if transport is not None and hasattr(transport, "sockets"):
            self.port = int(transport.sockets[0].getsockname()[1])
        await self._publish()

    async def _shutdown_server(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()  # type: ignore[no-untyped-call]

    def _trace(self, sending: bool, data: bytes) -> bytes:  # noqa: FBT001 - pymodbus hook
        if not sending:
            self.requests += 1
            return data
        if self._written:  # the write is answered: the cycle may run
            self._written = False
            self._nudge.set()
        return b"" if self.silent else data

    def _device(self) -> SimDevice:
        p = self.profile

        def bits(named: dict[str, int]) -> list[SimData]:
            size = -(-(max(named.values()) + 1) // 16) * 16  # whole registers of 16 bits
            return [SimData(0, values=[False] * size, datatype=DataType.BITS)]

        def registers(table: str) -> list[SimData]:
            top = max((r.offset + r.words for r in p.registers if r.table == table), default=1)
            return [SimData(0, count=top, values=0, datatype=DataType.REGISTERS)]

        return SimDevice(
            self.unit_id,
            action=self._on_access,
            simdata=(
                bits(p.coils),
                bits(p.discrete_inputs),
                registers("holding"),
                registers("input"),
            ),
        )

    async def _on_access(
        self,
        function_code: int,
        _start: int,
        address: int,
        _count: int,
        _registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> None:
        """A stuck output ignores writes (non-blocking pymodbus hook)."""
        if not set_values or function_code not in {5, 15}:
            return
        self._written = True
        if not self._stuck:
            return
        for n in range(len(set_values)):
            stuck = self._stuck.get(address + n)
            if stuck is not None:
                set_values[n] = stuck

    def _next_event_s(self, now: float) -> float | None:
        """Simulated seconds until the lift reaches an end or the vehicle's phase ends."""
        times = []
        raising = self.coils.get("lift_raise", False) and self.estop_ok
        lowering = self.coils.get("lift_lower", False) and self.estop_ok
        if raising != lowering:
            left = 1.0 - self.lift.position if raising else self.lift.position
            if left > 0:
                times.append(left * self.lift.lift_time_s)
        v = self.vehicle
        if v is not None:
            length = {
                _Phase.POSITIONING: v.positioning_s,
                _Phase.POWERING_DOWN: v.power_down_s,
                _Phase.LEAVING: v.leave_s,
            }.get(self._phase)
            if length is not None:
                times.append(max(0.0, self._phase_at + length - now))
        return min(times, default=None)

    async def _run_physics(self) -> None:
        last = self.clock.now()
        while True:
            # A cycle every tick, and one at the moment something is due to happen (a limit
            # switch, the vehicle in position), so that events are not quantised to cycles.
            wait = self.tick_s
            due = self._next_event_s(last)
            if due is not None:
                wait = min(wait, self.clock.real(due))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._nudge.wait()
            self._nudge.clear()
            now = self.clock.now()
            dt, last = now - last, now
            # The outputs set at the last scan drove the machinery since: step, then scan.
            self._step(now, dt)
            # Unreachable, the PLC goes on with the outputs it last had: physics never pauses.
            if self._server is not None:
                coils = await self._coil_values(self._server)
                if coils != self.coils:
                    # New outputs act now (the driver goes on the green light at once), not
                    # a scan later: what happens does not depend on the scan's length.
                    self.coils = coils
                    self._step(now, 0.0)
            self.gate_is_open = self.coils.get("gate_open", False)
            self.heartbeat = (self.heartbeat + 1) & 0xFFFF_FFFF
            await self._publish()

    async def _coil_values(self, server: ModbusTcpServer) -> dict[str, bool]:
        coils = self.profile.coils
        raw = await server.async_getValues(self.unit_id, FC_COILS, 0, max(coils.values()) + 1)
        return {name: bool(raw[address]) for name, address in coils.items()}

    async def _publish(self) -> None:
        server = self._server
        if server is None:
            return
        p = self.profile
        inputs = self.inputs()
        bits = [False] * (max(p.discrete_inputs.values()) + 1)
        for name, address in p.discrete_inputs.items():
            bits[address] = inputs[name]
        await server.async_setValues(self.unit_id, FC_DISCRETE, 0, bits)
        v = self.vehicle
        values: dict[str, int | str] = {
            "vehicle_id": v.vehicle_id if v is not None else "",
            "heartbeat": self.heartbeat,
        }
        for table, function in FUNCTION_BY_TABLE.items():
            regs = [r for r in p.registers if r.table == table]
            if not regs:
                continue
            block = [0] * max(r.offset + r.words for r in regs)
            for reg in regs:
                value = values.get(reg.name, "" if reg.type == "string" else 0)
                if reg.name == "heartbeat":
                    value = self.heartbeat & (0xFFFF if reg.type == "u16" else 0xFFFF_FFFF)
                words = self._garbage.get(reg.name) or encode(reg, value, p.word_order)
                block[reg.offset : reg.offset + reg.words] = words
            await server.async_setValues(self.unit_id, function, 0, block)
