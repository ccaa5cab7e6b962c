"""The outbox: the journal's events published to `<root>/events`, in order, at least once.

Whenever the broker is reachable, unpublished events go out in sequence order and are marked
published; across an outage they wait in the journal. A refused publish (an ACL) holds the
queue, loudly, rather than skip an event.
"""

from __future__ import annotations

import asyncio
import logging

from controller.errors import BrokerRefusedError, NotConnectedError
from controller.mqtt.link import MqttLink
from controller.store.events import EventLog
from drivers import clock

_log = logging.getLogger(__name__)

RETRY_PAUSE_S = 0.2
REFUSED_PAUSE_S = 5.0
REFUSED_LOG_PERIOD_S = 60.0


class Outbox:
    """Publishes the event log to MQTT in order, across broker outages."""

    def __init__(self, log: EventLog, link: MqttLink) -> None:
        self._log = log
        self._link = link
        self.topic = f"{link.topic_root}/events"
        self.published = 0
        self._refused_logged = -REFUSED_LOG_PERIOD_S

    async def run(self) -> None:
        """Drain the log whenever there is something to publish and a broker to take it."""
        while True:
            await self._link.connected.wait()
            self._log.wake.clear()
            batch = await self._log.unpublished()
            if not batch:
                await self._log.wake.wait()
                continue
            done = 0
            try:
                for event in batch:
                    await self._link.publish(self.topic, event.model_dump_json(), qos=1)
                    done = event.seq
                    self.published += 1
            except NotConnectedError as exc:
                _log.info("outbox paused: %s", exc)
                if done:
                    await self._log.mark_published(done)
                # The link notices the loss a moment later; do not spin until it does.
                await asyncio.sleep(RETRY_PAUSE_S)
                continue
            except BrokerRefusedError as exc:
                # Held, in order, until the broker takes it (an ACL fixed, say): an event is
                # never skipped. Loud, because nothing reaches the back end meanwhile.
                now = clock.monotonic()
                if now - self._refused_logged >= REFUSED_LOG_PERIOD_S:
                    _log.error("outbox held: %s; retrying every %g s", exc, REFUSED_PAUSE_S)
                    self._refused_logged = now
                if done:
                    await self._log.mark_published(done)
                await asyncio.sleep(REFUSED_PAUSE_S)
                continue
            await self._log.mark_published(done)
