"""The daemon's one MQTT connection: presence, reconnection, publishing, incoming messages.

Presence: the retained Will `offline` on `<root>/status`, retained `online` on every connect,
retained `offline` on an orderly stop. Reconnection: capped exponential backoff with jitter,
a fresh client per attempt (aiomqtt keeps per-connection futures that must not leak across
attempts). MQTT v5 with TCP_NODELAY: without it QoS 1 round trips stall on Nagle.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence

import aiomqtt
from paho.mqtt.properties import Properties

from controller.config.model import MqttConfig
from controller.errors import BrokerRefusedError, NotConnectedError
from controller.mqtt.pubacks import CheckedClient, PublishRefusedError
from drivers import clock
from drivers.backoff import Backoff

_log = logging.getLogger(__name__)

ONLINE = b"online"
OFFLINE = b"offline"
OFFLINE_PUBLISH_TIMEOUT_S = 2.0
OUTAGE_LOG_PERIOD_S = 60.0
STABLE_CONNECTION_S = 10.0
MAX_QUEUED_INCOMING = 1000


class LinkState(enum.Enum):
    """Where the link is in its life."""

    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    CLOSED = "closed"


MessageHandler = Callable[[aiomqtt.Message], None]
ConnectHook = Callable[[], Awaitable[None]]


class MqttLink:
    """Keeps one broker connection up for the life of the daemon."""

    def __init__(
        self,
        cfg: MqttConfig,
        *,
        client_id: str,
        topic_root: str,
        subscriptions: Sequence[str] = (),
        on_message: MessageHandler | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._cfg = cfg
        self._client_id = client_id
        self.topic_root = topic_root
        self.status_topic = f"{topic_root}/status"
        self._subscriptions = list(subscriptions)
        self._on_message = on_message
        self._routes: list[tuple[str, MessageHandler]] = []
        self._on_connect: list[ConnectHook] = []
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._tls = tls_context(cfg)
        self._client: CheckedClient | None = None
        self._stop = asyncio.Event()
        self.connected = asyncio.Event()
        self.state = LinkState.IDLE
        self.connects = 0
        self.failures = 0
        self._last_warning = 0.0
        self._backoff = Backoff(cfg.reconnect_min_s, cfg.reconnect_max_s, rng=self._rng)
        self._connected_at: float | None = None

    def route(self, topic_filter: str, handler: MessageHandler) -> None:
        """Subscribe to `topic_filter` (on every connect) and hand its messages to `handler`.

        Call before `run()`. The handler must not block: it runs on the link's reader.
        """
        self._subscriptions.append(topic_filter)
        self._routes.append((topic_filter, handler))

    async def republish(self) -> None:
        """Run the connect hooks again: every retained topic is published anew."""
        for hook in self._on_connect:
            await hook()

    def add_connect_hook(self, hook: ConnectHook) -> None:
        """Run `hook` after every (re)connect, once `online` is published."""
        self._on_connect.append(hook)

    def stop(self) -> None:
        """Ask `run()` to publish `offline`, disconnect and return."""
        self._stop.set()

    async def publish(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int = 1,
        retain: bool = False,
        properties: Properties | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - aiomqtt's own per-call timeout
    ) -> None:
        """Publish now; `NotConnectedError` when not connected, `BrokerRefusedError` if refused."""
        client = self._client
        if client is None or not self.connected.is_set():
            raise NotConnectedError(f"not connected to the broker; cannot publish {topic}")
        try:
            await client.publish_checked(
                topic, payload, qos=qos, retain=retain, properties=properties, timeout=timeout
            )
        except PublishRefusedError as exc:
            raise BrokerRefusedError(str(exc)) from exc
        except aiomqtt.MqttError as exc:
            raise NotConnectedError(f"publish to {topic} failed: {exc}") from exc

    async def publish_many(
        self, messages: Sequence[tuple[str, str]], *, qos: int = 1, retain: bool = False
    ) -> list[BrokerRefusedError | NotConnectedError | None]:
        """Publish `messages` (topic, payload) together, pipelined.

        Per message, in order: None when delivered, `BrokerRefusedError` if refused,
        `NotConnectedError` if not sent.
        """
        client = self._client
        if client is None or not self.connected.is_set():
            return [
                NotConnectedError(f"not connected to the broker; cannot publish {topic}")
                for topic, _ in messages
            ]
        errors = await client.publish_many(messages, qos=qos, retain=retain, timeout=None)
        return [
            None
            if exc is None
            else BrokerRefusedError(str(exc))
            if isinstance(exc, PublishRefusedError)
            else NotConnectedError(f"publish to {topic} failed: {exc}")
            for (topic, _), exc in zip(messages, errors, strict=True)
        ]

    async def run(self) -> None:
        """Connect, stay connected, reconnect; return after `stop()` once `offline` is out."""
        self._backoff.reset()
        try:
            while not self._stop.is_set():
                self.state = LinkState.CONNECTING
                self._connected_at = None
                try:
                    await self._session()
                except aiomqtt.MqttError as exc:
                    if self._stop.is_set():
                        break
                    if self._connection_held():
                        # A connection that held: start over at the shortest backoff. One that
                        # drops right after connecting keeps backing off (a flapping broker
                        # must not be hammered).
                        self._backoff.reset()
                    delay = self._backoff.next()
                    self.failures += 1
                    now = clock.monotonic()
                    # A broker outage can last days: warn on the first failure and then once
                    # a minute, not on every attempt.
                    loud = self.failures == 1 or now - self._last_warning >= OUTAGE_LOG_PERIOD_S
                    if loud:
                        self._last_warning = now
                    _log.log(
                        logging.WARNING if loud else logging.DEBUG,
                        "broker %s:%d: %s (attempt %d); reconnecting in %.1f s",
                        self._cfg.host,
                        self._cfg.port,
                        exc,
                        self.failures,
                        delay,
                    )
                    self.state = LinkState.BACKOFF
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._stop.wait()
        finally:
            self.state = LinkState.CLOSED

    def _connection_held(self) -> bool:
        """The last connection stayed up long enough to count as a success."""
        at = self._connected_at
        return at is not None and clock.monotonic() - at >= STABLE_CONNECTION_S

    async def _session(self) -> None:
        client = self._make_client()
        async with client:
            try:
                await client.publish(self.status_topic, ONLINE, qos=1, retain=True)
                for topic in self._subscriptions:
                    await client.subscribe(topic, qos=1)
                self._client = client
                self.connected.set()
                self.state = LinkState.CONNECTED
                self.connects += 1
                self.failures = 0
                self._connected_at = clock.monotonic()
                _log.info(
                    "connected to broker %s:%d as %s; %s is online",
                    self._cfg.host,
                    self._cfg.port,
                    self._client_id,
                    self.status_topic,
                )
                for hook in self._on_connect:
                    await hook()
                await self._serve(client)
            except aiomqtt.MqttError:
                raise
            except (Exception, asyncio.CancelledError):
                # Leaving the session on a crash or cancellation: say so while we still can,
                # because a graceful DISCONNECT suppresses the Will.
                await self._say_offline(client)
                raise
            finally:
                self.connected.clear()
                self._client = None
            self.state = LinkState.STOPPING
            await self._say_offline(client)
            _log.info("%s is offline; disconnecting", self.status_topic)

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Deliver messages until the stop request; raise `MqttError` on disconnect."""
        reader = asyncio.create_task(self._read(client), name="mqtt-reader")
        stopper = asyncio.create_task(self._stop.wait(), name="mqtt-stop-wait")
        try:
            await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, stopper):
                task.cancel()
            await asyncio.gather(reader, stopper, return_exceptions=True)
        if reader.done() and not reader.cancelled() and reader.exception() is not None:
            raise reader.exception()  # type: ignore[misc]

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            handlers = [h for f, h in self._routes if message.topic.matches(f)]
            if self._on_message is not None:
                handlers.append(self._on_message)
            for handler in handlers:
                try:
                    handler(message)
                except Exception:  # noqa: BLE001 - a bad message must not drop the link
                    _log.exception("handler failed for message on %s", message.topic)

    async def _say_offline(self, client: aiomqtt.Client) -> None:
        try:
            await client.publish(
                self.status_topic, OFFLINE, qos=1, retain=True, timeout=OFFLINE_PUBLISH_TIMEOUT_S
            )
        except (aiomqtt.MqttError, asyncio.CancelledError, RuntimeError) as exc:
            _log.debug("could not publish offline: %s", exc)

    def _make_client(self) -> CheckedClient:
        cfg = self._cfg
        return CheckedClient(
            cfg.host,
            cfg.port,
            identifier=self._client_id,
            username=cfg.username,
            password=cfg.password.get_secret_value() if cfg.password else None,
            protocol=aiomqtt.ProtocolVersion.V5,
            will=aiomqtt.Will(self.status_topic, OFFLINE, qos=1, retain=True),
            keepalive=cfg.keepalive_s,
            timeout=cfg.connect_timeout_s,
            tls_context=self._tls,
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            max_queued_incoming_messages=MAX_QUEUED_INCOMING,
        )


def tls_context(cfg: MqttConfig) -> ssl.SSLContext | None:
    """The TLS context of the broker connection (CA, client certificate), or None without TLS."""
    if cfg.tls is None:
        return None
    ctx = ssl.create_default_context(cafile=str(cfg.tls.ca_file) if cfg.tls.ca_file else None)
    if cfg.tls.cert_file is not None and cfg.tls.key_file is not None:
        ctx.load_cert_chain(str(cfg.tls.cert_file), str(cfg.tls.key_file))
    return ctx
