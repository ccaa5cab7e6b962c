"""The MQTT API as docs/mqtt-api.md describes it, over a real broker with the mosquitto clients.

Every `sh` block of the document is run, in order, against a simulated station, and its output
is checked against the block shown after it. The command envelope (replies, expiry, duplicate
ids, MQTT 3.1.1 `reply_to`) is then checked case by case with mosquitto_pub, mosquitto_sub and
mosquitto_rr as separate processes; the daemon runs in this event loop, so every client is an
asyncio subprocess.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from controller.mqtt.commands import CommandReply
from controller.mqtt.infopub import StationInfo
from controller.mqtt.robotpub import RobotStateMessage
from controller.mqtt.slotpub import SlotState
from controller.mqtt.statepub import StationState
from controller.swap.requests import Outcome, SwapRequest
from controller.swap.sequencer import Sequencer
from simstation.broker import Mosquitto
from tests.rig import Rig, rack, running, until
from tests.support import REPO

DOC = REPO / "docs" / "mqtt-api.md"
DOC_BROKER = "-h localhost -p 1883"
DOC_STATION = "pss-0042"
SECTIONS = "[swap]\nmin_dispense_soc = 80\n"
FENCE = re.compile(r"^```(?P<lang>[a-z]*)\n(?P<body>.*?)^```$", re.DOTALL | re.MULTILINE)
CLIENT_TIMEOUT_S = 20.0
TOPIC_MODELS: dict[str, type[BaseModel]] = {
    "info": StationInfo,
    "state": StationState,
    "robot": RobotStateMessage,
}


# --- running the mosquitto clients -------------------------------------------------------------


async def run(argv: list[str], timeout: float = CLIENT_TIMEOUT_S) -> tuple[int, str, str]:  # noqa: ASYNC109 - a bound on a child process
    """Run a child process without blocking the loop; (returncode, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def client(name: str, broker: Mosquitto, *args: str, version: str = "mqttv5") -> list[str]:
    exe = shutil.which(name)
    assert exe, f"{name} is missing (Debian package mosquitto-clients)"
    return [exe, "-V", version, "-h", broker.host, "-p", str(broker.port), *args]


def split_json(line: str) -> tuple[str, dict[str, Any] | None]:
    """`prefix {json}` -> (prefix, object); a line without an object -> (line, None)."""
    at = line.find("{")
    if at < 0:
        return line.strip(), None
    try:
        body = json.loads(line[at:])
    except ValueError:
        return line[:at].strip(), None
    assert isinstance(body, dict)
    return line[:at].strip(), body


def reply_of(text: str) -> dict[str, Any]:
    """The reply printed last by a client, checked against the reply model."""
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines, "no reply printed"
    _, body = split_json(lines[-1])
    assert body is not None, f"not a JSON reply: {lines[-1]!r}"
    CommandReply.model_validate(body)
    return body


async def rr(
    broker: Mosquitto, name: str, payload: str, *extra: str, station: str = "t1"
) -> dict[str, Any]:
    """One MQTT v5 request/response with mosquitto_rr; the parsed reply."""
    topic = f"swapstation/{station}/cmd/{name}"
    argv = client("mosquitto_rr", broker, "-q", "1", "-t", topic, "-e", "replies/rr", "-W", "10")
    rc, out, err = await run([*argv, *extra, "-m", payload])
    assert rc == 0, f"mosquitto_rr {name}: rc {rc}, {err.strip()}"
    return reply_of(out)


@dataclass
class ReplyBox:
    """A reply topic with a persistent session: subscribed before the request, read after it."""

    broker: Mosquitto
    name: str
    version: str = "mqttv5"

    @property
    def topic(self) -> str:
        return f"replies/{self.name}"

    def _sub(self, *args: str) -> list[str]:
        session = ["-c", "-x", "300"] if self.version == "mqttv5" else ["-c"]
        return client(
            "mosquitto_sub",
            self.broker,
            *session,
            "-i",
            self.name,
            "-q",
            "1",
            "-t",
            self.topic,
            *args,
            version=self.version,
        )

    async def open(self) -> ReplyBox:
        rc, _, err = await run(self._sub("-E"))
        assert rc == 0, err
        return self

    async def read(self, n: int = 1) -> list[tuple[str, dict[str, Any]]]:
        """The next `n` replies, each with the Correlation Data it carried (v5)."""
        fmt = "%D %p" if self.version == "mqttv5" else "%p"
        rc, out, err = await run(self._sub("-C", str(n), "-W", "10", "-F", fmt))
        assert rc == 0, f"{n} replies expected on {self.topic}: rc {rc}, {err.strip()}, {out}"
        replies = []
        for line in out.splitlines():
            corr, body = split_json(line)
            assert body is not None, line
            CommandReply.model_validate(body)
            replies.append((corr, body))
        assert len(replies) == n, out
        return replies


async def pub(
    box: ReplyBox, name: str, payload: str, *extra: str, correlation: str | None = None
) -> None:
    """A request with mosquitto_pub whose answer goes to `box`."""
    argv = client(
        "mosquitto_pub",
        box.broker,
        "-q",
        "1",
        "-t",
        f"swapstation/t1/cmd/{name}",
        version=box.version,
    )
    if box.version == "mqttv5":
        argv += ["-D", "publish", "response-topic", box.topic]
        if correlation is not None:
            argv += ["-D", "publish", "correlation-data", correlation]
    rc, _, err = await run([*argv, *extra, "-m", payload])
    assert rc == 0, f"mosquitto_pub {name}: rc {rc}, {err.strip()}"


async def journal_events(rig: Rig, kind: str) -> list[dict[str, Any]]:
    """The bodies of the journalled events of a kind, in order."""

    def read(conn: sqlite3.Connection) -> list[dict[str, Any]]:
        rows = conn.execute("SELECT body FROM events WHERE kind = ? ORDER BY seq", (kind,))
        return [json.loads(body) for (body,) in rows]

    return await rig.station.journal.call(read)


def mode(seq: Sequencer) -> str:
    """The station's mode now (a call: mypy must not keep a narrowing across awaits)."""
    return seq.mode


async def ready(rig: Rig) -> Sequencer:
    seq = rig.station.sequencer
    assert seq is not None and rig.station.commands is not None
    await until(lambda: not seq.blocking and bool(seq.packs_ready()), what="station ready")
    await until(rig.daemon.link.connected.is_set, what="broker connection")
    # Every slot's retained state reached the broker (the publisher sends them all within a
    # tick of connecting), so that a subscriber starting now sees the whole tree.
    slots = len(rig.station.control.book.slots)
    await until(lambda: rig.station.slot_publisher.published >= slots, what="the slots published")
    return seq


# --- the document's examples ---------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    script: str
    lang: str  # of the block that shows the output
    output: str


def examples(text: str) -> list[Example]:
    """Each `sh` block of the document with the block that follows it (what it prints)."""
    blocks = [(m["lang"], m["body"]) for m in FENCE.finditer(text)]
    found = []
    for i, (lang, body) in enumerate(blocks):
        if lang != "sh":
            continue
        assert i + 1 < len(blocks), f"no output shown after:\n{body}"
        out_lang, out = blocks[i + 1]
        assert out_lang in {"json", "text"}, (
            f"the block after an sh block shows its output:\n{body}"
        )
        found.append(Example(body, out_lang, out))
    return found


EXAMPLES = examples(DOC.read_text())


def test_every_example_talks_to_the_documented_broker() -> None:
    assert len(EXAMPLES) >= 10
    for ex in EXAMPLES:
        commands = ex.script.replace("\\\n", " ").splitlines()
        for command in commands:
            assert command.startswith("mosquitto_"), command
            assert DOC_BROKER in command, f"{command}: use {DOC_BROKER} (the test rewrites it)"
            assert f"swapstation/{DOC_STATION}/" in command or "-t replies/" in command


def check_output(ex: Example, out: str) -> None:
    """What an example printed has the shape and the codes its document shows."""
    if ex.lang == "json":
        want = json.loads(ex.output)
        got = reply_of(out)
        assert {k: got[k] for k in ("id", "ok", "code")} == {
            k: want[k] for k in ("id", "ok", "code")
        }, got
        assert got.keys() == want.keys()
        if isinstance(want["result"], dict):
            assert isinstance(got["result"], dict) and got["result"].keys() == want["result"].keys()
        else:
            assert got["result"] == want["result"]
        return
    got_lines = [split_json(line) for line in out.splitlines() if line.strip()]
    for line in ex.output.splitlines():
        prefix, want_body = split_json(line)
        if want_body is None and prefix.endswith("..."):
            stem = prefix.removesuffix("...").strip()
            assert any(p.startswith(stem) for p, _ in got_lines), f"no {stem!r} in:\n{out}"
            continue
        matches = [body for p, body in got_lines if p == prefix]
        assert matches, f"no line {prefix!r} in:\n{out}"
        if want_body is not None:
            seen = matches[-1]
            assert seen is not None and seen.keys() == want_body.keys(), (line, seen)
            if "code" in want_body:
                assert seen["code"] == want_body["code"], seen
    for prefix, body in got_lines:  # every published payload is its model
        name = prefix.removeprefix(f"swapstation/{DOC_STATION}/")
        if name in TOPIC_MODELS:
            TOPIC_MODELS[name].model_validate(body)
        elif name.startswith("slots/"):
            SlotState.model_validate(body)


@pytest.mark.timeout(90)
async def test_the_documented_examples_work_as_written(tmp_path: Path, broker: Mosquitto) -> None:
    async with running(
        tmp_path,
        broker,
        [rack()],
        sections=SECTIONS,
        station_id=DOC_STATION,
        robot=True,
        plc=True,
    ) as rig:
        await ready(rig)
        here = f"-h {broker.host} -p {broker.port}"
        for ex in EXAMPLES:
            rc, out, err = await run(["bash", "-e", "-c", ex.script.replace(DOC_BROKER, here)])
            assert rc == 0, f"rc {rc}: {err}\n{ex.script}"
            check_output(ex, out)


# --- the envelope, case by case ----------------------------------------------------------------


@pytest.mark.timeout(90)
async def test_replies_to_requests_good_and_bad(tmp_path: Path, broker: Mosquitto) -> None:
    async with running(tmp_path, broker, [rack()], sections=SECTIONS, robot=True, plc=True) as rig:
        seq = await ready(rig)
        box = await ReplyBox(broker, "be-1").open()

        # start_swap over v5 request/response: accepted, with the swap and its slots.
        body = {"id": "s-1", "vehicle_id": "EV-1", "pack_type": "STD75", "by": "test"}
        await pub(box, "start_swap", json.dumps(body), correlation="corr-1")
        ((corr, reply),) = await box.read()
        assert corr == "corr-1"
        assert reply["code"] == "accepted" and reply["ok"] is True, reply
        assert reply["result"] == {
            "swap_id": seq.ctx.swap_id,
            "reserved_slot": 1,
            "reserved_serial": "PK-A",
            "free_slot": seq.ctx.free_slot,
        }
        assert seq.ctx.active
        # A second swap meanwhile: busy, saying whose.
        reply = await rr(
            broker, "start_swap", '{"id": "s-2", "vehicle_id": "EV-2", "pack_type": "STD75"}'
        )
        assert reply["code"] == "busy" and seq.ctx.swap_id in reply["message"], reply
        reply = await rr(broker, "abort", '{"id": "a-1", "reason": "test"}')
        assert reply["code"] == "accepted" and reply["message"].startswith("cancelled"), reply
        await until(lambda: not seq.ctx.active, what="the swap cancelled")

        # Not JSON: invalid, and no id to give back (the reply still goes to the Response Topic).
        reply = await rr(broker, "ping", '{"id": "p-1",')
        assert reply["code"] == "invalid" and reply["id"] is None
        assert reply["message"].startswith("not JSON"), reply
        reply = await rr(broker, "ping", '["p-1"]')
        assert reply["code"] == "invalid" and "JSON object" in reply["message"], reply
        # Unknown command, missing or bad fields, unknown fields: named.
        reply = await rr(broker, "launch", '{"id": "u-1"}')
        assert reply["code"] == "unknown_command" and reply["id"] == "u-1"
        assert "'launch'" in reply["message"] and "start_swap" in reply["message"], reply
        reply = await rr(broker, "start_swap", '{"id": "s-3", "vehicle_id": "EV-3"}')
        assert reply["code"] == "invalid" and reply["id"] == "s-3"
        assert reply["message"] == "pack_type: Field required", reply
        reply = await rr(broker, "set_slot", '{"id": "sl-0", "slot": "four", "enabled": true}')
        assert reply["code"] == "invalid" and reply["message"].startswith("slot: "), reply
        reply = await rr(broker, "ping", '{"id": "p-2", "colour": "red"}')
        assert reply["code"] == "invalid" and reply["message"].startswith("colour: "), reply
        reply = await rr(broker, "ping", '{"id": "no spaces allowed"}')
        assert reply["code"] == "invalid" and reply["id"] is None, reply
        assert reply["message"].startswith("id: "), reply
        # Oversized: invalid, before anything else is looked at.
        big = json.dumps({"id": "big-1", "reason": "x" * 5000})
        reply = await rr(broker, "abort", big)
        assert reply["code"] == "invalid" and reply["id"] == "big-1"
        assert reply["message"] == f"payload of {len(big)} B is over 4096 B", reply
        # Not allowed in this state: rejected, with the reason.
        reply = await rr(broker, "reset_fault", '{"id": "rf-1"}')
        assert reply == {
            "id": "rf-1",
            "ok": False,
            "code": "rejected",
            "message": "nothing to reset: the swap is idle and the robot is not faulted or stopped",
            "result": None,
        }
        reply = await rr(broker, "recover", '{"id": "rc-1", "decision": "resume"}')
        assert reply["code"] == "rejected" and "no recovery pending" in reply["message"], reply
        reply = await rr(broker, "set_slot", '{"id": "sl-9", "slot": 9, "enabled": false}')
        assert reply["code"] == "rejected" and reply["message"] == "no slot 9", reply
        # None of these ran anything.
        assert await journal_events(rig, "mode_changed") == []
        assert await journal_events(rig, "slot_disabled") == []
        assert rig.station.commands is not None
        codes = rig.station.commands.codes
        assert codes["error"] == 0 and codes["accepted"] == 2


@pytest.mark.timeout(90)
async def test_a_repeated_id_runs_once(tmp_path: Path, broker: Mosquitto) -> None:
    async with running(tmp_path, broker, [rack()], sections=SECTIONS, robot=True, plc=True) as rig:
        seq = await ready(rig)
        box = await ReplyBox(broker, "be-2").open()
        body = '{"id": "d-1", "mode": "maintenance"}'
        await pub(box, "set_mode", body, correlation="first")
        await pub(box, "set_mode", body, correlation="again")
        # The same id with other arguments is the same request: not run either.
        await pub(box, "set_mode", '{"id": "d-1", "mode": "auto"}', correlation="other")
        replies = await box.read(3)
        assert [c for c, _ in replies] == ["first", "again", "other"]
        assert [r["code"] for _, r in replies] == ["done", "duplicate", "duplicate"]
        assert replies[1][1]["message"] == "already handled (set_mode: done): mode maintenance"
        assert mode(seq) == "maintenance"
        assert await journal_events(rig, "mode_changed") == [{"from": "auto", "to": "maintenance"}]

        body = '{"id": "d-2", "slot": 4, "enabled": false, "by": "test"}'
        assert (await rr(broker, "set_slot", body))["code"] == "done"
        assert (await rr(broker, "set_slot", body))["code"] == "duplicate"
        assert await journal_events(rig, "slot_disabled") == [{"slot": 4}]
        # An id is an id whatever the command: a ping with it is not run either.
        reply = await rr(broker, "ping", '{"id": "d-2"}')
        assert reply["code"] == "duplicate" and "set_slot" in reply["message"], reply
        # Read-only commands are remembered too.
        first = await rr(broker, "ping", '{"id": "d-3"}')
        again = await rr(broker, "ping", '{"id": "d-3"}')
        assert (first["code"], again["code"]) == ("done", "duplicate")
        assert again["result"] == first["result"]


@pytest.mark.timeout(90)
async def test_stale_requests_never_run(
    tmp_path: Path, broker: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(tmp_path, broker, [rack()], sections=SECTIONS, robot=True, plc=True) as rig:
        seq = await ready(rig)
        server = rig.station.commands
        assert server is not None
        # expires_at in the past: expired, not run.
        reply = await rr(
            broker,
            "set_mode",
            '{"id": "e-1", "mode": "maintenance", "expires_at": "2020-01-01T00:00:00Z"}',
        )
        assert reply["code"] == "expired" and reply["message"].startswith("expired at 2020-01-01")
        # A v5 Message Expiry Interval that lapses while the request waits at the station.
        # The station is made slow: the request before it is held until the interval is over.
        gate, holding = asyncio.Event(), asyncio.Event()
        submit = seq.submit

        async def held(request: SwapRequest) -> Outcome:
            if request.by == "slow":
                holding.set()
                await gate.wait()
            return await submit(request)

        monkeypatch.setattr(seq, "submit", held)
        box = await ReplyBox(broker, "be-3").open()
        await pub(box, "set_slot", '{"id": "e-2", "slot": 3, "enabled": true, "by": "slow"}')
        await until(holding.is_set, what="e-2 being handled")
        await pub(
            box,
            "set_mode",
            '{"id": "e-3", "mode": "maintenance"}',
            "-D",
            "publish",
            "message-expiry-interval",
            "1",
        )
        await until(lambda: server._queue.qsize() == 1, what="e-3 queued at the station")
        waiting = server._queue._queue[0]  # type: ignore[attr-defined]
        await until(lambda: time.monotonic() > waiting.received + 1.0, what="e-3's expiry")
        gate.set()
        (_, slow), (_, stale) = await box.read(2)
        assert (slow["id"], slow["code"]) == ("e-2", "done"), slow
        assert (stale["id"], stale["code"]) == ("e-3", "expired"), stale
        assert stale["message"].startswith("message expiry interval of 1 s passed"), stale
        # Neither expired request ran.
        assert mode(seq) == "auto"
        assert await journal_events(rig, "mode_changed") == []
        # A request within its interval runs.
        reply = await rr(
            broker,
            "set_mode",
            '{"id": "e-4", "mode": "maintenance"}',
            "-D",
            "publish",
            "message-expiry-interval",
            "30",
        )
        assert reply["code"] == "done" and mode(seq) == "maintenance", reply
        # An expired id is used up: the same request again is a duplicate of the expiry.
        reply = await rr(broker, "set_mode", '{"id": "e-1", "mode": "maintenance"}')
        assert reply["code"] == "duplicate" and "expired" in reply["message"], reply


@pytest.mark.timeout(90)
async def test_require_expiry_refuses_undated_requests(tmp_path: Path, broker: Mosquitto) -> None:
    sections = SECTIONS + "[commands]\nrequire_expiry = true\n"
    async with running(tmp_path, broker, [rack()], sections=sections, robot=True, plc=True) as rig:
        seq = await ready(rig)
        reply = await rr(broker, "set_mode", '{"id": "q-1", "mode": "maintenance"}')
        assert reply["code"] == "expired" and "only commands that expire" in reply["message"]
        assert mode(seq) == "auto"
        expiry = ("-D", "publish", "message-expiry-interval", "30")
        reply = await rr(broker, "set_mode", '{"id": "q-2", "mode": "maintenance"}', *expiry)
        assert reply["code"] == "done" and mode(seq) == "maintenance", reply
        later = '{"id": "q-3", "mode": "auto", "expires_at": "2099-01-01T00:00:00+01:00"}'
        reply = await rr(broker, "set_mode", later)
        assert reply["code"] == "done" and mode(seq) == "auto", reply


@pytest.mark.timeout(90)
async def test_an_mqtt311_client_gets_its_reply_on_reply_to(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async with running(tmp_path, broker, [rack()], sections=SECTIONS, robot=True, plc=True) as rig:
        seq = await ready(rig)
        box = await ReplyBox(broker, "old-1", version="mqttv311").open()
        body = {"id": "o-1", "mode": "out_of_service", "reply_to": box.topic}
        await pub(box, "set_mode", json.dumps(body))
        ((_, reply),) = await box.read()
        assert reply == {
            "id": "o-1",
            "ok": True,
            "code": "done",
            "message": "mode out_of_service",
            "result": None,
        }
        assert mode(seq) == "out_of_service"
        # A swap is refused in that mode, with the reason; the reply still finds its way.
        body = {"id": "o-2", "vehicle_id": "EV-1", "pack_type": "STD75", "reply_to": box.topic}
        await pub(box, "start_swap", json.dumps(body))
        ((_, reply),) = await box.read()
        assert reply["code"] == "rejected" and "out of service mode" in reply["message"], reply
        # A reply topic with a wildcard is not one: nothing is sent (the request is logged).
        body = {"id": "o-3", "reply_to": "replies/#"}
        await pub(box, "ping", json.dumps(body))
        await until(lambda: rig.station.commands is not None and rig.station.commands.handled >= 3)
        # Nor is one of the station's own topics: the request is not run.
        body = {"id": "o-4", "mode": "auto", "reply_to": "swapstation/t1/state"}
        await pub(box, "set_mode", json.dumps(body))
        await until(lambda: rig.station.commands is not None and rig.station.commands.handled >= 4)
        assert mode(seq) == "out_of_service"
