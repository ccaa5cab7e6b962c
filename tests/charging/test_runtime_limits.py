"""Run-time power limits over MQTT, from a back end written from docs/mqtt-api.md alone.

The back end is paho-mqtt (the daemon's own client is aiomqtt). The total power of the
simulated rack is sampled after every one of its physics ticks (docs/power-management.md,
run-time limits).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from simstation.broker import Mosquitto
from simstation.charger import SimPack
from simstation.station import SimRackSpec
from tests.rig import Rig, running, until

REPLIES = "backend/replies"
POLL_S = 0.1


class GridOperator:
    """A back end on paho: commands with a Response Topic; the station's retained state."""

    def __init__(self, broker: Mosquitto, station: str) -> None:
        self.root = f"swapstation/{station}"
        self.replies: dict[bytes, dict[str, Any]] = {}
        self.state: dict[str, Any] = {}
        self.lock = threading.Lock()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="grid-operator", protocol=mqtt.MQTTv5
        )
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe([(REPLIES, 1), (f"{self.root}/state", 1)])
        assert subscribed.wait(5), "no SUBACK"

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        body = json.loads(message.payload)
        with self.lock:
            if message.topic == REPLIES:
                corr = bytes(getattr(message.properties, "CorrelationData", b"") or b"")
                self.replies[corr] = body
            else:
                self.state = body

    def send(self, name: str, body: dict[str, Any]) -> bytes:
        corr = str(body["id"]).encode()
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = REPLIES
        props.CorrelationData = corr
        self.client.publish(f"{self.root}/cmd/{name}", json.dumps(body), qos=1, properties=props)
        return corr

    def reply(self, corr: bytes) -> dict[str, Any] | None:
        with self.lock:
            return self.replies.get(corr)

    def power(self) -> dict[str, Any]:
        with self.lock:
            return dict(self.state.get("power") or {})

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


SPEED = 20.0


def four_packs() -> SimRackSpec:
    """Four packs at 40 %: each charger takes its 150 A (about 55-60 kW)."""
    packs = {n: SimPack(f"PK-{n}", soc=40.0) for n in (1, 2, 3, 4)}
    return SimRackSpec("r1", [1, 2, 3, 4, 5], packs=packs, poll_period_s=POLL_S)


def sampled(rig: Rig) -> list[tuple[float, float]]:
    """(monotonic time, total kW) after every physics tick of the rack, from now on."""
    rack = rig.sim.racks["r1"]
    samples: list[tuple[float, float]] = []

    def on_tick(_now: float) -> None:
        watts = sum(c.power_w for c in rack.chargers.values() if c.pack is not None)
        samples.append((time.monotonic(), watts / 1000.0))

    rack.on_tick.append(on_tick)
    return samples


def last_kw(samples: list[tuple[float, float]]) -> float:
    return samples[-1][1] if samples else 0.0


async def answered(op: GridOperator, corr: bytes) -> dict[str, Any]:
    await until(lambda: op.reply(corr) is not None, what=f"the reply to {corr!r}")
    reply = op.reply(corr)
    assert reply is not None
    return reply


SECTIONS = (
    "[swap]\nmin_dispense_soc = 90\n"
    f"[supervision]\nfast_rise_c_per_min = {2.0 * SPEED}\n"
    f"[charging]\nmin_on_s = {30 / SPEED}\nmin_off_s = {30 / SPEED}\n"
    "[power]\ngrid_limit_kw = 250\n"
)


def station(
    tmp_path: Path, broker: Mosquitto, sections: str = SECTIONS
) -> contextlib.AbstractAsyncContextManager[Rig]:
    """The daemon and a simulated station (a rack of four packs, a robot, a PLC)."""
    return running(
        tmp_path, broker, [four_packs()], speed=SPEED, sections=sections, robot=True, plc=True
    )


