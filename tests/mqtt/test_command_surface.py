"""The command surface under hostile input: deep, wide, coerced, foreign, garbage.

A back end written from docs/mqtt-api.md alone (paho-mqtt used directly, MQTT v5: a Response
Topic and Correlation Data on every request) sends requests built from the published schemas
(docs/schemas/, turned into hypothesis strategies here), every schema-invalid variant of them,
arbitrary
bytes, JSON nested and wide, and reply topics with wildcards or on the station's own tree.
An independent validator (jsonschema, on the same published schemas) says which requests are
valid. Invariants:

- every request with a usable reply topic is answered;
- nothing invalid is run (the sequencer is asked only for schema-valid requests);
- the daemon stays up, and a `ping` is answered after whatever came before;
- SIGTERM stops it in under 5 s.

`SWAPSTATION_LONG=1` sends 100,000 payloads (docs/mqtt-api.md, "Hostile input").
"""

from __future__ import annotations

import asyncio
import collections
import json
import math
import os
import random
import threading
import time
from collections.abc import Iterator
from datetime import timedelta, timezone
from pathlib import Path
from typing import Any

import jsonschema
import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from controller.swap.requests import Outcome, SwapRequest
from simstation.broker import Mosquitto
from tests.rig import Rig, rack, running
from tests.support import REPO

LONG = os.environ.get("SWAPSTATION_LONG") == "1"
SCHEMAS = REPO / "docs" / "schemas"
COMMANDS = sorted(
    p.name.removeprefix("cmd.").removesuffix(".request.schema.json")
    for p in SCHEMAS.glob("cmd.*.request.schema.json")
)
REPLIES = "fuzz/replies"


def schema(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SCHEMAS / f"cmd.{name}.request.schema.json").read_text())
    return loaded


VALIDATORS = {
    name: jsonschema.Draft202012Validator(schema(name), format_checker=jsonschema.FormatChecker())
    for name in COMMANDS
}


def valid(name: str, payload: bytes) -> bool:
    """The independent verdict: UTF-8 JSON that the published schema accepts."""
    if name not in VALIDATORS:
        return False
    try:
        document = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    return bool(VALIDATORS[name].is_valid(document))


class Backend:
    """A back end on paho-mqtt: requests with a Response Topic, replies by correlation."""

    def __init__(self, broker: Mosquitto, station: str = "t1") -> None:
        self.root = f"swapstation/{station}"
        self.replies: dict[bytes, dict[str, Any]] = {}
        self.arrived = threading.Condition()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="fuzz-backend", protocol=mqtt.MQTTv5
        )
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_args: subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe(REPLIES, qos=1)
        assert subscribed.wait(5), "no SUBACK"

    def _on_message(self, _client: Any, _data: Any, message: mqtt.MQTTMessage) -> None:
        corr = getattr(message.properties, "CorrelationData", None)
        with self.arrived:
            self.replies[bytes(corr or b"")] = json.loads(message.payload)
            self.arrived.notify_all()

    def send(
        self, name: str, payload: bytes, corr: bytes, *, response: str | None = REPLIES
    ) -> None:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if response is not None:
            props.ResponseTopic = response
        props.CorrelationData = corr
        self.client.publish(f"{self.root}/cmd/{name}", payload, qos=1, properties=props)

    def wait(self, corrs: set[bytes], timeout: float = 30.0) -> set[bytes]:
        """Block (in a thread) until every correlation is answered; the ones that were not."""
        deadline = time.monotonic() + timeout
        with self.arrived:
            while not corrs <= self.replies.keys() and time.monotonic() < deadline:
                self.arrived.wait(0.1)
            return corrs - self.replies.keys()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Ran:
    """Every request the command server passed to the sequencer."""

    def __init__(self, rig: Rig) -> None:
        seq = rig.station.sequencer
        assert seq is not None
        self.calls: list[tuple[str, dict[str, Any]]] = []
        real = seq.submit

        async def spy(request: SwapRequest) -> Outcome:
            self.calls.append((type(request).__name__, request.model_dump()))
            return await real(request)

        seq.submit = spy  # type: ignore[method-assign]


