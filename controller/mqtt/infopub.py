"""The station's identity on MQTT: retained JSON at `<root>/info`, on every connect."""

from __future__ import annotations

import hashlib
import logging
import os
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from controller import __version__
from controller.config.model import StationConfig
from controller.errors import BrokerRefusedError, NotConnectedError
from controller.mqtt.link import MqttLink
from drivers import clock

_log = logging.getLogger(__name__)


class StationInfo(BaseModel):
    """Retained message on `<root>/info`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    station: str
    version: str = Field(description="the swapstation release")
    config_hash: str = Field(
        description="sha256 of the effective config (secrets left out): changes with the config"
    )
    started_at: datetime = Field(description="when this daemon process started")
    boot_count: int = Field(description="daemon starts on this journal, this one included")
    pid: int


def config_hash(config: StationConfig) -> str:
    """A stable fingerprint of the effective config, without its secrets."""
    text = config.model_dump_json(exclude={"mqtt": {"password"}})
    return hashlib.sha256(text.encode()).hexdigest()


class InfoPublisher:
    """Publishes `<root>/info` (retained) after every connect."""

    def __init__(self, config: StationConfig, link: MqttLink, boot_count: int) -> None:
        self.link = link
        self.topic = f"{link.topic_root}/info"
        self.info = StationInfo(
            station=config.station_id,
            version=__version__,
            config_hash=config_hash(config),
            started_at=clock.utcnow(),
            boot_count=boot_count,
            pid=os.getpid(),
        )
        link.add_connect_hook(self.publish)

    async def publish(self) -> None:
        """Publish the info (on connect, and on `republish`)."""
        try:
            await self.link.publish(self.topic, self.info.model_dump_json(), qos=1, retain=True)
        except (NotConnectedError, BrokerRefusedError) as exc:
            _log.warning("station info not published: %s", exc)
