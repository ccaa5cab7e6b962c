"""MQTT v5 PUBACK reason codes, minded: the one place that reaches into aiomqtt's internals.

aiomqtt 2.x resolves a QoS 1 publish on any PUBACK, so a message the broker refused (an ACL, a
quota: a failure reason code) would pass as delivered. `CheckedClient` is aiomqtt's client
with its `publish` redone to keep the reason code: it overrides `_on_publish` and fills
`_pending_publishes` itself (with a future, not an Event), aiomqtt internals. So aiomqtt is
pinned to the exact version this was written against (`AIOMQTT_VERSION`, pyproject.toml),
and a test fails on any other: moving to another release means reading its `publish` again
and updating this module.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

AIOMQTT_VERSION = "2.5.1"  # the release whose internals CheckedClient uses


class PublishRefusedError(aiomqtt.MqttError):
    """The broker answered a publish with a failure reason code (MQTT v5 PUBACK)."""


class _Acked:
    """Stands where aiomqtt keeps a publish's `asyncio.Event`.

    Its `set()` (aiomqtt's `_on_publish`, on the loop's thread) resolves a future.
    """

    __slots__ = ("future",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.future: asyncio.Future[None] = loop.create_future()

    def set(self) -> None:
        if not self.future.done():
            self.future.set_result(None)


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
            # Not aiomqtt's `_pending_call`: it counts every pending call on each publish (a
            # window of pipelined publishes cost its square) and warns past ten of them.
            acked = _Acked(asyncio.get_running_loop())
            self._pending_publishes[info.mid] = acked  # type: ignore[assignment]
            try:
                # asyncio.timeout, not aiomqtt's wait_for: on Python 3.11 wait_for can swallow
                # a cancellation that coincides with the confirmation.
                async with asyncio.timeout(self.timeout if timeout is None else timeout):
                    await acked.future
            except TimeoutError:
                raise aiomqtt.MqttError("Operation timed out") from None
            finally:
                self._pending_publishes.pop(info.mid, None)
        refused = self._refused.pop(info.mid, None)
        if refused is not None:
            raise PublishRefusedError(f"broker refused the message on {topic}: {refused}")

    async def publish_many(
        self,
        messages: Sequence[tuple[str, bytes | str]],
        *,
        qos: int,
        retain: bool,
        timeout: float | None,  # noqa: ASYNC109 - aiomqtt's own per-call timeout
    ) -> list[aiomqtt.MqttError | None]:
        """Publish `messages` (topic, payload) together, pipelined.

        All are handed to the socket first, then their acknowledgements awaited at once, under
        one timeout. Per message, in order: None when delivered, else the error
        (`PublishRefusedError` when the broker refused it).
        """
        loop = asyncio.get_running_loop()
        outcome: list[aiomqtt.MqttError | None] = [None] * len(messages)
        waiting: dict[int, tuple[int, _Acked]] = {}  # index -> (mid, its acknowledgement)
        for i, (topic, payload) in enumerate(messages):
            info = self._client.publish(topic, payload, qos, retain, None)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                outcome[i] = aiomqtt.MqttCodeError(info.rc, "Could not publish message")
            elif not info.is_published():
                acked = _Acked(loop)
                self._pending_publishes[info.mid] = acked  # type: ignore[assignment]
                waiting[i] = (info.mid, acked)
            else:
                waiting[i] = (info.mid, _done(loop))
        try:
            if waiting:
                async with asyncio.timeout(self.timeout if timeout is None else timeout):
                    await asyncio.wait([a.future for _, a in waiting.values()])
        except TimeoutError:
            pass  # what is not acknowledged by now timed out
        finally:
            for mid, _ in waiting.values():
                self._pending_publishes.pop(mid, None)
        for i, (mid, acked) in waiting.items():
            refused = self._refused.pop(mid, None)
            if not acked.future.done():
                outcome[i] = aiomqtt.MqttError("Operation timed out")
            elif refused is not None:
                outcome[i] = PublishRefusedError(
                    f"broker refused the message on {messages[i][0]}: {refused}"
                )
        return outcome


def _done(loop: asyncio.AbstractEventLoop) -> _Acked:
    acked = _Acked(loop)
    acked.set()
    return acked
