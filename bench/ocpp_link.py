"""OCPP: what one message costs the station, and how fast a backlog reaches a CSMS.

- `check_us_*`: checking one message the station sends against the official OCPP 2.1 schema
  (`controller/ocpp/wire.py`, the `ocpp` package's validator; done on a worker thread before
  every send), per kind: a metered TransactionEvent, a BatterySwap, a StatusNotification.
- `drain_msgs_per_s`: a backlog of `--backlog` TransactionEvents in a real journal, sent one at
  a time (OCPP's rule) over a websocket on loopback to a CSMS that answers at once, each taken
  off the journal's queue when answered: the rate at which a station catches up after an
  outage.

    .venv/bin/python bench/ocpp_link.py [--backlog 2000]

(Not `ocpp.py`: run as a script, that name would hide the `ocpp` package.)

The last line is one JSON object. No target in an issue; the figures are in bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from controller.ocpp import wire
from controller.ocpp.queue import OcppQueue, enqueue
from controller.store.events import EventLog, JournalBatch
from controller.store.journal import Journal

METERED: dict[str, Any] = {
    "eventType": "Updated", "timestamp": "2026-12-06T22:00:00Z",
    "triggerReason": "MeterValuePeriodic", "seqNo": 3,
    "transactionInfo": {"transactionId": "0b7e0000-0000-4000-8000-000000000000",
                        "chargingState": "Charging"},
    "evse": {"id": 3, "connectorId": 1},
    "meterValue": [{"timestamp": "2026-12-06T22:00:00Z", "sampledValue": [
        {"value": 10.0, "measurand": "Energy.Active.Import.Register",
         "unitOfMeasure": {"unit": "Wh"}},
        {"value": 7480.0, "measurand": "Power.Active.Import", "unitOfMeasure": {"unit": "W"}},
        {"value": 40.0, "measurand": "SoC", "unitOfMeasure": {"unit": "Percent"}},
    ]}],
}  # fmt: skip
SWAP: dict[str, Any] = {
    "eventType": "BatteryIn", "requestId": 1, "idToken": {"idToken": "EV-1", "type": "Local"},
    "batteryData": [{"evseId": 4, "serialNumber": "PK-1", "soC": 12.0, "soH": 97.0}],
}  # fmt: skip
STATUS = {"timestamp": "2026-12-06T22:00:00Z", "connectorStatus": "Occupied", "evseId": 1,
          "connectorId": 1}  # fmt: skip


def check_us(action: str, payload: dict[str, Any], n: int = 500) -> float:
    """Microseconds to check one message against its schema (median of 5 runs)."""
    wire.check_request(action, payload)  # the validator built once
    runs = [timeit.timeit(lambda: wire.check_request(action, payload), number=n) for _ in range(5)]
    return statistics.median(runs) / n * 1e6


async def drain(backlog: int) -> float:
    """Messages a second, a backlog sent from the journal's queue to a CSMS on loopback."""

    async def answer(ws: ServerConnection) -> None:
        async for raw in ws:
            frame = json.loads(raw)
            await ws.send(json.dumps([3, frame[1], {}]))

    with tempfile.TemporaryDirectory() as tmp:
        journal = await Journal.open(Path(tmp))
        try:
            batch = JournalBatch()
            for _ in range(backlog):
                enqueue(batch, "TransactionEvent", METERED)
            await EventLog(journal, "bench").commit(batch)
            queue = OcppQueue(journal)
            async with serve(answer, "127.0.0.1", 0) as server:
                port = next(iter(server.sockets)).getsockname()[1]
                async with connect(f"ws://127.0.0.1:{port}") as ws:
                    started = time.perf_counter()
                    sent = 0
                    while head := await queue.head():
                        for message in head:  # as OcppClient._drain: check, send, await, done
                            await asyncio.to_thread(
                                wire.check_request, message.action, message.payload
                            )
                            await ws.send(wire.call(str(sent), message.action, message.payload))
                            await ws.recv()
                            await queue.done(message.seq)
                            sent += 1
                    took = time.perf_counter() - started
        finally:
            await journal.close()
    return backlog / took


def main() -> None:
    """Measure; print the figures as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backlog", type=int, default=2000)
    args = parser.parse_args()
    result = {
        "check_us_transaction_event": round(check_us("TransactionEvent", METERED), 1),
        "check_us_battery_swap": round(check_us("BatterySwap", SWAP), 1),
        "check_us_status": round(check_us("StatusNotification", STATUS), 1),
        "backlog": args.backlog,
        "drain_msgs_per_s": round(asyncio.run(drain(args.backlog))),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
