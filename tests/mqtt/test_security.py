"""docs/security.md, run: a TLS-only broker with passwords and the documented ACL.

The ACL is read out of docs/security.md, so the document is what is tested. The PKI (a CA,
the broker's certificate, client certificates, a CA the broker does not know) is generated
with openssl once per module.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import sqlite3
import ssl
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from controller.mqtt.pubacks import CheckedClient, PublishRefusedError
from controller.store.journal import FILENAME
from simstation.broker import BrokerTls, Mosquitto
from simstation.station import SimRackSpec
from tests.rig import Rig, running, until
from tests.support import REPO, make_ca, make_cert

DOC = REPO / "docs" / "security.md"
STATION = "pss-0001"  # the station's MQTT username is its station_id
ROOT = f"swapstation/{STATION}"
# Random, so that finding one in a log means it leaked.
PASSWORDS = {user: f"pw-{user}-{secrets.token_hex(8)}" for user in (STATION, "backend", "viewer")}
V5 = aiomqtt.ProtocolVersion.V5
V311 = aiomqtt.ProtocolVersion.V311
# paho does not close the socket when the TLS handshake fails (Client._ssl_wrap_socket): the
# garbage collector closes it, with a ResourceWarning. Ignored only where a handshake must fail.
PAHO_LEAKS_FAILED_TLS_SOCKET = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <ssl.SSLSocket:pytest.PytestUnraisableExceptionWarning"
)


def documented_block(marker: str) -> str:
    """The fenced block that follows `<!-- marker: ... -->` in docs/security.md."""
    found = re.findall(rf"<!-- {marker}:[^\n]*-->\n```text\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert len(found) == 1, f"docs/security.md must hold exactly one {marker} block"
    return str(found[0])


@dataclass(frozen=True)
class Pki:
    ca: Path
    server: tuple[Path, Path]
    station: tuple[Path, Path]
    backend: tuple[Path, Path]
    rogue_ca: Path  # trusted by nobody here
    passwd: Path
    acl: Path

    def context(
        self, *, ca: Path | None = None, cert: tuple[Path, Path] | None = None
    ) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(ca or self.ca))
        if cert is not None:
            ctx.load_cert_chain(str(cert[0]), str(cert[1]))
        return ctx


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d, "test-ca")
    server = make_cert(
        d, ca, "localhost", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        "extendedKeyUsage=serverAuth",
    )  # fmt: skip
    station = make_cert(d, ca, STATION, "extendedKeyUsage=clientAuth")
    backend = make_cert(d, ca, "backend", "extendedKeyUsage=clientAuth")
    rogue_ca, _ = make_ca(d, "rogue-ca")
    passwd = d / "passwd"
    for i, (user, password) in enumerate(PASSWORDS.items()):
        create = ["-c"] if i == 0 else []
        subprocess.run(
            ["mosquitto_passwd", "-b", *create, str(passwd), user, password],
            check=True,
            capture_output=True,
        )
    acl = d / "swapstation.acl"
    acl.write_text(documented_block("mosquitto-acl"))
    return Pki(ca[0], server, station, backend, rogue_ca, passwd, acl)


def secure_broker(workdir: Path, pki: Pki, *, require_certificate: bool = False) -> Mosquitto:
    """A TLS-only broker with the password file and the documented ACL."""
    tls = BrokerTls(pki.ca, *pki.server, require_certificate=require_certificate)
    return Mosquitto(
        workdir, tls=tls, allow_anonymous=False, password_file=pki.passwd, acl_file=pki.acl
    )


@pytest.fixture
def broker(tmp_path: Path, pki: Pki) -> Iterator[Mosquitto]:
    with secure_broker(tmp_path / "broker", pki) as b:
        yield b


def client(
    broker: Mosquitto,
    user: str | None,
    ctx: ssl.SSLContext | None,
    *,
    password: str | None = None,
    protocol: aiomqtt.ProtocolVersion = V5,
) -> CheckedClient:
    """A test client; `CheckedClient` raises when a v5 PUBACK refuses a publish."""
    return CheckedClient(
        broker.host,
        broker.port,
        identifier=f"test-{user}-{uuid.uuid4().hex[:8]}",
        username=user,
        password=password or (PASSWORDS[user] if user else None),
        protocol=protocol,
        tls_context=ctx,
        timeout=5,
    )


async def publish(c: CheckedClient, topic: str, body: str, props: Properties | None = None) -> None:
    await c.publish_checked(topic, body, qos=1, retain=False, properties=props, timeout=5)


@contextlib.asynccontextmanager
async def inbox(c: aiomqtt.Client) -> AsyncIterator[list[tuple[str, bytes]]]:
    """Every message `c` receives while inside, as (topic, payload), in arrival order."""
    got: list[tuple[str, bytes]] = []

    async def read() -> None:
        async for message in c.messages:
            assert isinstance(message.payload, bytes)
            got.append((str(message.topic), message.payload))

    task = asyncio.create_task(read())
    try:
        yield got
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def reply_topic(user: str) -> str:
    """The documented convention: swapstation/<station_id>/reply/<username>/<anything>."""
    return f"{ROOT}/reply/{user}/{uuid.uuid4().hex[:8]}"


async def send_command(
    c: CheckedClient,
    name: str,
    reply_to: str,
    *,
    protocol: aiomqtt.ProtocolVersion = V5,
    **args: str,
) -> str:
    """Publish `cmd/<name>` asking for the reply on `reply_to`; return the request id."""
    ident = f"r-{uuid.uuid4().hex[:8]}"
    if protocol is V5:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = reply_to
        props.CorrelationData = ident.encode()
        await publish(c, f"{ROOT}/cmd/{name}", json.dumps({"id": ident, **args}), props)
    else:
        body = json.dumps({"id": ident, "reply_to": reply_to, **args})
        await publish(c, f"{ROOT}/cmd/{name}", body)
    return ident


async def answer(got: list[tuple[str, bytes]], topic: str) -> dict[str, object]:
    await until(lambda: any(t == topic for t, _ in got), what=f"a reply on {topic}")
    reply: dict[str, object] = json.loads(next(p for t, p in got if t == topic))
    return reply


def station(
    tmp_path: Path, broker: Mosquitto, mqtt: str, environ: Mapping[str, str] | None = None
) -> contextlib.AbstractAsyncContextManager[Rig]:
    """The daemon in-process, configured with `mqtt` (extra [mqtt] TOML) and `environ`."""
    return running(
        tmp_path, broker, [SimRackSpec("r1", [1, 2], poll_period_s=0.05)], speed=60.0,
        station_id=STATION, wait_online=False, mqtt=mqtt, environ=environ, robot=True,
        plc=True,
    )  # fmt: skip


def station_mqtt(pki: Pki, *, password_file: Path | None, cert: bool = False) -> str:
    lines = [f'username = "{STATION}"']
    if password_file is not None:
        lines.append(f'password_file = "{password_file}"')
    lines += ["[mqtt.tls]", f'ca_file = "{pki.ca}"']
    if cert:
        lines += [f'cert_file = "{pki.station[0]}"', f'key_file = "{pki.station[1]}"']
    return "\n".join(lines) + "\n"


def journal_rows(tmp_path: Path, sql: str) -> list[tuple[object, ...]]:
    uri = f"file:{tmp_path / 'state' / FILENAME}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
        return conn.execute(sql).fetchall()


# --- the documents ----------------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_documented_mosquitto_conf_sets_what_the_test_broker_sets(tmp_path: Path, pki: Pki) -> None:
    doc = documented_block("mosquitto-conf").splitlines()
    keys = {line.split()[0] for line in doc if line and not line.startswith("#")}
    broker = secure_broker(tmp_path, pki, require_certificate=True)
    used = {line.split()[0] for line in broker.config_text().splitlines() if line}
    security = {"listener", "cafile", "certfile", "keyfile", "require_certificate"}
    security |= {"allow_anonymous", "password_file", "acl_file"}
    assert security <= used
    assert security <= keys
    assert "allow_anonymous false" in doc
    assert not any(line.startswith("topic") for line in doc), "the ACL is a file of its own"


# --- the broker alone: who may publish what, who reads what, who may connect --------------------

OTHER = "swapstation/pss-0002"
PUBLISH_RIGHTS = [
    ("backend", f"{ROOT}/cmd/set_mode", True),
    ("backend", f"{ROOT}/state", False),
    ("backend", f"{ROOT}/reply/backend/x", False),
    ("backend", "swapstation/backend/state", False),
    ("viewer", f"{ROOT}/cmd/set_mode", False),
    ("viewer", f"{ROOT}/state", False),
    ("viewer", "swapstation/viewer/state", False),
    (STATION, f"{ROOT}/cmd/set_mode", False),
    (STATION, f"{OTHER}/cmd/set_mode", False),
    (STATION, f"{OTHER}/state", False),
    (STATION, "replies/backend/x", False),
    *[
        (STATION, f"{ROOT}/{topic}", True)
        for topic in ("status", "state", "info", "robot", "events", "slots/7", "reply/backend/x")
    ],
]


@pytest.mark.asyncio
@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("user", "topic", "allowed"), PUBLISH_RIGHTS, ids=[f"{u}->{t}" for u, t, _ in PUBLISH_RIGHTS]
)
async def test_publish_rights(
    broker: Mosquitto, pki: Pki, user: str, topic: str, allowed: bool
) -> None:
    async with client(broker, user, pki.context()) as c:
        if allowed:
            await publish(c, topic, "{}")
        else:
            with pytest.raises(PublishRefusedError, match="Not authorized"):
                await publish(c, topic, "{}")


@pytest.mark.asyncio
@pytest.mark.timeout(20)
async def test_viewer_reads_station_topics_but_no_commands_or_replies(
    broker: Mosquitto, pki: Pki
) -> None:
    ctx = pki.context()
    async with (
        client(broker, "viewer", ctx) as viewer,
        client(broker, "backend", ctx) as backend,
        client(broker, STATION, ctx) as st,
    ):
        # With an acl_file every SUBSCRIBE is granted; the ACL filters each delivery.
        await viewer.subscribe("#", qos=1)
        await backend.subscribe("swapstation/#", qos=1)
        async with inbox(viewer) as seen_by_viewer, inbox(backend) as seen_by_backend:
            # One broker, in this order: what the viewer gets after `state` shows what it skipped.
            await publish(backend, f"{ROOT}/cmd/ping", '{"id": "p1"}')
            await publish(st, f"{ROOT}/reply/backend/p1", '{"id": "p1"}')
            await publish(st, f"{ROOT}/state", "{}")
            await until(lambda: len(seen_by_viewer) >= 1 and len(seen_by_backend) >= 3)
            assert [t for t, _ in seen_by_viewer] == [f"{ROOT}/state"]
            assert [t for t, _ in seen_by_backend] == [
                f"{ROOT}/cmd/ping", f"{ROOT}/reply/backend/p1", f"{ROOT}/state",
            ]  # fmt: skip


@pytest.mark.asyncio
@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("user", "password"),
    [(None, None), ("viewer", "wrong"), (STATION, "wrong"), ("mallory", "pw")],
    ids=["anonymous", "wrong-password", "station-wrong-password", "unknown-user"],
)
async def test_connect_without_valid_credentials_is_refused(
    broker: Mosquitto, pki: Pki, user: str | None, password: str | None
) -> None:
    with pytest.raises(aiomqtt.MqttCodeError, match="Not authorized"):
        async with client(broker, user, pki.context(), password=password):
            pass


@pytest.mark.asyncio
@pytest.mark.timeout(20)
@PAHO_LEAKS_FAILED_TLS_SOCKET
async def test_client_that_does_not_trust_the_ca_fails_the_handshake(
    broker: Mosquitto, pki: Pki
) -> None:
    with pytest.raises(aiomqtt.MqttError, match="certificate verify failed"):
        async with client(broker, "backend", pki.context(ca=pki.rogue_ca)):
            pass


@pytest.mark.asyncio
@pytest.mark.timeout(20)
async def test_plain_tcp_gets_nothing(broker: Mosquitto) -> None:
    with pytest.raises(aiomqtt.MqttError):
        async with client(broker, "backend", None):
            pass


# --- the daemon on that broker ----------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_backend_commands_are_executed_and_answered(
    tmp_path: Path, broker: Mosquitto, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = tmp_path / "mqtt-password"
    secret.write_text(PASSWORDS[STATION] + "\n")
    async with (
        station(tmp_path, broker, station_mqtt(pki, password_file=secret)) as rig,
        client(broker, "backend", pki.context()) as backend,
    ):
        await until(rig.daemon.link.connected.is_set, what="the daemon connected")
        await backend.subscribe("swapstation/#", qos=1)
        async with inbox(backend) as got:
            topic = reply_topic("backend")
            ident = await send_command(backend, "ping", topic)
            reply = await answer(got, topic)
            assert (reply["id"], reply["ok"], reply["code"]) == (ident, True, "done")

            topic = reply_topic("backend")
            ident = await send_command(backend, "set_mode", topic, mode="maintenance")
            reply = await answer(got, topic)
            assert (reply["id"], reply["code"]) == (ident, "done"), reply
            assert rig.station.sequencer is not None
            assert rig.station.sequencer.mode == "maintenance"

            # Everything the station publishes passes the ACL.
            wanted = {f"{ROOT}/{t}" for t in ("status", "state", "info", "robot", "events")}
            wanted |= {f"{ROOT}/slots/1", f"{ROOT}/slots/2"}
            await until(
                lambda: wanted <= {t for t, _ in got},
                what=lambda: f"{wanted - {t for t, _ in got}}",
            )
            info = b"".join(p for t, p in got if t == f"{ROOT}/info")
            assert PASSWORDS[STATION].encode() not in info
    assert "broker refused" not in caplog.text
    assert PASSWORDS[STATION] not in caplog.text


@pytest.mark.asyncio
@pytest.mark.timeout(60)
@pytest.mark.parametrize("protocol", [V5, V311], ids=["mqttv5", "mqttv311"])
async def test_viewer_command_is_not_executed(
    tmp_path: Path, broker: Mosquitto, pki: Pki, protocol: aiomqtt.ProtocolVersion
) -> None:
    secret = tmp_path / "mqtt-password"
    secret.write_text(PASSWORDS[STATION])
    ctx = pki.context()
    async with (
        station(tmp_path, broker, station_mqtt(pki, password_file=secret)) as rig,
        client(broker, "viewer", ctx, protocol=protocol) as viewer,
        client(broker, "backend", ctx) as backend,
    ):
        await until(rig.daemon.link.connected.is_set, what="the daemon connected")
        await viewer.subscribe("swapstation/+/reply/viewer/#", qos=1)
        await backend.subscribe("swapstation/+/reply/backend/#", qos=1)
        async with inbox(viewer) as viewer_got, inbox(backend) as backend_got:
            if protocol is V5:
                with pytest.raises(PublishRefusedError, match="Not authorized"):
                    await send_command(viewer, "set_mode", reply_topic("viewer"), mode="auto")
                # Not even by the station's own account.
                async with client(broker, STATION, ctx) as impostor:
                    with pytest.raises(PublishRefusedError, match="Not authorized"):
                        await send_command(impostor, "set_mode", reply_topic(STATION), mode="auto")
            else:
                # MQTT 3.1.1 has no refusal: acknowledged as delivered, and dropped.
                await send_command(
                    viewer, "set_mode", reply_topic("viewer"), protocol=V311, mode="auto"
                )
            # The broker has handled (dropped) the viewer's request before this one; the
            # station takes requests in order, so once this is answered the other would have been.
            topic = reply_topic("backend")
            ident = await send_command(backend, "set_mode", topic, mode="out_of_service")
            reply = await answer(backend_got, topic)
            assert reply["code"] == "done", reply
            assert viewer_got == []
        commands = rig.station.commands
        assert commands is not None and commands.handled == 1
        assert rig.station.sequencer is not None
        assert rig.station.sequencer.mode == "out_of_service"
    assert journal_rows(tmp_path, "SELECT id, name FROM commands") == [(ident, "set_mode")]
    changes = journal_rows(tmp_path, "SELECT body FROM events WHERE kind = 'mode_changed'")
    assert [json.loads(str(body)) for (body,) in changes] == [
        {"from": "auto", "to": "out_of_service"}
    ]


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_reply_topic_outside_the_convention_is_refused(
    tmp_path: Path, broker: Mosquitto, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    secret = tmp_path / "mqtt-password"
    secret.write_text(PASSWORDS[STATION])
    async with (
        station(tmp_path, broker, station_mqtt(pki, password_file=secret)) as rig,
        client(broker, "backend", pki.context()) as backend,
    ):
        await until(rig.daemon.link.connected.is_set, what="the daemon connected")
        await backend.subscribe("replies/#", qos=1)
        async with inbox(backend) as got:
            await send_command(backend, "ping", "replies/backend/x")
            await until(lambda: "reply to replies/backend/x not delivered" in caplog.text)
            assert "Not authorized" in caplog.text
            assert got == []


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_mutual_tls_with_the_password_from_the_environment(
    tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    environ = {"SWAPSTATION_MQTT__PASSWORD": PASSWORDS[STATION]}
    with secure_broker(tmp_path / "broker", pki, require_certificate=True) as broker:
        # The right password without a certificate: no TLS session, so no MQTT at all.
        with pytest.raises(aiomqtt.MqttError):
            async with client(broker, "backend", pki.context()):
                pass
        mqtt = station_mqtt(pki, password_file=None, cert=True)
        async with (
            station(tmp_path, broker, mqtt, environ) as rig,
            client(broker, "backend", pki.context(cert=pki.backend)) as backend,
        ):
            await until(rig.daemon.link.connected.is_set, what="the daemon connected")
            await backend.subscribe("swapstation/+/reply/backend/#", qos=1)
            async with inbox(backend) as got:
                topic = reply_topic("backend")
                ident = await send_command(backend, "ping", topic)
                reply = await answer(got, topic)
                assert (reply["id"], reply["code"]) == (ident, "done")
    assert PASSWORDS[STATION] not in caplog.text


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_daemon_with_a_wrong_password_is_refused_and_does_not_log_it(
    tmp_path: Path, broker: Mosquitto, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = f"wrong-{secrets.token_hex(8)}"
    mqtt = station_mqtt(pki, password_file=None)
    async with station(tmp_path, broker, mqtt, {"SWAPSTATION_MQTT__PASSWORD": wrong}) as rig:
        await until(lambda: rig.daemon.link.failures >= 2, what="two refused connects")
        assert not rig.daemon.link.connected.is_set()
    assert "Not authorized" in caplog.text
    assert wrong not in caplog.text