# --- hostile payloads -------------------------------------------------------------------------


def _deep(depth: int) -> bytes:
    return ('{"id":"deep","x":' + "[" * depth + "]" * depth + "}").encode()


def hostile(rng: random.Random) -> Iterator[tuple[str, bytes]]:
    """Payloads our simulator never sends, endlessly (name, payload)."""
    while True:
        name = rng.choice([*COMMANDS, "start_swap", "set_slot", "nope", "..x", "SET_MODE", "é"])
        kind = rng.randrange(9)
        if kind == 0:
            yield name, rng.randbytes(rng.randrange(0, 300))
        elif kind == 1:
            yield name, _deep(rng.choice([9, 50, 1000, 3000]))
        elif kind == 2:  # wide
            yield name, json.dumps({f"k{i}": i for i in range(rng.randrange(50, 400))}).encode()
        elif kind == 3:  # coercions the docs call invalid
            yield (
                "set_slot",
                json.dumps(
                    {
                        "id": f"c{rng.random()}",
                        "slot": rng.choice(["3", True, 3.0, None, -1, 2**40]),
                        "enabled": rng.choice(["no", "off", 0, 1, "true", None]),
                    }
                ).encode(),
            )
        elif kind == 4:
            when = rng.choice([1700000000, "tomorrow", "2030-01-01T00:00:00", True])
            yield name, json.dumps({"id": f"e{rng.random()}", "expires_at": when}).encode()
        elif kind == 5:
            yield name, '{"id":"u16","mode":"auto"}'.encode(rng.choice(["utf-16", "utf-32"]))
        elif kind == 6:
            yield name, rng.choice([b"null", b"[]", b'"x"', b"1e999", b"{", b"{}" * 100, b""])
        elif kind == 7:
            yield name, json.dumps({"id": "x" * rng.choice([0, 65, 5000])}).encode()
        else:
            yield name, b'{"id":"big","reason":"' + b"a" * rng.randrange(4000, 9000) + b'"}'


@pytest.mark.timeout(3600 if LONG else 240)
async def test_hostile_payloads_are_answered_and_never_run(
    tmp_path: Path, broker: Mosquitto
) -> None:
    count = 100_000 if LONG else 1_500
    rng = random.Random(13)
    async with running(tmp_path, broker, [rack()], robot=True, plc=True) as rig:
        ran = Ran(rig)
        backend = await asyncio.to_thread(Backend, broker)
        try:
            payloads = hostile(rng)
            sent: dict[bytes, tuple[str, bytes]] = {}
            batch = 50  # at most this many in flight (the station queues 64)
            schema_valid = 0

            def judge(corrs: set[bytes]) -> int:
                """How many of these the schema accepts; the others were refused, not run.

                In a thread: the daemon shares this event loop, and 100,000 schema checks on it
                would stall the station (its broker connection would time out).
                """
                accepted = 0
                for corr in corrs:
                    name, payload = sent[corr]
                    reply = backend.replies[corr]
                    if valid(name, payload):
                        accepted += 1
                    else:  # the published schema refuses it: not run
                        assert reply["code"] in {"invalid", "unknown_command"}, (
                            payload[:120],
                            reply,
                        )
                return accepted

            for start in range(0, count, batch):
                corrs = set()
                for i in range(start, min(count, start + batch)):
                    name, payload = next(payloads)
                    corr = str(i).encode()
                    sent[corr] = (name, payload)
                    corrs.add(corr)
                    backend.send(name, payload, corr)
                missing = await asyncio.to_thread(backend.wait, corrs)
                assert not missing, f"not answered: {[sent[c] for c in sorted(missing)][:3]}"
                assert not rig.task.done(), "the daemon stopped"
                schema_valid += await asyncio.to_thread(judge, corrs)
            assert len(ran.calls) <= schema_valid
            codes = collections.Counter(str(r["code"]) for r in backend.replies.values())
            answered = len(backend.replies)
            print(f"{count} payloads, {answered} answered, {len(ran.calls)} run: {codes}")
            backend.send("ping", b'{"id":"after-the-storm"}', b"last")
            assert not await asyncio.to_thread(backend.wait, {b"last"})
            assert backend.replies[b"last"]["code"] == "done"
            stopped = time.monotonic()
            assert await rig.stop() == 0
            assert time.monotonic() - stopped < 5.0
        finally:
            await asyncio.to_thread(backend.close)