@pytest.mark.timeout(90)
async def test_a_limit_lowered_mid_charge_holds_after_one_control_step(
    tmp_path: Path, broker: Mosquitto
) -> None:
    op = await asyncio.to_thread(GridOperator, broker, "t1")
    try:
        async with station(tmp_path, broker) as rig:
            samples = sampled(rig)
            await until(lambda: last_kw(samples) > 180, what="charging near the 250 kW limit")
            await until(lambda: op.power().get("binding") == "grid connection", what="state")
            corr = op.send(
                "set_power_limit",
                {"id": "cut-1", "source": "grid_operator", "kw": 100, "duration_s": 4,
                 "by": "test"},
            )  # fmt: skip
            sent = time.monotonic()
            reply = await answered(op, corr)
            assert reply["code"] == "done", reply
            assert reply["result"]["binding"] == "grid_operator"
            assert reply["result"]["limit_kw"] == 100
            # Lowered within one control step (a poll, the writes read back): from then on,
            # every sample is under the limit.
            await until(lambda: last_kw(samples) <= 100, timeout=5, what="power under 100 kW")
            lowered = time.monotonic() - sent
            await until(lambda: op.power().get("binding") == "grid_operator", what="state")
            # It ends after its 4 s: the grid connection binds again, and charging goes up.
            await until(
                lambda: op.power().get("binding") == "grid connection",
                timeout=15,
                what="the limit to end",
            )
            await until(lambda: last_kw(samples) > 150, what="charging up again")
            # In force from when the station took it (after `sent`) for 4 s: until sent + 4.
            held = [(t - sent, kw) for t, kw in samples if sent + lowered <= t < sent + 4.0]
            over = [(t, kw) for t, kw in held if kw > 100]
            assert held, "no sample while the limit held"
            assert not over, over
            print(json.dumps({"lowered_s": round(lowered, 3), "held_samples": len(held)}))
            assert lowered <= 3 * POLL_S + 0.3, lowered
    finally:
        await asyncio.to_thread(op.close)
    assert journalled(tmp_path) == ["power_limit_set", "power_limit_ended"]


def journalled(tmp_path: Path) -> list[str]:
    """The power-limit events in the journal (a real SQLite file), in order."""
    with contextlib.closing(sqlite3.connect(tmp_path / "state" / "journal.sqlite3")) as conn:
        rows = conn.execute(
            "SELECT kind FROM events WHERE kind LIKE 'power_limit%' ORDER BY seq"
        ).fetchall()
    return [str(r[0]) for r in rows]


@pytest.mark.timeout(90)
async def test_a_limit_survives_a_restart_until_it_ends_and_can_be_lifted(
    tmp_path: Path, broker: Mosquitto
) -> None:
    op = await asyncio.to_thread(GridOperator, broker, "t1")
    try:
        async with station(tmp_path, broker):
            reply = await answered(
                op,
                op.send(
                    "set_power_limit",
                    {"id": "cut-2", "source": "grid_operator", "kw": 70, "duration_s": 600},
                ),
            )
            assert reply["code"] == "done", reply
        # The daemon restarts (an orderly stop, a new start on the same journal): the limit
        # holds from its first control step, before anything is switched on.
        async with station(tmp_path, broker) as rig:
            samples = sampled(rig)
            limits = rig.station.control.limits
            assert "grid_operator" in limits.runtime
            await until(lambda: op.power().get("binding") == "grid_operator", what="state")
            assert op.power()["limit_kw"] == 70
            await until(lambda: len(samples) > 40, what="two seconds of ticks")
            await until(lambda: last_kw(samples) > 30, what="charging, within the limit")
            assert max(kw for _, kw in samples) <= 70, samples
            # Lifting a limit nobody set is refused, naming those that hold one.
            refused = await answered(
                op, op.send("clear_power_limit", {"id": "lift-0", "source": "operator"})
            )
            assert refused["code"] == "rejected"
            assert "grid_operator" in refused["message"]
            lifted = await answered(
                op, op.send("clear_power_limit", {"id": "lift-1", "source": "grid_operator"})
            )
            assert lifted["code"] == "done", lifted
            await until(lambda: last_kw(samples) > 150, what="charging up after the lift")
            # The state follows (published after the step that raised the limits).
            await until(lambda: op.power().get("binding") == "grid connection", what="state")
    finally:
        await asyncio.to_thread(op.close)
    assert journalled(tmp_path) == ["power_limit_set", "power_limit_cleared"]


