"""The station's parts, composed once: racks, slot control, publishing, the event outbox."""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from typing import Any

from controller.config import StationConfig
from controller.devices import Links, build_pollers
from controller.events import EventLog, Outbox
from controller.journal import Journal
from controller.mqttlink import MqttLink
from controller.slotcontrol import Rack, SlotControl
from controller.slotpub import SlotPublisher
from controller.slots import RackInfo, SlotBook

_log = logging.getLogger(__name__)


class Station:
    """Everything the daemon runs besides its own lifecycle."""

    def __init__(self, config: StationConfig, journal: Journal, link: MqttLink) -> None:
        self.config = config
        self.journal = journal
        self.link = link
        self.events = EventLog(journal, config.station_id)
        self.outbox = Outbox(self.events, link)
        self.links = Links()
        self.book = SlotBook(
            RackInfo(r.name, tuple(r.slots), r.stale_after, r.heartbeat_timeout_s)
            for r in config.racks
        )
        self.pollers = build_pollers(config, self.links, self._on_snapshot)
        self.control = SlotControl(
            config,
            self.book,
            {name: Rack(p.driver, p) for name, p in self.pollers.items()},
            journal,
            self.events,
        )
        self.slot_publisher = SlotPublisher(self.control, link, config.publish)

    def _on_snapshot(self, snapshot: Any) -> None:
        self.control.on_snapshot(snapshot)

    async def start(self) -> None:
        """Restore what the journal remembers."""
        await self.control.load()

    def jobs(self) -> dict[str, Coroutine[Any, Any, None]]:
        """The station's long-running tasks, by name."""
        jobs: dict[str, Coroutine[Any, Any, None]] = {
            "outbox": self.outbox.run(),
            "slot-control": self.control.run(),
            "slot-publish": self.slot_publisher.run(),
        }
        for name, poller in self.pollers.items():
            jobs[f"rack:{name}"] = poller.run()
        return jobs

    async def safe_state(self) -> None:
        """Stop every charger we can reach: nobody supervises them once we are gone."""
        await self.control.stop_all()

    def liveness(self) -> float:
        """When the slot control last completed a step (monotonic)."""
        return self.control.last_step

    async def close(self) -> None:
        """Close the device links."""
        await self.links.close()

    def status(self) -> str:
        """One-line summary for systemd's STATUS=."""
        racks = len(self.pollers)
        online = sum(p.online for p in self.pollers.values())
        alarms = len(self.control.alarms.active())
        return f"racks {online}/{racks} online, {alarms} alarm(s)"
