"""The robot's state on MQTT: retained JSON at `<root>/robot`, on every change."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime

from pydantic import BaseModel, ConfigDict

from controller.errors import BrokerRefusedError, NotConnectedError
from controller.mqtt.link import MqttLink
from drivers import clock
from drivers.robot.link import RobotLink
from drivers.robot.protocol import FaultCode, RobotState, RobotStatus, Target

_log = logging.getLogger(__name__)

TICK_S = 1.0


class RobotLinkStats(BaseModel):
    """Counters of the serial link."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    commands: int
    retransmits: int
    bad_frames: int
    dropped_bytes: int
    link_losses: int


class RobotStateMessage(BaseModel):
    """Retained message on `<root>/robot`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    link: str  # disconnected / syncing / ready / closed
    state: str | None  # idle / busy / fault / stopped (None: never heard from it)
    position: str | None  # home / bay / slot / between
    slot: int | None
    holding: str | None  # serial of the pack it holds
    fault: str | None
    locked: bool | None
    lock_torque_nm: float | None
    boot_id: int | None
    stats: RobotLinkStats
    updated_at: datetime


def robot_state(link: RobotLink) -> RobotStateMessage:
    """Build the message from the link's view of the robot."""
    s: RobotStatus | None = link.status
    reassembly = link.reassembly
    stats = RobotLinkStats(
        commands=link.stats.commands,
        retransmits=link.stats.retransmits,
        bad_frames=reassembly.stats.bad_frames if reassembly else 0,
        dropped_bytes=reassembly.stats.dropped_bytes if reassembly else 0,
        link_losses=link.stats.link_losses,
    )
    fault = None
    if s is not None and s.fault:
        try:
            fault = FaultCode(s.fault).name.lower()
        except ValueError:
            fault = f"fault {s.fault}"
    return RobotStateMessage(
        link=link.state.value,
        state=RobotState(s.state).name.lower() if s else None,
        position=Target(s.position).name.lower() if s else None,
        slot=s.slot if s and s.position == Target.SLOT else None,
        holding=s.pack_serial if s else None,
        fault=fault,
        locked=bool(s.locked) if s else None,
        lock_torque_nm=s.torque_dnm / 10 if s else None,
        boot_id=s.boot_id if s else None,
        stats=stats,
        updated_at=clock.utcnow(),
    )


class RobotPublisher:
    """Keeps `<root>/robot` up to date."""

    def __init__(self, robot: RobotLink, link: MqttLink) -> None:
        self.robot = robot
        self.link = link
        self.topic = f"{link.topic_root}/robot"
        self.changed = asyncio.Event()
        self._last: RobotStateMessage | None = None
        link.add_connect_hook(self._on_connect)

    async def _on_connect(self) -> None:
        self._last = None
        self.changed.set()

    async def run(self) -> None:
        """Publish whenever the robot or the link changes (checked at least every second)."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TICK_S):
                    await self.changed.wait()
            self.changed.clear()
            message = robot_state(self.robot)
            old = self._last
            if old is not None and old.model_dump(exclude={"updated_at", "stats"}) == (
                message.model_dump(exclude={"updated_at", "stats"})
            ):
                continue
            try:
                await self.link.publish(self.topic, message.model_dump_json(), qos=1, retain=True)
            except NotConnectedError:
                continue
            except BrokerRefusedError as exc:
                _log.warning("robot state not published: %s", exc)
            self._last = message