# --- the schemas' own requests, and every invalid variant of them ---------------------------------


def from_schema(node: dict[str, Any], defs: dict[str, Any] | None = None) -> st.SearchStrategy[Any]:
    """Documents the published schema accepts (the subset of JSON Schema it uses).

    `reply_to` is left out: where a reply may go is more than its schema (a topic name,
    no wildcard, not the station's own tree), and it is tested on its own.
    """
    defs = node.get("$defs", defs)
    if "$ref" in node:
        return from_schema((defs or {})[node["$ref"].rsplit("/", 1)[-1]], defs)
    if "anyOf" in node:
        return st.one_of(*(from_schema(n, defs) for n in node["anyOf"]))
    if "enum" in node:
        return st.sampled_from(node["enum"])
    kind = node.get("type")
    if kind == "object":
        props = {k: v for k, v in node["properties"].items() if k != "reply_to"}
        required = set(node.get("required", ()))
        return st.fixed_dictionaries(
            {k: from_schema(v, defs) for k, v in props.items() if k in required},
            optional={k: from_schema(v, defs) for k, v in props.items() if k not in required},
        )
    if kind == "string":
        if node.get("format") == "date-time":
            # RFC 3339: an offset in whole minutes
            zones = st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
            return st.datetimes(timezones=zones).map(lambda d: d.isoformat())
        if "pattern" in node:
            text = st.from_regex(node["pattern"], fullmatch=True)
        else:
            text = st.text(min_size=node.get("minLength", 0), max_size=node.get("maxLength"))
        return text.filter(
            lambda t: node.get("minLength", 0) <= len(t) <= node.get("maxLength", 10**6)
        )
    if kind == "integer":
        return st.integers(node.get("minimum"), node.get("maximum"))
    if kind == "number":
        low, high = node.get("minimum"), node.get("maximum")
        above = node.get("exclusiveMinimum")
        numbers = st.floats(
            low if above is None else above, high, exclude_min=above is not None,
            allow_nan=False, allow_infinity=False,
        )  # fmt: skip
        return numbers | st.integers(
            None if low is None else math.ceil(low), None if high is None else math.floor(high)
        ).filter(lambda n: above is None or n > above)
    if kind == "array":
        return st.lists(
            from_schema(node["items"], defs),
            min_size=node.get("minItems", 0),
            max_size=min(node.get("maxItems", 5), 5),
        )
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    raise ValueError(f"schema construct not covered: {node}")


def _variants(name: str) -> st.SearchStrategy[tuple[bytes, bool]]:
    """(payload, meant to be valid): from the schema, or broken in one place."""
    good: st.SearchStrategy[dict[str, Any]] = from_schema(schema(name))
    bad = good.flatmap(
        lambda doc: st.sampled_from(sorted(doc) or ["id"]).flatmap(
            lambda key: st.sampled_from(
                ["drop", "str", "int", "bool", "float", "list", "null", "extra"]
            ).map(lambda how: _broken(doc, key, how))
        )
    )
    return st.one_of(
        good.map(lambda doc: (json.dumps(doc).encode(), True)),
        bad.map(lambda doc: (json.dumps(doc).encode(), False)),
    )


def _broken(doc: dict[str, Any], key: str, how: str) -> dict[str, Any]:
    out = dict(doc)
    value = {"str": "3", "int": 0, "bool": True, "float": 1.5, "list": [1], "null": None}
    if how == "drop":
        out.pop(key, None)
    elif how == "extra":
        out["unexpected"] = 1
    else:
        out[key] = value[how]
    return out


