"""Slot state and alarm events on MQTT, seen by an independent subscriber process."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from controller.config.model import DeadbandsConfig
from controller.mqtt.slotpub import SlotState, significant_change
from simstation.broker import Mosquitto
from simstation.charger import SimPack
from simstation.station import SimRackSpec
from tests.rig import running, until
from tests.support import Subscriber


def _spec() -> SimRackSpec:
    return SimRackSpec("a", [1, 2], packs={1: SimPack("PK-0001", soc=40.0)})


def _payload(line: str) -> tuple[str, dict[str, Any]]:
    topic, _, body = line.partition(" ")
    return topic, json.loads(body)


async def test_retained_slot_state_with_staleness(tmp_path: Path, broker: Mosquitto) -> None:
    async with running(tmp_path, broker, [_spec()]) as rig:
        with Subscriber(broker, "swapstation/t1/slots/+") as sub:
            line = await asyncio.to_thread(
                sub.wait_for,
                lambda s: s.startswith("swapstation/t1/slots/1 ") and '"charging"' in s,
            )
            _, state = _payload(line)
            SlotState.model_validate(state)  # the published payload is the typed model
            assert state["pack"] == {
                "serial": "PK-0001",
                "type": "STD75",
                "soc": state["pack"]["soc"],
                "soh": 96.0,
            }
            assert state["stale"] is False and state["charge_enable"] is True
            await asyncio.to_thread(
                sub.wait_for, lambda s: s.startswith("swapstation/t1/slots/2 ") and '"empty"' in s
            )
            await rig.sim.racks["a"].go_offline()
            line = await asyncio.to_thread(
                sub.wait_for,
                lambda s: s.startswith("swapstation/t1/slots/1 ") and '"stale":true' in s,
            )
            _, state = _payload(line)
            assert state["stale_reason"] == "rack offline" or str(state["stale_reason"]).startswith(
                ("last poll failed", "data is")
            )
        # Retained: a late subscriber gets every slot at once.
        with Subscriber(broker, "swapstation/t1/slots/+") as late:
            await asyncio.to_thread(
                late.wait_for, lambda s: s.startswith("swapstation/t1/slots/1 ")
            )
            await asyncio.to_thread(
                late.wait_for, lambda s: s.startswith("swapstation/t1/slots/2 ")
            )


async def test_alarm_events_are_published_in_order(tmp_path: Path, broker: Mosquitto) -> None:
    async with running(tmp_path, broker, [_spec()]) as rig:
        with Subscriber(broker, "swapstation/t1/events") as sub:
            await until(lambda: rig.sim.racks["a"].chargers[1].enabled, what="charging")
            rig.sim.racks["a"].set_fault(1, 3)
            await until(lambda: "charger_fault" in rig.alarm_codes("slot:1"))
            rig.sim.racks["a"].set_fault(1, 0)
            await until(lambda: "charger_fault" not in rig.alarm_codes("slot:1"))
            await asyncio.to_thread(sub.wait_for, lambda s: '"alarm_cleared"' in s)
            events = [_payload(line)[1] for line in sub.lines]
        kinds = [(e["kind"], e["data"]["code"]) for e in events if e["kind"].startswith("alarm")]
        assert ("alarm_raised", "charger_fault") in kinds
        assert kinds.index(("alarm_raised", "charger_fault")) < kinds.index(
            ("alarm_cleared", "charger_fault")
        )
        seqs = [int(e["seq"]) for e in events]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        raised = next(e for e in events if e["kind"] == "alarm_raised")
        assert raised["station"] == "t1"
        assert raised["data"]["message"] == "charger fault code 3"


async def test_events_wait_for_the_broker(tmp_path: Path) -> None:
    """Raised while the broker is down, an alarm is published once it is back.

    The back end holds a persistent session (clean start off, QoS 1) on a broker that
    persists sessions, as a fleet back end should: it gets what was published while it
    was reconnecting.
    """
    with Mosquitto(tmp_path / "pbroker", persistent=True) as broker:
        async with running(tmp_path, broker, [_spec()]) as rig:
            await until(rig.daemon.link.connected.is_set, what="connected")
            with Subscriber(
                broker, "swapstation/t1/events", "-t", "swapstation/t1/status", "-c", "-i", "be-1"
            ) as sub:
                # The retained status proves the back end's session is subscribed.
                await asyncio.to_thread(sub.wait_line, "swapstation/t1/status online")
                broker.stop()
                await until(lambda: not rig.daemon.link.connected.is_set(), what="disconnected")
                rig.sim.racks["a"].set_fault(1, 5)
                await until(lambda: "charger_fault" in rig.alarm_codes("slot:1"))
                # Committed to the journal, not published: the broker is down.
                deadline = asyncio.get_running_loop().time() + 5
                while not any(
                    e.kind == "alarm_raised" for e in await rig.station.events.unpublished()
                ):
                    assert asyncio.get_running_loop().time() < deadline, "event not journalled"
                    await asyncio.sleep(0.01)
                broker.start()
                await asyncio.to_thread(
                    sub.wait_for,
                    lambda s: '"alarm_raised"' in s and "charger fault code 5" in s,
                    15,
                )


async def test_quarantine_survives_a_restart(tmp_path: Path, broker: Mosquitto) -> None:
    async with running(tmp_path, broker, [_spec()]) as rig:
        rig.sim.racks["a"].set_temperature(1, 70.0)
        await until(lambda: "PK-0001" in rig.station.control.quarantine, what="quarantine")
    async with running(tmp_path, broker, [_spec()]) as rig:
        assert "PK-0001" in rig.station.control.quarantine
        assert 1 in rig.station.control.trips


def _state(**kw: object) -> SlotState:
    base: dict[str, object] = {
        "slot": 1,
        "rack": "a",
        "status": "charging",
        "stale": False,
        "stale_reason": None,
        "age_s": 0.1,
        "pack": {"serial": "P", "type": "T", "soc": 50.0, "soh": 90.0},
        "voltage_v": 380.0,
        "current_a": 100.0,
        "power_w": 38000.0,
        "temp_min_c": 25.0,
        "temp_max_c": 28.0,
        "energy_wh": 1000.0,
        "charge_enable": True,
        "current_limit_a": 150.0,
        "bms_voltage_max_v": 403.2,
        "bms_current_max_a": 200.0,
        "fault_code": 0,
        "sensor_faults": [],
        "alarms": [],
        "charging_blocked_by": [],
        "tripped": None,
        "quarantined": None,
        "enabled": True,
        "updated_at": datetime.now(UTC),
    }
    base.update(kw)
    return SlotState.model_validate(base)


def test_deadbands() -> None:
    bands = DeadbandsConfig()
    old = _state()
    assert not significant_change(old, _state(age_s=3.0, current_a=100.3), bands)
    assert not significant_change(
        old, _state(pack={"serial": "P", "type": "T", "soc": 50.4, "soh": 90.0}), bands
    )
    assert significant_change(
        old, _state(pack={"serial": "P", "type": "T", "soc": 50.6, "soh": 90.0}), bands
    )
    assert significant_change(old, _state(current_a=101.0), bands)
    assert significant_change(old, _state(stale=True), bands)
    assert significant_change(old, _state(status="full"), bands)


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_a_quiet_slot_is_published_again_a_refresh_period_after_its_last(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """An empty slot (nothing changes) goes out again every `slot_refresh_s`; the refresh is
    per slot, one pending entry each, however often the slot was published."""
    # Slot 1 charges (published at every poll: deadbands 0), slot 2 is empty and quiet.
    spec = SimRackSpec("r1", [1, 2], packs={1: SimPack("PK-A", soc=40.0)}, poll_period_s=0.1)
    bands = "[publish.deadbands]\n" + "".join(f"{k} = 0\n" for k in DeadbandsConfig.model_fields)
    refresh = 0.6
    async with running(
        tmp_path, broker, [spec], sections=f"[publish]\nslot_refresh_s = {refresh}\n{bands}"
    ) as rig:
        pub = rig.station.slot_publisher
        link = rig.station.link
        sent: list[float] = []
        publish_many = link.publish_many

        async def probe(messages: Any, **kw: Any) -> Any:
            sent.extend(time.monotonic() for topic, _ in messages if topic.endswith("/slots/2"))
            return await publish_many(messages, **kw)

        link.publish_many = probe  # type: ignore[method-assign]
        await until(lambda: len(sent) >= 4, timeout=10, what="four refreshes of slot 2")
        gaps = [b - a for a, b in itertools.pairwise(sent)]
        assert all(refresh * 0.9 <= g <= refresh + 0.5 for g in gaps), gaps
        assert len(pub._refresh) <= len(rig.station.book.slots)  # one entry per slot
