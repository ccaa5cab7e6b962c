"""A whole simulated station on real transports, and the controller config that points at it.

Built either from explicit specs (tests) or from a station config (`from_config`): the
simulator then serves exactly what the controller's config describes, the real stack in
reverse, optionally on free ports instead of the configured ones.
"""

from __future__ import annotations

import contextlib
import random
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tomli_w

from controller.config.model import SerialLine, StationConfig
from drivers.modbus.ioprofile import load_io_profile
from drivers.modbus.profile import find_profile, load_profile
from simstation.charger import SimPack
from simstation.clock import SimClock
from simstation.paths import config_dir
from simstation.plc import SimPlc, SimVehicle
from simstation.ptypair import PtyPair
from simstation.rack import TICK_S as RACK_TICK_S
from simstation.rack import SimRack
from simstation.robot import SimBay, SimRobot, Timing

PROFILES = config_dir() / "profiles"
CONTACTOR_S = 30.0  # the simulated chargers' minimum on and off times (simulated seconds)


@dataclass
class SimRackSpec:
    """One simulated rack: where it is and what is in it."""

    name: str
    slots: Sequence[int]
    transport: Literal["tcp", "rtu"] = "tcp"
    profile: str = "simrack"
    unit_id: int = 1
    packs: Mapping[int, SimPack] = field(default_factory=dict)
    fault_codes: Mapping[int, int] = field(default_factory=dict)  # chargers faulted at start
    charger_max_a: float = 150.0
    poll_period_s: float | None = None  # default: 0.2 s on TCP, 0.5 s on RTU
    units: Sequence[int] | None = None
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port
    device: Path | None = None  # rtu: where the controller's end of the pty appears
    line: SerialLine | None = None  # rtu: a real serial port to serve on (no pty pair)

    @property
    def period(self) -> float:
        """The poll period the controller is given."""
        if self.poll_period_s is not None:
            return self.poll_period_s
        return 0.2 if self.transport == "tcp" else 0.5

    @property
    def unit_ids(self) -> list[int]:
        """Unit ids for the unit layout: as given, or 1..n."""
        return list(self.units) if self.units else list(range(1, len(self.slots) + 1))


