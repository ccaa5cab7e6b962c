"""The one place transports, protocols and devices are composed from the config.

A simulator or another transport swaps in here and nowhere else.

Racks on TCP get a link each; racks (and the station I/O) on one RS-485 device share one
serialised link.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from controller.config.model import ModbusEndpoint, RackConfig, RobotConfig, StationConfig
from drivers.modbus.ioprofile import load_io_profile
from drivers.modbus.link import LinkParams, ModbusLink, SerialParams, TcpParams
from drivers.modbus.profile import find_profile, load_profile
from drivers.rack import RackDriver, RackPoller, RackSnapshot
from drivers.robot.link import RobotLink, RobotParams
from drivers.robot.protocol import RobotStatus
from drivers.stationio import IoSnapshot, StationIoDriver, StationIoPoller


def link_params(name: str, ep: ModbusEndpoint) -> LinkParams:
    """Driver parameters of a configured Modbus endpoint."""
    tcp = TcpParams(ep.host, ep.port) if ep.host is not None else None
    serial = None
    if ep.serial is not None:
        s = ep.serial
        serial = SerialParams(str(s.device), s.baudrate, s.parity, s.stopbits, s.bytesize)
    return LinkParams(
        name=name,
        tcp=tcp,
        serial=serial,
        timeout_min_s=ep.timeout_min_s,
        timeout_max_s=ep.timeout_max_s,
        retries=ep.retries,
    )


@dataclass
class Links:
    """Modbus links, one per TCP device and one per serial line."""

    by_serial: dict[str, ModbusLink] = field(default_factory=dict)
    all: list[ModbusLink] = field(default_factory=list)

    def for_endpoint(self, name: str, ep: ModbusEndpoint) -> ModbusLink:
        """The link for an endpoint, shared when it is on an RS-485 line already opened."""
        if ep.serial is not None:
            key = str(ep.serial.device)
            if key not in self.by_serial:
                link = ModbusLink(link_params(f"line {key}", ep))
                self.by_serial[key] = link
                self.all.append(link)
            return self.by_serial[key]
        link = ModbusLink(link_params(name, ep))
        self.all.append(link)
        return link

    async def close(self) -> None:
        """Close every link."""
        for link in self.all:
            await link.close()


def profile_path(config: StationConfig, rack: RackConfig) -> Path:
    """Where a rack's profile is (check-config has made sure it exists)."""
    path = find_profile(rack.profile, [config.profiles_dir])
    if path is None:
        raise FileNotFoundError(f"profile {rack.profile!r} not found in {config.profiles_dir}")
    return path


def build_rack(config: StationConfig, rack: RackConfig, links: Links) -> RackDriver:
    """A rack's driver on its link."""
    profile = load_profile(profile_path(config, rack))
    return RackDriver(
        rack.name,
        profile,
        links.for_endpoint(f"rack {rack.name}", rack),
        rack.slots,
        unit_id=rack.unit_id,
        unit_ids=rack.unit_ids,
    )


def build_pollers(
    config: StationConfig,
    links: Links,
    on_snapshot: Callable[[RackSnapshot], None],
) -> dict[str, RackPoller]:
    """A poller per rack."""
    pollers: dict[str, RackPoller] = {}
    for i, rack in enumerate(config.racks):
        driver = build_rack(config, rack, links)
        pollers[rack.name] = RackPoller(
            driver,
            poll_period_s=rack.poll_period_s,
            offline_after=rack.offline_after,
            on_snapshot=on_snapshot,
            # Spread over the period: n racks polled in n phases, not all in one instant.
            phase_s=rack.poll_period_s * i / len(config.racks),
        )
    return pollers


def build_station_io_driver(config: StationConfig, links: Links) -> StationIoDriver | None:
    """The station I/O (PLC) driver on its link, if station I/O is configured."""
    io = config.station_io
    if io is None:
        return None
    path = find_profile(io.profile, [config.profiles_dir])
    if path is None:
        raise FileNotFoundError(f"I/O profile {io.profile!r} not found in {config.profiles_dir}")
    return StationIoDriver(load_io_profile(path), links.for_endpoint("station I/O", io), io.unit_id)


def build_station_io(
    config: StationConfig,
    links: Links,
    on_snapshot: Callable[[IoSnapshot], None],
) -> StationIoPoller | None:
    """The station I/O (PLC) poller, if station I/O is configured."""
    io, driver = config.station_io, build_station_io_driver(config, links)
    if io is None or driver is None:
        return None
    return StationIoPoller(
        driver,
        poll_period_s=io.poll_period_s,
        offline_after=io.offline_after,
        on_snapshot=on_snapshot,
    )


def robot_params(robot: RobotConfig) -> RobotParams:
    """Driver parameters of the configured robot line."""
    s = robot.serial
    return RobotParams(
        device=str(s.device),
        baudrate=s.baudrate,
        parity=s.parity,
        stopbits=s.stopbits,
        bytesize=s.bytesize,
        ack_timeout_s=robot.ack_timeout_s,
        retries=robot.retries,
        heartbeat_timeout_s=robot.heartbeat_timeout_s,
        timeouts=robot.command_timeouts_s.model_dump(),
    )


def build_robot(
    config: StationConfig, on_status: Callable[[RobotStatus], None] | None = None
) -> RobotLink | None:
    """The robot's link, if a robot is configured."""
    if config.robot is None:
        return None
    return RobotLink(robot_params(config.robot), on_status=on_status)
