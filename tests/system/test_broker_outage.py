"""The broker killed (SIGKILL) in the middle of a swap and started again.

The swap does not depend on the broker: it goes on and completes. Events are journalled first
and published from the journal, so a back end with a persistent session (QoS 1, clean start
off) gets every event, in order; delivery is at least once (docs/mqtt-api.md), so a repeat of
an event the broker had taken just before it died is allowed, a gap or a reordering is not.
The retained `state` is republished after the reconnect and is the daemon's current state.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from controller.mqtt.statepub import station_state
from simstation.broker import Mosquitto
from tests.rig import SECTIONS, Rig, arrive, rack, running, until
from tests.support import Subscriber

# Sessions and queued messages go to disk after every change, so that a SIGKILL does not take
# the back end's session with it (mosquitto otherwise saves only every 30 min and on exit).
AUTOSAVE = "autosave_interval 1\nautosave_on_changes true\n"
EVENTS = "swapstation/t1/events"
STATE = "swapstation/t1/state"


async def journal_events(rig: Rig, first: int) -> list[dict[str, Any]]:
    """The journal's events from `first` on, as the outbox publishes them (seq, kind, data)."""

    def read(conn: sqlite3.Connection) -> list[tuple[int, str, str]]:
        rows = conn.execute(
            "SELECT seq, kind, body FROM events WHERE seq >= ? ORDER BY seq", (first,)
        )
        return [(int(seq), str(kind), str(body)) for seq, kind, body in rows]

    rows = await rig.station.journal.call(read)
    return [{"seq": seq, "kind": kind, "data": json.loads(body)} for seq, kind, body in rows]


async def last_seq(rig: Rig) -> int:
    row = await rig.station.journal.call(
        lambda c: c.execute("SELECT max(seq) FROM events").fetchone()
    )
    return int(row[0] or 0)


async def retained_state(broker: Mosquitto) -> dict[str, Any] | None:
    """The retained `state` as a new subscriber gets it."""
    exe = shutil.which("mosquitto_sub")
    assert exe
    proc = await asyncio.create_subprocess_exec(
        *[exe, "-h", broker.host, "-p", str(broker.port), "-t", STATE],
        *["--retained-only", "-C", "1", "-W", "5"],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0 or not out.strip():
        return None
    body: dict[str, Any] = json.loads(out)
    return body


def received(sub: Subscriber) -> list[dict[str, Any]]:
    """The events the back end received, in arrival order."""
    events = []
    for line in sub.lines:
        topic, _, payload = line.partition(" ")
        if topic == EVENTS:
            events.append(json.loads(payload))
    return events


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_broker_killed_mid_swap(tmp_path: Path) -> None:
    with Mosquitto(tmp_path / "pbroker", persistent=True, extra_config=AUTOSAVE) as broker:
        async with running(
            tmp_path, broker, [rack()], sections=SECTIONS, robot=True, plc=True
        ) as rig:
            seq = rig.station.sequencer
            assert seq is not None
            await until(rig.daemon.link.connected.is_set, what="connected")
            with Subscriber(
                broker, EVENTS, "-t", "swapstation/t1/status", "-c", "-i", "be-1"
            ) as sub:
                # The retained status proves the back end's session is subscribed.
                await asyncio.to_thread(sub.wait_line, "swapstation/t1/status online")
                await until(lambda: not seq.blocking and bool(seq.packs_ready()), what="ready")
                phases: list[str] = []
                seq.swap.on_phase.append(lambda _before, after: phases.append(after))
                arrive(rig.sim)
                await until(lambda: seq.facts().get("vehicle_present") is True, what="vehicle")
                started = await seq.request("start_swap", vehicle_id="EV-1", pack_type="STD75")
                assert started.result is not None
                swap_id = str(started.result["swap_id"])

                # Mid-swap, while the robot stores the vehicle's pack: the broker dies.
                await until(lambda: "storing" in phases, timeout=20, what="storing")
                await asyncio.to_thread(broker.kill)
                killed_at = len(phases)
                await until(lambda: not rig.daemon.link.connected.is_set(), what="link down")
                # The swap goes on meanwhile; its events wait in the journal.
                await until(lambda: len(phases) > killed_at, timeout=20, what="a phase later")
                assert (await rig.station.events.unpublished()) != []
                await asyncio.to_thread(broker.restart)

                await until(lambda: not seq.ctx.active, timeout=40, what="the swap's end")
                await until(rig.daemon.link.connected.is_set, what="reconnected")
                last = await last_seq(rig)
                await asyncio.to_thread(sub.wait_for, lambda line: f'"seq":{last},' in line, 20)
                got = received(sub)

            # Every event from the first the back end got: in order, none lost; repeats are
            # exact copies of an event already delivered, and only dropped.
            assert got, "no event received"
            journal = await journal_events(rig, got[0]["seq"])
            by_seq = {e["seq"]: e for e in journal}
            unique: list[dict[str, Any]] = []
            repeats = 0
            for event in got:
                assert event["station"] == "t1"
                assert {k: event[k] for k in ("seq", "kind", "data")} == by_seq[event["seq"]]
                if unique and event["seq"] <= unique[-1]["seq"]:
                    repeats += 1
                    continue
                unique.append(event)
            assert [e["seq"] for e in unique] == [e["seq"] for e in journal], "a gap or a swap"
            kinds = [(e["kind"], e["data"].get("swap_id")) for e in unique]
            assert ("swap_started", swap_id) in kinds
            assert ("swap_completed", swap_id) in kinds
            print(f"{len(unique)} events, {repeats} repeats after the broker's restart")

            # The retained state after the restart is the daemon's current one.
            def current() -> dict[str, Any]:
                state = station_state(seq, rig.station.control, "t1")
                return state.model_dump(mode="json", exclude={"updated_at"})

            published = rig.station.state_publisher
            assert published is not None and published.published > 0
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while True:  # the state moves on (packs charge): until the two agree
                state = await retained_state(broker)
                if state is not None and {**state, "updated_at": None} == {
                    **current(),
                    "updated_at": None,
                }:
                    break
                assert loop.time() < deadline, f"retained state {state} is not {current()}"
            assert state["phase"] == "idle" and state["swap"] is None
