"""The journal's swap events as BatterySwap requests: once each, in order, across restarts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from controller.ocpp import wire
from controller.ocpp.queue import OcppQueue
from controller.ocpp.swaps import SwapTranslator, by_of
from controller.store.events import EventLog, JournalBatch
from controller.store.journal import Journal

pytestmark = pytest.mark.asyncio


def started(swap_id: str, by: str | None, slot: int = 1, soc: float = 95.0) -> dict[str, Any]:
    reserved = {"slot": slot, "serial": f"PK-{swap_id}", "soc": soc}
    return {"swap_id": swap_id, "vehicle_id": "EV-1", "pack_type": "STD75", "by": by,
            "reserved": reserved, "free_slot": 4}  # fmt: skip


def handed(swap_id: str, direction: str, slot: int, soh: float | None) -> dict[str, Any]:
    return {"swap_id": swap_id, "vehicle_id": "EV-1", "direction": direction, "slot": slot,
            "serial": f"S-{swap_id}-{direction}", "soc": 12.5, "soh": soh}  # fmt: skip


async def append(log: EventLog, *events: tuple[str, dict[str, Any]]) -> None:
    batch = JournalBatch()
    for kind, data in events:
        batch.event(kind, data)
    await log.commit(batch)


async def drain(translator: SwapTranslator) -> None:
    while await translator.step():
        pass


async def test_handovers_become_battery_swaps_once_in_order_across_a_restart(
    tmp_path: Path,
) -> None:
    journal = await Journal.open(tmp_path)
    log = EventLog(journal, "t1")
    await append(log, ("swap_started", started("old", None)))  # before OCPP: not replayed
    queue = OcppQueue(journal)
    translator = SwapTranslator(journal, queue)
    await translator.start()
    await append(
        log,
        ("swap_started", started("a", by_of(42, "Central"))),
        ("pack_handed_over", handed("a", "in", 4, 97.0)),
        ("alarm_raised", {"scope": "station"}),  # not the CSMS's
        ("pack_handed_over", handed("a", "out", 1, None)),
        ("swap_completed", {"swap_id": "a"}),
        ("swap_started", started("b", None, slot=2, soc=88.0)),  # started at the station
        ("swap_aborted", {"swap_id": "b"}),  # its pack never went out
        ("pack_handed_over", handed("old", "in", 3, 90.0)),  # a swap OCPP never followed
        ("swap_started", {"garbage": True}),  # a shape we do not know: skipped, loudly
        ("swap_started", started("c", "ocpp:99999999999999999999:Central")),  # not 32 bits
        ("swap_recovered", {"swap_id": "c", "state": "storing"}),  # resumed: not its end
        ("pack_handed_over", handed("c", "out", 2, 95.0)),
        ("swap_recovered", {"swap_id": "c", "pack_in": "S-c-out", "pack_out": None}),  # its end
    )
    await drain(translator)
    await journal.close()

    # A restart: the cursor and the followed swaps are in the journal; nothing is sent twice.
    journal = await Journal.open(tmp_path)
    try:
        queue = OcppQueue(journal)
        translator = SwapTranslator(journal, queue)
        await translator.start()
        await drain(translator)
        messages = await queue.head(100)
        payloads = [m.payload for m in messages]
        assert [m.action for m in messages] == ["BatterySwap"] * 4
        for p in payloads:
            wire.check_request("BatterySwap", p)
        assert [(p["eventType"], p["requestId"]) for p in payloads[:3]] == [
            ("BatteryIn", 42), ("BatteryOut", 42), ("BatteryOutTimeout", payloads[2]["requestId"]),
        ]  # fmt: skip
        assert payloads[0]["idToken"] == {"idToken": "EV-1", "type": "Central"}
        assert payloads[0]["batteryData"] == [
            {"evseId": 4, "serialNumber": "S-a-in", "soC": 12.5, "soH": 97.0}
        ]
        # An unknown SoH goes as 0 and is named, never passed off as a reading.
        out = payloads[1]["batteryData"][0]
        assert out["soH"] == 0.0
        assert out["customData"] == {"vendorId": "org.swapstation", "unknown": ["soH"]}
        local = payloads[2]
        assert local["idToken"] == {"idToken": "EV-1", "type": "Local"}
        assert local["batteryData"][0]["evseId"] == 2 and local["batteryData"][0]["soC"] == 88.0
        assert local["requestId"] < 0  # the station's own: never one a CSMS chose
        # A by that is not a 32-bit requestId is taken as the station's own swap; its recovery
        # mid-swap is not its end, its ending (swap_recovered with pack_in) is.
        last = payloads[3]
        assert last["eventType"] == "BatteryOut" and last["requestId"] < 0
        rows = await journal.call(lambda c: c.execute("SELECT * FROM ocpp_swaps").fetchall())
        assert rows == []  # ended swaps are forgotten
        text = json.dumps(payloads)
        assert "SoC" not in text and "soh" not in text
    finally:
        await journal.close()