@pytest.mark.timeout(180)
async def test_every_schema_variant_is_judged_as_the_schema_says(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """A request the published schema refuses is `invalid` and not run; one it accepts is run."""
    async with running(tmp_path, broker, [rack()], robot=True, plc=True) as rig:
        ran = Ran(rig)
        backend = await asyncio.to_thread(Backend, broker)
        counter = iter(range(10**9))
        try:

            @settings(
                max_examples=400 if LONG else 60,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                database=None,
            )
            @given(
                st.sampled_from([c for c in COMMANDS if c != "republish"]).flatmap(
                    lambda n: _variants(n).map(lambda v: (n, *v))
                )
            )
            def check(case: tuple[str, bytes, bool]) -> None:
                name, payload, _meant = case
                corr = f"v{next(counter)}".encode()
                before = len(ran.calls)
                backend.send(name, payload, corr)
                assert not backend.wait({corr})
                reply = backend.replies[corr]
                if not valid(name, payload):
                    assert reply["code"] == "invalid", (name, payload, reply)
                    assert len(ran.calls) == before, f"an invalid {name} was run"
                else:
                    assert reply["code"] != "invalid", (name, payload, reply)

            await asyncio.to_thread(check)
        finally:
            await asyncio.to_thread(backend.close)


# --- the defects of issue 13, one by one ------------------------------------------------------


@pytest.mark.timeout(60)
async def test_a_deep_request_is_invalid_and_the_station_answers_on(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async with running(tmp_path, broker, [rack()], robot=True, plc=True) as rig:
        backend = await asyncio.to_thread(Backend, broker)
        try:
            deep = _deep(1000)
            assert len(deep) < 2100
            backend.send("set_mode", deep, b"deep")
            assert not await asyncio.to_thread(backend.wait, {b"deep"})
            assert backend.replies[b"deep"]["code"] == "invalid"
            assert "nested" in backend.replies[b"deep"]["message"]
            backend.send("ping", b'{"id":"p1"}', b"p1")
            assert not await asyncio.to_thread(backend.wait, {b"p1"})
            assert not rig.task.done()
        finally:
            await asyncio.to_thread(backend.close)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "reply_to",
    ["swapstation/t1/reply/#", "replies/+/x", "swapstation/t1/state", 42, "", "a\u0000b"],
)
async def test_a_bad_reply_to_is_not_run(
    tmp_path: Path, broker: Mosquitto, reply_to: object
) -> None:
    async with running(tmp_path, broker, [rack()], robot=True, plc=True) as rig:
        seq = rig.station.sequencer
        assert seq is not None
        backend = await asyncio.to_thread(Backend, broker)
        try:
            body = {"id": "m1", "mode": "out_of_service", "reply_to": reply_to}
            backend.send("set_mode", json.dumps(body).encode(), b"m1", response=None)
            backend.send("ping", b'{"id":"p2"}', b"p2")  # after it, in order
            assert not await asyncio.to_thread(backend.wait, {b"p2"})
            assert seq.mode == "auto", "a request with a bad reply topic was run"
            assert b"m1" not in backend.replies
        finally:
            await asyncio.to_thread(backend.close)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "payload",
    [
        b'{"id":"s1","slot":1,"enabled":"no"}',
        b'{"id":"s2","slot":1,"enabled":"off"}',
        b'{"id":"s3","slot":1,"enabled":0}',
        b'{"id":"s4","slot":"1","enabled":false}',
        b'{"id":"s5","slot":true,"enabled":false}',
        b'{"id":"s6","slot":1,"enabled":false,"expires_at":4102444800}',
        '{"id":"s7","slot":1,"enabled":false}'.encode("utf-16"),
    ],
)
async def test_set_slot_is_parsed_strictly(
    tmp_path: Path, broker: Mosquitto, payload: bytes
) -> None:
    async with running(tmp_path, broker, [rack()], robot=True, plc=True) as rig:
        backend = await asyncio.to_thread(Backend, broker)
        try:
            backend.send("set_slot", payload, b"s")
            assert not await asyncio.to_thread(backend.wait, {b"s"})
            assert backend.replies[b"s"]["code"] == "invalid", backend.replies[b"s"]
            assert 1 not in rig.station.control.disabled_slots
        finally:
            await asyncio.to_thread(backend.close)
