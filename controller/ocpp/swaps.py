"""The swap's physical handovers, from the journal, as OCPP 2.1 `BatterySwap` requests.

The translator reads the journal's events after its cursor, in order, and for each one that
concerns the CSMS queues its message in the same transaction that moves the cursor on: a crash
loses nothing and repeats nothing. What it reads (docs/mqtt-api.md, `events`):

- `swap_started`: the swap is followed; its requestId and idToken are the CSMS's when it asked
  (`by` is `ocpp:<requestId>:<idToken type>`, the vehicle id being the idToken), otherwise the
  event's own sequence number and `{"idToken": <vehicle id>, "type": "Local"}`;
- `pack_handed_over`, `in`: `BatteryIn` (the vehicle's pack is in its slot, its charger
  reporting it); `out`: `BatteryOut` (the station's pack is installed and locked);
- `swap_completed`, `swap_aborted`, `swap_failed`: a swap that ends without its pack going out
  (a car that never came, an abort, a fault) is `BatteryOutTimeout` with the reserved pack.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

from controller.ocpp.queue import OcppQueue
from controller.store.journal import Journal, transaction
from drivers import clock

_log = logging.getLogger(__name__)

BATCH = 200
BY_PREFIX = "ocpp:"
VENDOR = "org.swapstation"
ENDINGS = frozenset({"swap_completed", "swap_aborted", "swap_failed", "swap_recovered"})
# OCPP's requestId is a JSON integer; the station keeps those of 32 bits (a CSMS's is refused
# outside them when it asks, handlers.py).
REQUEST_ID_MIN, REQUEST_ID_MAX = -(2**31), 2**31 - 1
REQUEST_ID_RE = re.compile(r"^-?[0-9]{1,10}$")


class _Reserved(BaseModel):
    model_config = ConfigDict(extra="ignore")

    slot: int
    serial: str
    soc: float | None = None


class _Started(BaseModel):
    model_config = ConfigDict(extra="ignore")

    swap_id: str
    vehicle_id: str
    reserved: _Reserved
    by: str | None = None


class _Handover(BaseModel):
    model_config = ConfigDict(extra="ignore")

    swap_id: str
    direction: str
    slot: int
    serial: str
    soc: float | None = None
    soh: float | None = None


@dataclass(frozen=True, slots=True)
class _Followed:
    request_id: int
    id_token: dict[str, Any]
    reserved: dict[str, Any]
    sent_out: bool


def by_of(request_id: int, token_type: str) -> str:
    """The `by` of a swap the CSMS asked for (kept in the swap record and its event)."""
    return f"{BY_PREFIX}{request_id}:{token_type}"


def battery(slot: int, serial: str, soc: float | None, soh: float | None) -> dict[str, Any]:
    """A `BatteryDataType`, written by hand.

    The `ocpp` package's dataclass would spell `soC` and `soH` as `SoC` and `soh`. An unknown
    SoC or SoH (the schema requires both) goes as 0 and is named in `customData.unknown`: never
    a guess passed off as a reading.
    """
    data: dict[str, Any] = {
        "evseId": slot,
        "serialNumber": serial[:50],
        "soC": _percent(soc),
        "soH": _percent(soh),
    }
    unknown = [name for name, value in (("soC", soc), ("soH", soh)) if value is None]
    if unknown:
        data["customData"] = {"vendorId": VENDOR, "unknown": unknown}
    return data


def _percent(value: float | None) -> float:
    return 0.0 if value is None else round(min(100.0, max(0.0, value)), 1)


class SwapTranslator:
    """Journal events after the cursor into queued `BatterySwap` requests."""

    def __init__(
        self, journal: Journal, queue: OcppQueue, evse_of: Mapping[int, int] | None = None
    ) -> None:
        self._journal = journal
        self._queue = queue
        self._evse_of = dict(evse_of or {})
        self.translated = 0

    def evse(self, slot: int) -> int:
        """The EVSE id of a slot (device.py)."""
        return self._evse_of.get(slot, slot)

    async def start(self) -> None:
        """The first time, start from the journal's end: history is not replayed to a CSMS."""

        def init(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.execute(
                    "INSERT OR IGNORE INTO ocpp_cursor(id, seq)"
                    " SELECT 1, COALESCE(MAX(seq), 0) FROM events"
                )

        await self._journal.call(init)

    async def step(self) -> int:
        """Translate the next events; how many were read (0: caught up)."""
        return int(await self._journal.call(self._step))

    def _step(self, conn: sqlite3.Connection) -> int:
        cursor = int(conn.execute("SELECT seq FROM ocpp_cursor WHERE id = 1").fetchone()[0])
        rows = conn.execute(
            "SELECT seq, kind, body FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            (cursor, BATCH),
        ).fetchall()
        if not rows:
            return 0
        with transaction(conn):
            for seq, kind, body in rows:
                conn.execute("SAVEPOINT event")
                try:
                    self._translate(conn, seq, kind, json.loads(body))
                except Exception as exc:  # noqa: BLE001 - the cursor must move on, whatever it is
                    # An event of an unexpected shape (or a bug of ours) is skipped, loudly, with
                    # what it wrote undone: one bad event must not stop every later one.
                    conn.execute("ROLLBACK TO event")
                    _log.error("OCPP: event %d (%s) not translated: %r", seq, kind, exc)
                conn.execute("RELEASE event")
            conn.execute("UPDATE ocpp_cursor SET seq = ? WHERE id = 1", (rows[-1][0],))
        return len(rows)

    def _translate(self, conn: sqlite3.Connection, seq: int, kind: str, body: Any) -> None:
        if kind == "swap_started":
            started = _Started.model_validate(body)
            # A swap started at the station: a requestId of its own, negative, so that it
            # never meets one the CSMS chose.
            request_id, token_type = -seq, "Local"
            if started.by and started.by.startswith(BY_PREFIX):
                rid, _, kind_of_token = started.by[len(BY_PREFIX) :].partition(":")
                if REQUEST_ID_RE.match(rid) and REQUEST_ID_MIN <= int(rid) <= REQUEST_ID_MAX:
                    request_id, token_type = int(rid), kind_of_token[:20] or "Central"
            conn.execute(
                "INSERT OR REPLACE INTO ocpp_swaps(swap_id, request_id, id_token, reserved, at)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    started.swap_id,
                    request_id,
                    json.dumps({"idToken": started.vehicle_id, "type": token_type}),
                    started.reserved.model_dump_json(),
                    clock.wall(),
                ),
            )
        elif kind == "pack_handed_over":
            handover = _Handover.model_validate(body)
            followed = _followed(conn, handover.swap_id)
            if followed is None:
                return  # started before OCPP was configured: not the CSMS's
            event = "BatteryIn" if handover.direction == "in" else "BatteryOut"
            _queue(conn, followed, event, battery(
                self.evse(handover.slot), handover.serial, handover.soc, handover.soh
            ))  # fmt: skip
            if event == "BatteryOut":
                conn.execute(
                    "UPDATE ocpp_swaps SET sent_out = 1 WHERE swap_id = ?", (handover.swap_id,)
                )
        elif kind in ENDINGS and ("pack_in" in body or kind != "swap_recovered"):
            # (`swap_recovered` is also the event of a swap resumed after a restart, with its
            # `state`; its ending, a swap completed after a restart, carries `pack_in`.)
            swap_id = str(body.get("swap_id", ""))
            followed = _followed(conn, swap_id)
            if followed is None:
                return
            if not followed.sent_out:
                res = _Reserved.model_validate(followed.reserved)
                _queue(conn, followed, "BatteryOutTimeout", battery(
                    self.evse(res.slot), res.serial, res.soc, None
                ))  # fmt: skip
            conn.execute("DELETE FROM ocpp_swaps WHERE swap_id = ?", (swap_id,))
        else:
            return
        self.translated += 1


def _followed(conn: sqlite3.Connection, swap_id: str) -> _Followed | None:
    row = conn.execute(
        "SELECT request_id, id_token, reserved, sent_out FROM ocpp_swaps WHERE swap_id = ?",
        (swap_id,),
    ).fetchone()
    if row is None:
        return None
    return _Followed(int(row[0]), json.loads(row[1]), json.loads(row[2]), bool(row[3]))


def _queue(conn: sqlite3.Connection, followed: _Followed, event: str, data: dict[str, Any]) -> None:
    payload = {
        "eventType": event,
        "requestId": followed.request_id,
        "idToken": followed.id_token,
        "batteryData": [data],
    }
    conn.execute(
        "INSERT INTO ocpp_queue(action, payload, at) VALUES (?, ?, ?)",
        ("BatterySwap", json.dumps(payload, separators=(",", ":"), sort_keys=True), clock.wall()),
    )
