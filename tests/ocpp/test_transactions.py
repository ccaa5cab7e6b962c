"""Slot charging as OCPP transactions: properties over adversarial reading sequences.

The input is what the slot control's book says of a slot at each step (stale or fresh; a pack
or none; its serial; enabled; the current, 0 included; full); the output is the queued
TransactionEvents. Every one of them must pass the official schema, and together they must
tell a CSMS a consistent story whatever the readings did.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.charging.control import SlotControl
from controller.ocpp import wire
from controller.ocpp.transactions import Transactions
from controller.store.events import JournalBatch
from controller.store.journal import Journal


@dataclass(frozen=True)
class Step:
    stale: bool
    present: bool
    serial: str | None
    enabled: bool | None
    current: float | None
    full: bool
    energy: float | None


steps = st.builds(
    Step,
    stale=st.booleans(),
    present=st.booleans(),
    serial=st.sampled_from(["PK-1", "PK-2", None]),
    enabled=st.sampled_from([True, False, None]),
    current=st.sampled_from([0.0, 0.4, 50.0, -3.0, None]),
    full=st.booleans(),
    energy=st.one_of(st.none(), st.floats(min_value=0, max_value=1e6)),
)


class Book:
    """The slot control's book, as far as transactions read it: one slot's view."""

    def __init__(self) -> None:
        self.step: Step | None = None
        self.wall = 1_800_000_000.0

    def view(self, slot: int, now: float) -> Any:
        s = self.step
        assert s is not None
        reading = SimpleNamespace(
            pack_present=s.present, pack_serial=s.serial, charge_enable=s.enabled,
            current=s.current, status="full" if s.full else "charging", wall=self.wall,
            energy_wh=s.energy, power_w=None, voltage=400.0, soc=50.0,
        )  # fmt: skip
        stale = "rack offline" if s.stale else None
        return SimpleNamespace(stale=stale is not None, fresh=None if stale else reading,
                               reading=reading)  # fmt: skip


def queued(batch: JournalBatch) -> list[dict[str, Any]]:
    return [
        json.loads(str(args[1]))
        for sql, args in batch.statements
        if sql.startswith("INSERT INTO ocpp_queue") and args[0] == "TransactionEvent"
    ]


def tracker(book: Book) -> Transactions:
    control = cast("SlotControl", SimpleNamespace(book=book))
    return Transactions(control, cast("Journal", None), meter_interval_s=0.0)


@settings(max_examples=300, deadline=None)
@given(st.lists(steps, min_size=1, max_size=40))
def test_transaction_events_tell_a_consistent_story(sequence: list[Step]) -> None:
    book = Book()
    tx = tracker(book)
    sent: list[dict[str, Any]] = []
    for step in sequence:
        book.step = step
        book.wall += 1.0
        batch = JournalBatch()
        tx.step({3}, batch)
        out = queued(batch)
        for payload in out:
            wire.check_request("TransactionEvent", payload)  # the official schema
        if step.stale:
            assert out == [], "a stale slot decides nothing"
        charging = bool(step.enabled) and (step.current or 0.0) > 0.0
        for payload in out:
            if payload["eventType"] == "Started":
                # Only on fresh data of a pack (with its serial) being charged: 0 A is not.
                assert step.present and step.serial is not None and charging and not step.full
        if not step.stale and (not step.present or step.serial is None):
            assert 3 not in tx.open, "a slot without a pack has no transaction"
        sent += out
    by_tx: dict[str, list[dict[str, Any]]] = {}
    for payload in sent:
        by_tx.setdefault(payload["transactionInfo"]["transactionId"], []).append(payload)
    for events in by_tx.values():
        assert events[0]["eventType"] == "Started"
        assert [e["seqNo"] for e in events] == list(range(len(events)))
        ends = [i for i, e in enumerate(events) if e["eventType"] == "Ended"]
        assert ends in ([], [len(events) - 1]), "Ended once, and last"
        assert all(e["evse"] == {"id": 3, "connectorId": 1} for e in events)
        for e in events:
            for mv in e.get("meterValue", []):
                values = {v["measurand"]: v for v in mv["sampledValue"]}
                assert all(v["value"] is not None for v in values.values())
    open_ids = [t for t, events in by_tx.items() if events[-1]["eventType"] != "Ended"]
    assert len(open_ids) <= 1


@pytest.mark.asyncio
async def test_an_open_transaction_goes_on_after_a_restart(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path)
    try:
        book = Book()
        control = cast("SlotControl", SimpleNamespace(book=book))
        first = Transactions(control, journal, meter_interval_s=0.0)
        charging = Step(False, True, "PK-1", True, 50.0, False, 100.0)
        book.step = charging
        batch = JournalBatch()
        first.step({3}, batch)
        first.step({3}, batch)
        await journal.call(lambda c: _commit(c, batch))
        before = queued(batch)
        assert [e["seqNo"] for e in before] == [0, 1]

        second = Transactions(control, journal, meter_interval_s=0.0)
        await second.load()
        book.step = Step(False, False, None, False, 0.0, False, None)  # the pack has left
        batch = JournalBatch()
        second.step({3}, batch)
        after = queued(batch)
        assert [(e["eventType"], e["seqNo"]) for e in after] == [("Ended", 2)]
        assert (
            after[0]["transactionInfo"]["transactionId"]
            == (before[0]["transactionInfo"]["transactionId"])
        )
        assert after[0]["transactionInfo"]["stoppedReason"] == "EVDisconnected"
    finally:
        await journal.close()


def _commit(conn: Any, batch: JournalBatch) -> None:
    with conn:
        for sql, args in batch.statements:
            conn.execute(sql, args)
