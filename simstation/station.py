"""A whole simulated station on real transports, and the controller config that points at it."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from drivers.modbus.profile import find_profile, load_profile
from simstation.charger import SimPack
from simstation.clock import SimClock
from simstation.ptypair import PtyPair
from simstation.rack import SimRack

REPO = Path(__file__).resolve().parent.parent
PROFILES = REPO / "config" / "profiles"


@dataclass
class SimRackSpec:
    """One simulated rack: where it is and what is in it."""

    name: str
    slots: Sequence[int]
    transport: Literal["tcp", "rtu"] = "tcp"
    profile: str = "simrack"
    unit_id: int = 1
    packs: Mapping[int, SimPack] = field(default_factory=dict)
    charger_max_a: float = 150.0
    poll_period_s: float = 0.2

    @property
    def unit_ids(self) -> list[int]:
        """Unit ids for the unit layout: 1..n."""
        return list(range(1, len(self.slots) + 1))


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
    ) -> None:
        self.workdir = workdir
        self.specs = list(racks)
        self.clock = SimClock(speed)
        self.profiles_dir = profiles_dir
        self.comm_timeout_s = comm_timeout_s
        self.racks: dict[str, SimRack] = {}
        self.ptys: dict[str, PtyPair] = {}

    async def start(self) -> None:
        """Start every device."""
        try:
            for spec in self.specs:
                await self._start_rack(spec)
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
        )
        for slot, pack in spec.packs.items():
            rack.insert_pack(slot, pack)
        self.racks[spec.name] = rack
        if spec.transport == "tcp":
            await rack.start_tcp()
        else:
            pair = PtyPair(self.workdir, f"rack-{spec.name}")
            pair.start()
            self.ptys[spec.name] = pair
            # A pty refuses parity settings: the line runs 8N1.
            await rack.start_rtu(str(pair.device_end), parity="N")

    async def stop(self) -> None:
        """Stop every device; idempotent."""
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
    ) -> str:
        """A complete station config for the daemon, pointing at these devices.

        `sections` is extra TOML (tables such as `[supervision]`) placed before the racks.
        """
        out = [
            f'station_id = "{station_id}"\nprofiles_dir = "{self.profiles_dir}"\n',
            (
                f'[mqtt]\nhost = "{mqtt_host}"\nport = {mqtt_port}\n'
                "reconnect_min_s = 0.1\nreconnect_max_s = 0.5\nkeepalive_s = 5\n"
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
                f"poll_period_s = {spec.poll_period_s}",
                "timeout_min_s = 0.02",
                "timeout_max_s = 0.2",
            ]
            if rack.profile.layout == "unit":
                lines.append(f"unit_ids = {spec.unit_ids}")
            else:
                lines.append(f"unit_id = {spec.unit_id}")
            if spec.transport == "tcp":
                lines += ['host = "127.0.0.1"', f"port = {rack.port}"]
            else:
                lines += [
                    "[racks.serial]",
                    f'device = "{self.ptys[spec.name].controller_end}"',
                    "baudrate = 19200",
                    'parity = "N"',
                ]
            out.append("\n".join(lines) + "\n")
        return "\n".join(out)
