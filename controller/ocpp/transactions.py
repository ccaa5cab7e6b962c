"""Charging in the slots as OCPP transactions (`TransactionEvent`), one per pack's charge.

A transaction is **Started** when a slot's fresh reading shows a pack (with its serial) being
charged (enabled, current flowing); **Updated** when charging stops or resumes (the charging
state: `Charging`, `SuspendedEVSE`) and every `meter_interval_s` with its meter values; **Ended**
when the pack leaves the slot (or another one is in it: `EVDisconnected`) or its charger reports
it full (`SOCLimitReached`). Stale data decides nothing: a transaction is neither started nor
ended on data the station does not have.

Meter values are the charger's: `Energy.Active.Import.Register` is its `energy_wh` (delivered to
the pack since it was inserted), `Power.Active.Import` its power (or voltage x current), `SoC`
the BMS's. Each message is queued in the journal with the transaction's new state, in one
commit (docs/ocpp.md); open transactions survive a restart.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from controller.charging.control import SlotControl
from controller.ocpp.queue import enqueue
from controller.store.events import JournalBatch
from controller.store.journal import Journal
from drivers import clock
from drivers.rack import SlotReading

CHARGING, SUSPENDED = "Charging", "SuspendedEVSE"


@dataclass(frozen=True, slots=True)
class OpenTx:
    """A transaction the CSMS was told of."""

    tx_id: str
    serial: str
    seq_no: int  # the last one used
    started_at: float
    state: str
    next_meter: float = 0.0  # monotonic


class Transactions:
    """Follows the slots the slot control stepped; queues their transaction events."""

    def __init__(
        self,
        control: SlotControl,
        journal: Journal,
        meter_interval_s: float,
        *,
        evse_of: Mapping[int, int] | None = None,
    ) -> None:
        self.control = control
        self.evse_of = dict(evse_of or {})
        self.journal = journal
        self.meter_interval_s = meter_interval_s
        self.open: dict[int, OpenTx] = {}
        self.offline = False  # set by the client: events made while the CSMS is not connected

    async def load(self) -> None:
        """Restore the transactions open when the daemon stopped."""
        rows = await self.journal.call(
            lambda c: c.execute(
                "SELECT slot, tx_id, serial, seq_no, started_at, state FROM ocpp_transactions"
            ).fetchall()
        )
        self.open = {
            int(slot): OpenTx(tx, serial, int(seq), float(at), state)
            for slot, tx, serial, seq, at, state in rows
        }

    def step(self, slots: set[int], batch: JournalBatch) -> None:
        """Look at the slots that changed; queue what the CSMS must hear, into `batch`."""
        now = clock.monotonic()
        for slot in sorted(slots):
            view = self.control.book.view(slot, now)
            r = view.fresh
            if view.stale or r is None:
                continue  # unknown: nothing is decided on it
            self._slot(slot, r, now, batch)

    def _slot(self, slot: int, r: SlotReading, now: float, batch: JournalBatch) -> None:
        tx = self.open.get(slot)
        present = bool(r.pack_present) and bool(r.pack_serial)
        charging = bool(r.charge_enable) and (r.current or 0.0) > 0.0
        if tx is None:
            if present and charging and r.status != "full" and r.pack_serial is not None:
                self._start(slot, r, now, batch)
            return
        if not present or r.pack_serial != tx.serial:
            self._end(slot, tx, r, "EVDeparted", reason="EVDisconnected", batch=batch, meter=False)
        elif r.status == "full":
            self._end(
                slot,
                tx,
                r,
                "ChargingStateChanged",
                reason="SOCLimitReached",
                batch=batch,
                meter=True,
            )
        elif (CHARGING if charging else SUSPENDED) != tx.state:
            state = CHARGING if charging else SUSPENDED
            self._update(
                slot, replace(tx, state=state), r, "ChargingStateChanged", now=now, batch=batch
            )
        elif now >= tx.next_meter and not self.offline:
            # (Offline, periodic values are not queued: a long outage must not fill the
            # journal. The changes are, and the Ended carries the meter's last value.)
            self._update(slot, tx, r, "MeterValuePeriodic", now=now, batch=batch)

    def _start(self, slot: int, r: SlotReading, now: float, batch: JournalBatch) -> None:
        assert r.pack_serial is not None
        tx = OpenTx(str(uuid.uuid4()), r.pack_serial, 0, clock.wall(), CHARGING)
        payload = self._event("Started", "ChargingStateChanged", slot, tx, r, meter=True)
        self._save(slot, tx, now, batch)
        enqueue(batch, "TransactionEvent", payload)

    def _update(
        self,
        slot: int,
        tx: OpenTx,
        r: SlotReading,
        trigger: str,
        *,
        now: float,
        batch: JournalBatch,
    ) -> None:
        tx = replace(tx, seq_no=tx.seq_no + 1)
        payload = self._event("Updated", trigger, slot, tx, r, meter=True)
        self._save(slot, tx, now, batch)
        enqueue(batch, "TransactionEvent", payload)

    def _end(
        self,
        slot: int,
        tx: OpenTx,
        r: SlotReading,
        trigger: str,
        *,
        reason: str,
        batch: JournalBatch,
        meter: bool,
    ) -> None:
        tx = replace(tx, seq_no=tx.seq_no + 1, state="Idle")
        payload = self._event("Ended", trigger, slot, tx, r, meter=meter)
        payload["transactionInfo"]["stoppedReason"] = reason
        del self.open[slot]
        batch.execute("DELETE FROM ocpp_transactions WHERE slot = ?", (slot,))
        enqueue(batch, "TransactionEvent", payload)

    def _save(self, slot: int, tx: OpenTx, now: float, batch: JournalBatch) -> None:
        tx = replace(tx, next_meter=now + self.meter_interval_s)
        self.open[slot] = tx
        batch.execute(
            "INSERT OR REPLACE INTO ocpp_transactions"
            "(slot, tx_id, serial, seq_no, started_at, state) VALUES (?, ?, ?, ?, ?, ?)",
            (slot, tx.tx_id, tx.serial, tx.seq_no, tx.started_at, tx.state),
        )

    def _event(
        self, kind: str, trigger: str, slot: int, tx: OpenTx, r: SlotReading, *, meter: bool
    ) -> dict[str, Any]:
        at = _iso(r.wall)
        payload: dict[str, Any] = {
            "eventType": kind,
            "timestamp": at,
            "triggerReason": trigger,
            "seqNo": tx.seq_no,
            "transactionInfo": {"transactionId": tx.tx_id, "chargingState": tx.state},
            "evse": {"id": self.evse_of.get(slot, slot), "connectorId": 1},
        }
        if self.offline:
            payload["offline"] = True
        values = meter_values(r) if meter else []
        if values:
            payload["meterValue"] = [{"timestamp": at, "sampledValue": values}]
        return payload


def meter_values(r: SlotReading) -> list[dict[str, Any]]:
    """The reading's known values as OCPP sampled values (unknown ones are left out)."""
    power = r.power_w
    if power is None and r.voltage is not None and r.current is not None:
        power = r.voltage * r.current
    out: list[dict[str, Any]] = []
    if r.energy_wh is not None:
        out.append({"value": round(r.energy_wh, 1), "measurand": "Energy.Active.Import.Register",
                    "unitOfMeasure": {"unit": "Wh"}})  # fmt: skip
    if power is not None:
        out.append({"value": round(power, 1), "measurand": "Power.Active.Import",
                    "unitOfMeasure": {"unit": "W"}})  # fmt: skip
    if r.soc is not None:
        out.append({"value": round(r.soc, 1), "measurand": "SoC",
                    "unitOfMeasure": {"unit": "Percent"}})  # fmt: skip
    return out


def _iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat().replace("+00:00", "Z")