DEMAND = (
    "[power.demand]\narrivals_per_hour = [" + ", ".join(["40"] * 24) + "]\n"
    "max_wait_min = 15\n"
    '[power.tariff]\ncurrency = "CNY"\n'
    'periods = [{ start = "00:00", end = "00:00", price = 0.65 }]\n'
)


@pytest.mark.timeout(90)
async def test_a_curtailment_outside_the_offer_is_answered_with_its_cost(
    tmp_path: Path, broker: Mosquitto
) -> None:
    op = await asyncio.to_thread(GridOperator, broker, "t1")
    try:
        async with station(tmp_path, broker, SECTIONS + DEMAND):
            await until(lambda: op.state.get("flex") is not None, what="the offer")
            offer = op.state["flex"]
            assert set(offer["offer_kw"]) == {"15", "30", "60"}
            # Nothing ready, 40 cars an hour: an hour at 0 kW costs cars; asked only if it is
            # within the offer, it is refused with that cost, and nothing is limited.
            refused = await answered(
                op,
                op.send(
                    "set_power_limit",
                    {"id": "ask-1", "source": "flex_market", "kw": 0, "duration_s": 3600,
                     "if_within_offer": True},
                ),
            )  # fmt: skip
            assert refused["code"] == "rejected", refused
            assert "outside the flexibility offer" in refused["message"]
            # An offer is for a while; an end years ahead is refused, not an error.
            endless = await answered(
                op,
                op.send(
                    "set_power_limit",
                    {"id": "ask-0", "source": "flex_market", "kw": 0, "if_within_offer": True},
                ),
            )
            assert endless["code"] == "rejected" and "duration_s or until" in endless["message"]
            far = await answered(
                op,
                op.send(
                    "set_power_limit",
                    {"id": "far-1", "source": "operator", "kw": 10,
                     "until": "9999-12-31T23:59:59-23:59"},
                ),
            )  # fmt: skip
            assert far["code"] == "rejected" and "at most 7 days ahead" in far["message"], far
            assert "car(s) turned away" in refused["message"]
            assert op.power()["binding"] == "grid connection"
            # The same as an order (no if_within_offer) applies, and says what it costs.
            ordered = await answered(
                op,
                op.send(
                    "set_power_limit",
                    {"id": "order-1", "source": "grid_operator", "kw": 0, "duration_s": 3600},
                ),
            )
            assert ordered["code"] == "done", ordered
            assert ordered["result"]["within_offer"] is False
            assert ordered["result"]["predicted"]["turned_away"] > 0.5
            await until(lambda: op.power().get("binding") == "grid_operator", what="state")
            # Day-ahead prices: refused when they overlap, shown on the state when taken.
            now = datetime.now(UTC)
            overlapping = [
                {"start": now.isoformat(), "end": (now + timedelta(hours=1)).isoformat(),
                 "price": 0.1},
                {"start": (now + timedelta(minutes=30)).isoformat(),
                 "end": (now + timedelta(hours=2)).isoformat(), "price": 0.2},
            ]  # fmt: skip
            bad = await answered(op, op.send("set_tariff", {"id": "da-1", "prices": overlapping}))
            assert bad["code"] == "rejected" and "overlap" in bad["message"], bad
            good = await answered(
                op, op.send("set_tariff", {"id": "da-2", "prices": overlapping[:1]})
            )
            assert good["code"] == "done", good
            await until(lambda: op.power().get("price") == 0.1, what="the day-ahead price")
    finally:
        await asyncio.to_thread(op.close)