class SimStation:
    """Starts the simulated devices; `controller_toml()` describes them to the daemon."""

    def __init__(
        self,
        workdir: Path,
        racks: Sequence[SimRackSpec],
        *,
        speed: float = 1.0,
        profiles_dir: Path = PROFILES,
        comm_timeout_s: float | None = None,
        robot: Path | bool = False,
        robot_tcp: bool = False,
        robot_timing: Timing | None = None,
        plc: bool = False,
        plc_port: int = 0,
        plc_host: str = "127.0.0.1",
        plc_unit_id: int = 1,
        plc_tick_s: float | None = None,
        rack_tick_s: float | None = None,
        lift_time_s: float = 8.0,
        clock: SimClock | None = None,
    ) -> None:
        """`clock`: one shared with other stations (a site's bays), else its own at `speed`."""
        self.workdir = workdir
        self.specs = list(racks)
        self.rack_tick_s = rack_tick_s
        self.clock = clock or SimClock(speed)
        self.profiles_dir = profiles_dir
        self.comm_timeout_s = comm_timeout_s
        self.racks: dict[str, SimRack] = {}
        self.ptys: dict[str, PtyPair] = {}
        self.plc: SimPlc | None = None
        if plc:
            path = find_profile("simplc", [profiles_dir]) or PROFILES / "simplc.toml"
            self.plc = SimPlc(
                load_io_profile(path),
                clock=self.clock,
                unit_id=plc_unit_id,
                lift_time_s=lift_time_s,
                **({} if plc_tick_s is None else {"tick_s": plc_tick_s}),
            )
        self.plc_port = plc_port
        self.plc_host = plc_host
        # What the robot works on under the bay: the PLC's vehicle, or a bare stand-in.
        self.vehicle = self.plc.bay if self.plc is not None else SimBay(pack=None, locked=False)
        # The robot's serial port: a path (where the pty appears), or True for one in workdir.
        self.robot_path = (workdir / "robot") if robot is True else (robot or None)
        # Or on TCP (`robot_tcp`): the daemon reaches it at `socket://host:port`.
        self.robot_tcp = robot_tcp
        self.robot_url: str | None = None
        self.robot: SimRobot | None = None
        self._robot_timing = robot_timing

    @property
    def robot_device(self) -> str | None:
        """Where the daemon finds the robot: its pty's path or its `socket://` URL."""
        if self.robot_url is not None:
            return self.robot_url
        return None if self.robot_path is None else str(self.robot_path)

    @classmethod
    def from_config(
        cls,
        config: StationConfig,
        workdir: Path,
        *,
        speed: float = 1.0,
        free_endpoints: bool = False,
        fill: float = 0.75,
        seed: int = 1,
        comm_timeout_s: float | None = None,
        bind: str | None = None,
    ) -> SimStation:
        """The station a config describes, with packs in `fill` of its slots.

        TCP devices listen on `bind` if given, else on their configured host (the PLC on
        loopback with `free_endpoints`).
        """
        rng = random.Random(seed)  # noqa: S311 - simulation, not cryptography
        specs = []
        serial = 0
        for rack in config.racks:
            packs = {}
            for slot in rack.slots:
                if rng.random() < fill:
                    serial += 1
                    packs[slot] = SimPack(f"PK-{serial:05d}", soc=round(rng.uniform(20, 95), 1))
            device = None
            if rack.serial is not None:
                device = None if free_endpoints else Path(rack.serial.device)
            specs.append(
                SimRackSpec(
                    rack.name,
                    rack.slots,
                    transport=rack.transport,
                    profile=rack.profile,
                    unit_id=rack.unit_id or 1,
                    units=rack.unit_ids,
                    packs=packs,
                    poll_period_s=rack.poll_period_s,
                    host=bind or rack.host or "127.0.0.1",
                    port=0 if free_endpoints else rack.port,
                    device=device,
                )
            )
        robot: Path | bool = False
        if config.robot is not None:
            robot = True if free_endpoints else Path(config.robot.serial.device)
        io = config.station_io
        plc_host = "127.0.0.1" if free_endpoints or io is None else io.host or "127.0.0.1"
        return cls(
            workdir,
            specs,
            speed=speed,
            profiles_dir=config.profiles_dir,
            comm_timeout_s=comm_timeout_s,
            robot=robot,
            plc=io is not None,
            plc_port=0 if free_endpoints or io is None else io.port,
            plc_host=bind or plc_host,
            plc_unit_id=io.unit_id if io is not None else 1,
        )

    def endpoints_for(self, config: StationConfig) -> dict[str, Any]:
        """`config` as TOML-ready data, its racks pointed at where the simulator serves."""
        data = config.model_dump(mode="json", exclude_none=True)
        data.get("mqtt", {}).pop("password", None)
        for rack in data.get("racks", []):
            spec = next(s for s in self.specs if s.name == rack["name"])
            if spec.transport == "tcp":
                rack["host"], rack["port"] = spec.host, self.racks[spec.name].port
            elif spec.line is not None:
                rack["serial"]["device"] = str(spec.line.device)
            else:
                rack["serial"]["device"] = str(self.ptys[spec.name].controller_end)
                rack["serial"]["parity"] = "N"  # a pty refuses parity settings
        if "robot" in data and self.robot_device is not None:
            data["robot"]["serial"].update(device=self.robot_device, parity="N")
        if "station_io" in data and self.plc is not None:
            data["station_io"].update(host="127.0.0.1", port=self.plc.port)
        return data

    @staticmethod
    def write_toml(data: Mapping[str, Any], path: Path) -> None:
        """Write config data as TOML."""
        path.write_text(tomli_w.dumps(dict(data)))

    async def start(self) -> None:
        """Start every device."""
        try:
            for spec in self.specs:
                await self._start_rack(spec)
            if self.plc is not None:
                await self.plc.start_tcp(self.plc_host, self.plc_port)
            if self.robot_path is not None or self.robot_tcp:
                slots: dict[int, SimRack] = {
                    slot: rack for rack in self.racks.values() for slot in rack.slots
                }
                self.robot = SimRobot(
                    racks=slots, vehicle=self.vehicle, clock=self.clock, timing=self._robot_timing
                )
                if self.robot_tcp:
                    self.robot_url = await self.robot.start_tcp()
                else:
                    assert self.robot_path is not None
                    await self.robot.start(self.robot_path)
        except BaseException:
            await self.stop()
            raise

    async def _start_rack(self, spec: SimRackSpec) -> None:
        path = find_profile(spec.profile, [self.profiles_dir])
        if path is None:
            raise FileNotFoundError(f"profile {spec.profile} not in {self.profiles_dir}")
        profile = load_profile(path)
        rack = SimRack(
            profile,
            spec.slots,
            unit_id=spec.unit_id,
            unit_ids=spec.unit_ids if profile.layout == "unit" else None,
            clock=self.clock,
            charger_max_a=spec.charger_max_a,
            comm_timeout_s=self.comm_timeout_s,
            tick_s=self.rack_tick_s or RACK_TICK_S,
        )
        for slot, pack in spec.packs.items():
            rack.insert_pack(slot, pack)
        for slot, code in spec.fault_codes.items():
            rack.set_fault(slot, code)
        self.racks[spec.name] = rack
        if spec.transport == "tcp":
            await rack.start_tcp(spec.host, spec.port)
        elif spec.line is not None:
            line = spec.line
            await rack.start_rtu(str(line.device), baudrate=line.baudrate, parity=line.parity)
        else:
            pair = PtyPair(self.workdir, f"rack-{spec.name}", controller_end=spec.device)
            pair.start()
            self.ptys[spec.name] = pair
            # A pty refuses parity settings: the line runs 8N1.
            await rack.start_rtu(str(pair.device_end), parity="N")

    async def stop(self) -> None:
        """Stop every device; idempotent."""
        if self.robot is not None:
            with contextlib.suppress(Exception):
                await self.robot.stop()
        if self.plc is not None:
            with contextlib.suppress(Exception):
                await self.plc.stop()
        for rack in self.racks.values():
            with contextlib.suppress(Exception):
                await rack.stop()
        for pair in self.ptys.values():
            pair.stop()

    def controller_toml(
        self,
        *,
        station_id: str,
        mqtt_host: str,
        mqtt_port: int,
        storage: Path,
        sections: str = "",
        mqtt: str = "",
    ) -> str:
        """A complete station config for the daemon, pointing at these devices.

        `sections` is extra TOML (tables such as `[supervision]`) placed before the racks;
        `mqtt` is extra TOML for `[mqtt]` (keys such as `username`, then `[mqtt.tls]`).
        """
        out = [
            f'station_id = "{station_id}"\nprofiles_dir = "{self.profiles_dir}"\n',
            (
                f'[mqtt]\nhost = "{mqtt_host}"\nport = {mqtt_port}\n'
                "reconnect_min_s = 0.1\nreconnect_max_s = 0.5\nkeepalive_s = 5\n" + mqtt
            ),
            f'[storage]\ndir = "{storage}"\n',
            sections,
        ]
        for spec in self.specs:
            rack = self.racks[spec.name]
            lines = [
                "[[racks]]",
                f'name = "{spec.name}"',
                f'transport = "{spec.transport}"',
                f'profile = "{spec.profile}"',
                f"slots = {list(spec.slots)}",
                f"poll_period_s = {spec.period}",
                "timeout_min_s = 0.02",
                # A failing poll must fit in a poll period (RTU waits out a late reply too).
                f"timeout_max_s = {0.2 if spec.transport == 'tcp' else 0.1}",
            ]
            if rack.profile.layout == "unit":
                lines.append(f"unit_ids = {spec.unit_ids}")
            else:
                lines.append(f"unit_id = {spec.unit_id}")
            if spec.transport == "tcp":
                lines += ['host = "127.0.0.1"', f"port = {rack.port}"]
            elif spec.line is not None:
                lines += [
                    "[racks.serial]",
                    f'device = "{spec.line.device}"',
                    f"baudrate = {spec.line.baudrate}",
                    f'parity = "{spec.line.parity}"',
                ]
            else:
                lines += [
                    "[racks.serial]",
                    f'device = "{self.ptys[spec.name].controller_end}"',
                    "baudrate = 19200",
                    'parity = "N"',
                ]
            out.append("\n".join(lines) + "\n")
        if self.robot_device is not None:
            out.append(
                "[robot]\nack_timeout_s = 0.05\nretries = 5\nheartbeat_timeout_s = 1.0\n"
                f'[robot.serial]\ndevice = "{self.robot_device}"\nbaudrate = 115200\nparity = "N"\n'
            )
        if self.plc is not None:
            out.append(
                '[station_io]\ntransport = "tcp"\nhost = "127.0.0.1"\n'
                f"port = {self.plc.port}\npoll_period_s = 0.05\ntimeout_min_s = 0.02\n"
                "timeout_max_s = 0.1\nheartbeat_timeout_s = 0.5\n"
            )
        text = "\n".join(out)
        # The contactors' minimum on and off times are simulated time: at speed S a wall
        # second is S simulated seconds (unless the caller set them).
        data = tomllib.loads(text)
        charging = data.setdefault("charging", {})
        for key in ("min_on_s", "min_off_s"):
            charging.setdefault(key, max(0.01, round(CONTACTOR_S / self.clock.speed, 3)))
        return tomli_w.dumps(data)

    # --- the vehicle side -------------------------------------------------------------------

    def arrive(
        self,
        vehicle_id: str,
        *,
        serial: str,
        pack_type: str = "STD75",
        soc: float = 15.0,
        capacity_kwh: float = 75.0,
        positioning_s: float = 20.0,
        power_down_s: float = 5.0,
        leave_s: float = 10.0,
    ) -> SimVehicle:
        """A vehicle with a pack drives into the bay."""
        if self.plc is None:
            raise RuntimeError("the simulated station has no PLC")
        vehicle = SimVehicle(
            vehicle_id,
            SimPack(serial, pack_type=pack_type, soc=soc, capacity_kwh=capacity_kwh),
            positioning_s=positioning_s,
            power_down_s=power_down_s,
            leave_s=leave_s,
        )
        self.plc.arrive(vehicle)
        return vehicle

    def pack_places(self) -> list[tuple[str, str]]:
        """Every pack of the simulated world and where it is: (serial, place), one per pack.

        A serial listed twice would be a pack in two places: conservation checks look for it.
        Of the vehicles that left, the last `plc.DEPARTED_KEEP` or more are remembered.
        """
        places: list[tuple[str, str]] = []
        for rack in self.racks.values():
            for slot in rack.slots:
                pack = rack.pack_in(slot)
                if pack is not None:
                    places.append((pack.serial, f"slot {slot}"))
        if self.robot is not None and self.robot.holding is not None:
            places.append((self.robot.holding.serial, "robot"))
        if self.plc is not None:
            if self.plc.vehicle is not None and self.plc.vehicle.pack is not None:
                places.append(
                    (self.plc.vehicle.pack.serial, f"vehicle {self.plc.vehicle.vehicle_id}")
                )
            places += [
                (gone.pack.serial, f"departed {gone.vehicle_id}")
                for gone in self.plc.departed
                if gone.pack is not None
            ]
        return places
