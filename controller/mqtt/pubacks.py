"""MQTT v5 PUBACK reason codes, minded: the one place that reaches into aiomqtt's internals.

aiomqtt 2.x resolves a QoS 1 publish on any PUBACK, so a message the broker refused (an ACL, a
quota: a failure reason code) would pass as delivered. `CheckedClient` is aiomqtt's client
with its `publish` redone to keep the reason code: it overrides `_on_publish` and uses
`_pending_call` and `_pending_publishes`, aiomqtt internals. So aiomqtt is pinned to the exact
version this was written against (`AIOMQTT_VERSION`, pyproject.toml), and a test fails on any
other: moving to another release means reading its `publish` again and updating this module.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

AIOMQTT_VERSION = "2.5.1"  # the release whose internals CheckedClient uses


class PublishRefusedError(aiomqtt.MqttError):
    """The broker answered a publish with a failure reason code (MQTT v5 PUBACK)."""


class CheckedClient(aiomqtt.Client):
    """aiomqtt's client, minding the reason code of a v5 PUBACK.

    aiomqtt 2.x counts any PUBACK as success, so a publish the broker refused (an ACL, a
    quota) would pass as delivered. `publish_checked` is aiomqtt's `publish` plus that check.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refused: dict[int, ReasonCode] = {}

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        if reason_code.is_failure:
            self._refused[mid] = reason_code
        super()._on_publish(client, userdata, mid, reason_code, properties)

    async def publish_checked(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int,
        retain: bool,
        properties: Properties | None,
        timeout: float | None,  # noqa: ASYNC109 - aiomqtt's own per-call timeout
    ) -> None:
        """Publish; raise `PublishRefusedError` when the broker refuses the message."""
        info = self._client.publish(topic, payload, qos, retain, properties)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
        if not info.is_published():
            confirmation = asyncio.Event()
            with self._pending_call(info.mid, confirmation, self._pending_publishes):
                # asyncio.timeout, not aiomqtt's wait_for: on Python 3.11 wait_for can swallow
                # a cancellation that coincides with the confirmation.
                try:
                    async with asyncio.timeout(self.timeout if timeout is None else timeout):
                        await confirmation.wait()
                except TimeoutError:
                    raise aiomqtt.MqttError("Operation timed out") from None
        refused = self._refused.pop(info.mid, None)
        if refused is not None:
            raise PublishRefusedError(f"broker refused the message on {topic}: {refused}")
