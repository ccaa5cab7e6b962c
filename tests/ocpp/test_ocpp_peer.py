"""OCPP 2.1 against an independent CSMS: raw `websockets` + `jsonschema` (tests/peers/rawcsms.py).

Written from docs/ocpp.md alone. The real daemon (tests/rig.py: real websocket on loopback, a
private broker, simulated racks, robot and PLC) talks to a CSMS that shares no code with the
station's OCPP stack, validates every request the station sends against the official 2.1
schemas, date-time formats included, and checks the OCPP-J framing of everything it answers.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from controller.store.records import RecordStore
from simstation.broker import Mosquitto
from simstation.charger import SimPack
from simstation.station import SimRackSpec
from tests.peers.rawcsms import RawCsms, basic
from tests.rig import Rig, running, until

pytestmark = [pytest.mark.asyncio]

SPEED = 200.0
PASSWORD = "csms-secret-1"
IDENTITY = "pss-0042"
SLOTS = {1: "Occupied", 2: "Occupied", 3: "Occupied", 4: "Available"}
UNITS = {"Energy.Active.Import.Register": "Wh", "Power.Active.Import": "W", "SoC": "Percent"}


def rack() -> SimRackSpec:
    """Slots 1-4: PK-A 95 % in 1, PK-B 85 % in 2, PK-C 40 % in 3 (charging), 4 empty."""
    packs = {
        1: SimPack("PK-A", soc=95.0),
        2: SimPack("PK-B", soc=85.0),
        3: SimPack("PK-C", soc=40.0),
    }
    return SimRackSpec("r1", [1, 2, 3, 4], packs=packs, poll_period_s=0.05)


def sections(
    csms: RawCsms,
    extra: str = "",
    identity: str | None = IDENTITY,
    pack_types: tuple[str, ...] = ("STD75",),
) -> str:
    ident = f'identity = "{identity}"\n' if identity is not None else ""
    types = "".join(
        f"[power.pack_types.{t}]\ncapacity_ah = 208\ntaper_start_soc = 80\n" for t in pack_types
    )
    return (
        f"[swap]\nmin_dispense_soc = 80\n{types}"
        f'[ocpp]\ncsms_url = "{csms.url}"\n{ident}security_profile = 1\n'
        "meter_interval_s = 1\nreconnect_min_s = 0.1\nreconnect_max_s = 0.5\n"
        f"call_timeout_s = 5\n{extra}"
    )


@asynccontextmanager
async def station(
    tmp_path: Path,
    broker: Mosquitto,
    csms: RawCsms,
    *,
    extra: str = "",
    identity: str | None = IDENTITY,
    password: str = PASSWORD,
    pack_types: tuple[str, ...] = ("STD75",),
) -> AsyncIterator[Rig]:
    await csms.start()
    try:
        async with running(
            tmp_path, broker, [rack()], speed=SPEED,
            sections=sections(csms, extra, identity, pack_types),
            environ={"SWAPSTATION_OCPP__PASSWORD": password}, robot=True, plc=True,
        ) as rig:  # fmt: skip
            yield rig
    finally:
        await csms.stop()


def statuses(csms: RawCsms, conn: int | None = None) -> dict[int, str]:
    out: dict[int, str] = {}
    for p in csms.of("StatusNotification", conn):
        out[p["evseId"]] = p["connectorStatus"]
    return out


async def booted(csms: RawCsms, conn: int = 1) -> None:
    await csms.wait_for(lambda: len(statuses(csms, conn)) == 4, what="a status for every EVSE")


async def ready(rig: Rig) -> None:
    seq = rig.station.sequencer
    assert seq is not None
    await until(lambda: not seq.blocking, what="the station ready for a swap")


def swap_request(
    vehicle: str, request_id: int, pack_type: str | None = None, token_type: str = "Central"
) -> dict[str, Any]:
    token: dict[str, Any] = {"idToken": vehicle, "type": token_type}
    if pack_type is not None:
        token["additionalInfo"] = [{"additionalIdToken": pack_type, "type": "PackType"}]
    return {"requestId": request_id, "idToken": token}


def no_violations(csms: RawCsms) -> None:
    assert csms.violations == [], "\n".join(csms.violations)


# --- 1. the connection, the boot, the statuses ----------------------------------------------


@pytest.mark.timeout(20)
async def test_boot_first_then_a_status_per_slot_every_request_schema_valid(
    tmp_path: Path, broker: Mosquitto
) -> None:
    # A boot interval of 1 s, so that Heartbeats come; the statuses' answers held back a little,
    # so that a second request of the station's sent before the answer would be seen.
    csms = RawCsms(IDENTITY, PASSWORD, boot=[("Accepted", 1)], delays={"StatusNotification": 0.05})
    async with station(tmp_path, broker, csms):
        await booted(csms)
        await csms.wait_for(lambda: len(csms.of("Heartbeat")) >= 2, what="two Heartbeats")
        conn = csms.connections[0]
        assert len(csms.connections) == 1
        assert conn.path == f"/ocpp/{IDENTITY}"
        assert conn.authorization == basic(IDENTITY, PASSWORD)
        assert conn.offered is not None
        assert "ocpp2.1" in [p.strip() for p in conn.offered.split(",")]
        assert conn.subprotocol == "ocpp2.1"
        calls = csms.calls()
        assert calls[0].action == "BootNotification"
        boot = calls[0].payload
        assert boot["reason"] == "PowerUp"
        assert boot["chargingStation"]["vendorName"] == "swapstation"
        assert boot["chargingStation"]["model"] == "swap station"
        # Then a StatusNotification for every EVSE, before anything else.
        first = calls[1:5]
        assert [c.action for c in first] == ["StatusNotification"] * 4, [c.action for c in calls]
        assert sorted(c.payload["evseId"] for c in first) == [1, 2, 3, 4]
        assert all(c.payload["connectorId"] == 1 for c in first)
        # Each a documented status (a slot whose data is not read yet is Unavailable: "unknown
        # is not available"), settling on what is in the slots.
        documented = {"Unavailable", "Faulted", "Occupied", "Available"}
        assert {c.payload["connectorStatus"] for c in first} <= documented
        await csms.wait_for(lambda: statuses(csms) == SLOTS, what=f"statuses {SLOTS}")
        assert len(csms.of("BootNotification")) == 1
        assert csms.overlaps == 0
        no_violations(csms)


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "identity", [None, "Pss*0-4_2=+|@.x"], ids=["default-station-id", "every-character"]
)
async def test_identity_in_the_path_and_the_basic_auth(
    tmp_path: Path, broker: Mosquitto, identity: str | None
) -> None:
    # Without `identity` it is the station_id (`t1`); with every character the docs allow, the
    # last path segment is the identity (percent-encoded where a URL needs it) and so is the
    # basic-auth user. A password with a colon is legal in basic auth (only the user's is not).
    expected = identity or "t1"
    password = "s3cr:et+/="
    csms = RawCsms(expected, password)
    async with station(tmp_path, broker, csms, identity=identity, password=password):
        await booted(csms)
        conn = csms.connections[0]
        assert unquote(conn.path) == f"/ocpp/{expected}"
        assert conn.authorization == basic(expected, password)
        assert csms.refused_logins == 0
        no_violations(csms)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("csms_side", ["wrong-password", "no-ocpp2.1"])
async def test_a_refused_login_or_subprotocol_is_left_and_tried_again(
    tmp_path: Path, broker: Mosquitto, csms_side: str
) -> None:
    if csms_side == "wrong-password":
        csms = RawCsms(IDENTITY, "another-password")
    else:
        csms = RawCsms(IDENTITY, PASSWORD, agree=False)
    async with station(tmp_path, broker, csms) as rig:
        if csms_side == "wrong-password":
            await csms.wait_for(lambda: csms.refused_logins >= 2, what="the login tried again")
            assert not csms.connections
        else:
            await csms.wait_for(
                lambda: len(csms.connections) >= 2 and csms.connections[0].closed.is_set(),
                what="the connection left and tried again",
            )
            assert csms.connections[0].subprotocol is None
            # Left: not a single message on a connection without ocpp2.1.
            assert not [f for f in csms.frames if f.direction == "in"], csms.frames[:3]
        assert not rig.task.done()


@pytest.mark.timeout(20)
@pytest.mark.parametrize("first", ["Pending", "Rejected"])
async def test_a_boot_not_accepted_is_sent_again_and_nothing_else_meanwhile(
    tmp_path: Path, broker: Mosquitto, first: str
) -> None:
    csms = RawCsms(IDENTITY, PASSWORD, boot=[(first, 1), ("Accepted", 300)])
    async with station(tmp_path, broker, csms):
        await csms.wait_for(lambda: len(csms.of("BootNotification")) >= 1, what="a boot")
        # Meanwhile the CSMS's requests are still answered.
        got = await csms.result(
            "GetVariables",
            {"getVariableData": [{
                "component": {"name": "ChargingStation"}, "variable": {"name": "Identity"},
            }]},
        )  # fmt: skip
        assert got["getVariableResult"][0]["attributeStatus"] == "Accepted"
        await booted(csms)
        calls = csms.calls()
        boots = [i for i, c in enumerate(calls) if c.action == "BootNotification"]
        assert boots == [0, 1], [c.action for c in calls]
        # Sent again after the answer's interval (1 s), not before.
        assert calls[1].at - calls[0].at >= 0.9
        assert [c.action for c in calls[2:6]] == ["StatusNotification"] * 4
        no_violations(csms)


# --- 2. RequestBatterySwap ------------------------------------------------------------------


@pytest.mark.timeout(20)
async def test_request_battery_swap_accepted_and_rejected_with_the_documented_reasons(
    tmp_path: Path, broker: Mosquitto
) -> None:
    # Two pack types and no [ocpp].default_pack_type: a request must name its pack type.
    csms = RawCsms(IDENTITY, PASSWORD)
    async with station(tmp_path, broker, csms, pack_types=("STD75", "LR100")) as rig:
        await booted(csms)
        await ready(rig)
        seq = rig.station.sequencer
        assert seq is not None
        wrong: list[str] = []

        async def rejected(payload: dict[str, Any], reason: str) -> None:
            answer = await csms.result("RequestBatterySwap", payload)
            info = answer.get("statusInfo", {})
            if answer["status"] != "Rejected" or info.get("reasonCode") != reason:
                wrong.append(f"{payload['idToken']}: expected Rejected {reason}, got {answer}")
            if reason == "Refused" and not info.get("additionalInfo"):
                wrong.append(f"{payload['idToken']}: Refused without the reason: {answer}")

        # The vehicle id: 1-16 printable ASCII characters.
        await rejected(swap_request("ABCDEFGHIJKLMNOPQ", 1, "STD75"), "InvalidIdToken")
        await rejected(swap_request("", 2, "STD75"), "InvalidIdToken")
        await rejected(swap_request("EV-\u00e9", 3, "STD75"), "InvalidIdToken")
        await rejected(swap_request("EV\t1", 4, "STD75"), "InvalidIdToken")
        # No PackType entry, no default, two pack types: UnknownPackType.
        await rejected(swap_request("EV-1", 5), "UnknownPackType")
        # A pack type the station does not have, or has no pack of: the station's reason.
        await rejected(swap_request("EV-1", 6, "XYZ99"), "Refused")
        await rejected(swap_request("EV-1", 7, "LR100"), "Refused")
        # None of these changed anything.
        assert seq.ctx.state == "idle"

        # The pack type named in additionalInfo (among other entries): Accepted, a swap runs.
        payload = swap_request("EV-1", 42, "STD75")
        payload["idToken"]["additionalInfo"].insert(
            0, {"additionalIdToken": "fleet-7", "type": "FleetId"}
        )
        answer = await csms.result("RequestBatterySwap", payload)
        assert answer["status"] == "Accepted", answer
        assert seq.ctx.state != "idle"
        # A second request while it runs: Busy.
        await rejected(swap_request("EV-2", 43, "STD75"), "Busy")
        assert not wrong, "\n".join(wrong)
        no_violations(csms)


def unknown(event: dict[str, Any], data: dict[str, Any]) -> list[str]:
    """What the station does not know of a pack: named in customData (the pack's or the event's)."""
    named: list[str] = []
    for where in (data, event):
        named += where.get("customData", {}).get("unknown", [])
    return named


# --- 3. BatterySwap events --------------------------------------------------------------------


@pytest.mark.timeout(20)
async def test_battery_swap_events_in_order_with_the_request_and_ocpp_spelling(
    tmp_path: Path, broker: Mosquitto
) -> None:
    csms = RawCsms(IDENTITY, PASSWORD)
    async with station(tmp_path, broker, csms) as rig:
        await booted(csms)
        await ready(rig)
        answer = await csms.result("RequestBatterySwap", swap_request("EV-1", 42, "STD75"))
        assert answer["status"] == "Accepted", answer
        seq = rig.station.sequencer
        assert seq is not None
        swap_id = seq.ctx.swap_id
        rig.sim.arrive("EV-1", serial="PK-OLD", soc=12.0)
        await csms.wait_for(
            lambda: len(csms.of("BatterySwap")) >= 2, timeout=15, what="two BatterySwap events"
        )
        await until(lambda: seq.ctx.state == "idle", timeout=10, what="the swap over")
        # After the swap: slot 1 (PK-A out) empty, slot 4 (PK-OLD in) occupied.
        await csms.wait_for(
            lambda: statuses(csms).get(1) == "Available" and statuses(csms).get(4) == "Occupied",
            what="slot 1 Available, slot 4 Occupied",
        )
        events = csms.of("BatterySwap")
        assert [e["eventType"] for e in events] == ["BatteryIn", "BatteryOut"]
        for e in events:
            assert e["requestId"] == 42
            # idToken and type only: additionalInfo is not kept.
            assert e["idToken"] == {"idToken": "EV-1", "type": "Central"}, e["idToken"]
            assert len(e["batteryData"]) == 1
            data = e["batteryData"][0]
            assert set(data) >= {"evseId", "serialNumber", "soC", "soH"}, data
            for key in ("soC", "soH"):
                assert 0 <= data[key] <= 100
                assert round(data[key], 1) == data[key], data  # one decimal
                assert (data[key] == 0) == (key in unknown(e, data)), e
        battery_in, battery_out = (e["batteryData"][0] for e in events)
        assert (battery_in["evseId"], battery_in["serialNumber"]) == (4, "PK-OLD")
        assert battery_in["soC"] == pytest.approx(12.0, abs=1.0)
        assert battery_in["soH"] == pytest.approx(96.0)  # the simulated packs' SoH
        assert (battery_out["evseId"], battery_out["serialNumber"]) == (1, "PK-A")
        assert battery_out["soC"] == pytest.approx(95.0, abs=1.0)
        assert battery_out["soH"] == pytest.approx(96.0)
        # The wire itself: OCPP's spelling of BatteryDataType.
        wire = [
            f.data
            for f in csms.frames
            if f.direction == "in" and isinstance(f.data, str) and '"BatterySwap"' in f.data
        ]
        assert len(wire) == 2
        for text in wire:
            assert all(f'"{k}"' in text for k in ("evseId", "serialNumber", "soC", "soH"))
            assert '"SoC"' not in text and '"soh"' not in text and '"evse_id"' not in text
        # PK-A left slot 1: no transaction stays open there.
        await csms.wait_for(lambda: not open_transactions(csms, 1), what="slot 1's tx ended")
        no_violations(csms)
        # The docs: the request is kept with the swap, as the swap_started event's by.
        assert swap_id is not None
        record = await RecordStore(rig.station.journal).get(swap_id)
        assert record is not None and record.outcome == "completed"
        rows = await rig.station.journal.call(
            lambda c: c.execute("SELECT body FROM events WHERE kind = 'swap_started'").fetchall()
        )
        started = [json.loads(body) for (body,) in rows]
        assert [(e["swap_id"], e["by"]) for e in started] == [(swap_id, "ocpp:42:Central")]


@pytest.mark.timeout(20)
async def test_a_local_swap_aborted_before_the_car_is_battery_out_timeout(
    tmp_path: Path, broker: Mosquitto
) -> None:
    csms = RawCsms(IDENTITY, PASSWORD)
    async with station(tmp_path, broker, csms) as rig:
        await booted(csms)
        await ready(rig)
        seq = rig.station.sequencer
        assert seq is not None
        # Started at the station (as MQTT start_swap is), then aborted: the car never came.
        started = await seq.request("start_swap", vehicle_id="EV-7", pack_type="STD75")
        assert started.result is not None, started
        await seq.request("abort", reason="the car never came")
        await until(lambda: seq.ctx.state == "idle", what="the swap over")
        await csms.wait_for(lambda: bool(csms.of("BatterySwap")), what="a BatterySwap event")
        events = csms.of("BatterySwap")
        assert [e["eventType"] for e in events] == ["BatteryOutTimeout"], events
        event = events[0]
        # The docs: a local swap's requestId is its swap_started sequence number, negative.
        assert isinstance(event["requestId"], int) and event["requestId"] < 0, event
        assert event["idToken"] == {"idToken": "EV-7", "type": "Local"}, event
        data = event["batteryData"]
        assert len(data) == 1
        assert (data[0]["evseId"], data[0]["serialNumber"]) == (1, "PK-A"), data
        assert data[0]["soC"] == pytest.approx(95.0, abs=1.0), data
        assert (data[0]["soH"] == 0) == ("soH" in unknown(event, data[0])), event
        no_violations(csms)


# --- 4. TransactionEvent ----------------------------------------------------------------------


def transactions(csms: RawCsms) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for p in csms.of("TransactionEvent"):
        out.setdefault(p["transactionInfo"]["transactionId"], []).append(p)
    return out


def open_transactions(csms: RawCsms, evse: int) -> list[str]:
    return [
        tx
        for tx, events in transactions(csms).items()
        if events[0]["evse"]["id"] == evse and events[-1]["eventType"] != "Ended"
    ]


def meter(p: dict[str, Any], measurand: str) -> float | None:
    for mv in p.get("meterValue", []):
        for sv in mv["sampledValue"]:
            if sv.get("measurand", "Energy.Active.Import.Register") == measurand:
                return float(sv["value"])
    return None


@pytest.mark.timeout(20)
async def test_transaction_events_seqno_units_and_energy(tmp_path: Path, broker: Mosquitto) -> None:
    csms = RawCsms(IDENTITY, PASSWORD)
    async with station(tmp_path, broker, csms):
        await booted(csms)

        def metered3() -> int:
            return sum(
                1
                for events in transactions(csms).values()
                for p in events
                if p["evse"]["id"] == 3 and meter(p, "Energy.Active.Import.Register") is not None
            )

        await csms.wait_for(lambda: metered3() >= 3, timeout=15, what="3 metered events, slot 3")
        txs = transactions(csms)
        assert txs
        for tx, events in txs.items():
            assert [p["seqNo"] for p in events] == list(range(len(events))), tx
            first = events[0]
            assert first["eventType"] == "Started", first
            assert first["triggerReason"] == "ChargingStateChanged", first
            assert first["transactionInfo"].get("chargingState") == "Charging", first
            assert first["evse"]["connectorId"] == 1
            assert len({p["evse"]["id"] for p in events}) == 1, tx
            kinds = [p["eventType"] for p in events]
            assert "Started" not in kinds[1:], kinds
            assert "Ended" not in kinds[:-1], kinds
            for p in events[1:]:
                if p["eventType"] == "Updated":
                    assert p["triggerReason"] in {"ChargingStateChanged", "MeterValuePeriodic"}
                if p["eventType"] == "Ended":
                    pair = (p["triggerReason"], p["transactionInfo"].get("stoppedReason"))
                    assert pair in {
                        ("EVDeparted", "EVDisconnected"),
                        ("ChargingStateChanged", "SOCLimitReached"),
                    }, p
            for p in events:
                for mv in p.get("meterValue", []):
                    for sv in mv["sampledValue"]:
                        measurand = sv.get("measurand", "Energy.Active.Import.Register")
                        assert measurand in UNITS, sv
                        assert sv.get("unitOfMeasure", {}).get("unit") == UNITS[measurand], sv
                        if measurand == "SoC":
                            assert 0 <= sv["value"] <= 100, sv
            energies = [e for p in events if (e := meter(p, "Energy.Active.Import.Register"))]
            assert energies == sorted(energies), (tx, energies)
            stamps = [datetime.fromisoformat(p["timestamp"]) for p in events]
            assert stamps == sorted(stamps), (tx, stamps)
            assert not any(p.get("offline") for p in events), tx  # the CSMS was there
        slot3 = [events for events in txs.values() if events[0]["evse"]["id"] == 3]
        assert len(slot3) == 1
        energies = [e for p in slot3[0] if (e := meter(p, "Energy.Active.Import.Register"))]
        assert energies[-1] > energies[0], energies
        no_violations(csms)


# --- 5. bad input ----------------------------------------------------------------------------


def _deep(n: int) -> Any:
    out: Any = {}
    for _ in range(n):
        out = {"a": out}
    return out


def depth(value: Any) -> int:
    """JSON nesting: a container is one level more than its deepest member; a scalar none."""
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


def nested_call(mid: str, levels: int) -> str:
    """A valid GetVariables CALL nested `levels` deep (the frame's array counted), in customData."""
    payload: dict[str, Any] = {**GET_HEARTBEAT, "customData": {"vendorId": "org.test"}}
    inner = levels - 3  # the array, the payload, customData
    payload["customData"]["a"] = _deep(inner - 1)
    frame = [2, mid, "GetVariables", payload]
    assert depth(frame) == levels
    return json.dumps(frame)


def sized_call(mid: str, size: int, char: str = "x") -> str:
    """A Reset CALL (of a bad `type`) of exactly `size` UTF-8 bytes."""
    head, tail = json.dumps([2, mid, "Reset", {"type": ""}], ensure_ascii=False).split('""')
    room = size - len((head + '""' + tail).encode())
    width = len(char.encode())
    assert room % width == 0, (room, width)
    text = f'{head}"{char * (room // width)}"{tail}'
    assert len(text.encode()) == size
    return text


GET_HEARTBEAT = {
    "getVariableData": [
        {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}}
    ]
}

# (what is sent, the id the answer goes to, the CALLERROR code), per row of "Errors and bad input".
BAD_INPUT: list[tuple[str | bytes, str, str]] = [
    # not UTF-8 JSON, not an array, a bad shape: RpcFrameworkError
    (b"\xff\xfe not UTF-8", "-1", "RpcFrameworkError"),
    ("this is not json", "-1", "RpcFrameworkError"),
    ('{"not": "an array"}', "-1", "RpcFrameworkError"),
    ('[2, "shape-1", "GetVariables"]', "shape-1", "RpcFrameworkError"),
    # over max_message_bytes (65536), or nested over 24 levels: FormatViolation, unread
    (sized_call("big-1", 65_537), "-1", "FormatViolation"),
    (sized_call("big-2", 65_537, "\u00e9"), "-1", "FormatViolation"),  # bytes, not characters
    (sized_call("big-3", 2 * 65_536), "-1", "FormatViolation"),  # not over twice: answered
    (nested_call("deep-1", 25), "-1", "FormatViolation"),
    (json.dumps([2, "deep-2", "Reset", _deep(30)]), "-1", "FormatViolation"),
    # at the limits: read (the Reset's bad type is the schema's FormatViolation, to its id)
    (sized_call("edge-1", 65_536), "edge-1", "FormatViolation"),
    # a message type other than 2, 3, 4
    (json.dumps([5, "m5", "GenericError", "x", {}]), "m5", "MessageTypeNotSupported"),
    (json.dumps([6, "m6", "Heartbeat", {}]), "m6", "MessageTypeNotSupported"),
    (json.dumps([9, "m9", "Heartbeat", {}]), "m9", "MessageTypeNotSupported"),
    # a payload that breaks the official schema: the schema's code
    (
        json.dumps([2, "tc-1", "RequestBatterySwap",
                    {"requestId": "x", "idToken": {"idToken": "EV-1", "type": "Central"}}]),
        "tc-1", "TypeConstraintViolation",
    ),
    (json.dumps([2, "pe-1", "RequestBatterySwap", {"requestId": 1}]), "pe-1", "ProtocolError"),
    (json.dumps([2, "fv-1", "Reset", {"type": "Sometimes"}]), "fv-1", "FormatViolation"),
    # an action OCPP 2.1 has that the station does not serve; one it does not have
    (
        json.dumps([2, "ns-1", "TriggerMessage", {"requestedMessage": "Heartbeat"}]),
        "ns-1", "NotSupported",
    ),
    (
        json.dumps([2, "ns-2", "BootNotification", {"reason": "PowerUp",
                    "chargingStation": {"model": "m", "vendorName": "v"}}]),
        "ns-2", "NotSupported",
    ),
    (json.dumps([2, "ni-1", "NoSuchAction", {}]), "ni-1", "NotImplemented"),
]  # fmt: skip

# Answers to no request of the station's, well-formed or broken: dropped, nobody to answer.
NOBODY = [
    json.dumps([3, "nobody-1", {}]),
    json.dumps([4, "nobody-2", "GenericError", "", {}]),
    json.dumps([3, "nobody-3"]),
    json.dumps([4, "nobody-4", "GenericError"]),
    json.dumps([3]),
    json.dumps([4]),
]


@pytest.mark.timeout(20)
async def test_bad_input_answered_as_documented_and_a_huge_frame_reconnects(
    tmp_path: Path, broker: Mosquitto
) -> None:
    csms = RawCsms(IDENTITY, PASSWORD)
    async with station(tmp_path, broker, csms) as rig:
        await booted(csms)
        wrong: list[str] = []
        for data, to, code in BAD_INPUT:
            before = len(csms.replies_to(to))
            await csms.send_raw(data)
            try:
                answer = await csms.reply(to, after=before, timeout=2)
            except AssertionError:
                mid = json.loads(data)[1] if isinstance(data, str) else None
                wrong.append(
                    f"{data[:40]!r}: expected {code} to {to}, got none in 2 s; "
                    f"to {mid}: {csms.replies_to(mid) if isinstance(mid, str) else None}"
                )
                continue
            if answer[0] != 4 or answer[2] != code:
                wrong.append(f"{data[:50]!r}: expected {code} to {to}, got {answer}")
        # The frame nested exactly 24 levels is read and served.
        await csms.send_raw(nested_call("deep-24", 24))
        answer = await csms.reply("deep-24")
        if answer[0] != 3:
            wrong.append(f"a frame nested 24 levels: expected a CALLRESULT, got {answer}")
        # Answers to nobody: no answer (a round trip after each shows none came).
        for data in NOBODY:
            replies = len(csms.replies)
            await csms.send_raw(data)
            got = await csms.result("GetVariables", GET_HEARTBEAT)
            assert got["getVariableResult"][0]["attributeStatus"] == "Accepted"
            extra = [r for r in csms.replies[replies:] if not str(r[1]).startswith("csms-")]
            if extra:
                wrong.append(f"{data}: expected no answer, got {extra}")
        # GetLog: FTP is refused (UnsupportedScheme); HTTP(S) is accepted with its filename.
        log = await csms.result(
            "GetLog",
            {"logType": "DiagnosticsLog", "requestId": 1,
             "log": {"remoteLocation": "ftp://127.0.0.1:9/logs"}},
        )  # fmt: skip
        if log != {"status": "Rejected", "statusInfo": {
            "reasonCode": "UnsupportedScheme", "additionalInfo": "an http:// or https:// URL (PUT)"
        }}:  # fmt: skip
            wrong.append(f"GetLog to ftp: expected Rejected UnsupportedScheme, got {log}")
        log = await csms.result(
            "GetLog",
            {"logType": "SecurityLog", "requestId": 2,
             "log": {"remoteLocation": "https://127.0.0.1:9/logs/"}},
        )  # fmt: skip
        if log.get("statusInfo", {}).get("reasonCode") != "UnsupportedLogType":
            wrong.append(f"GetLog SecurityLog: expected Rejected UnsupportedLogType, got {log}")
        seq = rig.station.sequencer
        assert seq is not None and seq.ctx.state == "idle"
        assert len(csms.connections) == 1, "a frame of at most twice the limit closed the link"

        # A frame over twice max_message_bytes: the connection closes, the station reconnects,
        # does not boot again, and sends every status anew.
        await csms.send_raw(json.dumps([2, "huge-1", "Reset", {"type": "x" * 2_000_000}]))
        await csms.wait_for(csms.connections[0].closed.is_set, what="the connection closed")
        await csms.wait_connections(2)
        await booted(csms, conn=2)
        second = csms.calls(conn=2)
        assert [c.action for c in second[:4]] == ["StatusNotification"] * 4
        await csms.wait_for(lambda: statuses(csms, conn=2) == SLOTS, what=f"statuses {SLOTS}")
        assert len(csms.of("BootNotification")) == 1, "a reconnection booted again"
        assert not csms.replies_to("huge-1")
        got = await csms.result("GetVariables", GET_HEARTBEAT)
        assert got["getVariableResult"][0]["attributeStatus"] == "Accepted"
        assert not rig.task.done()
        problems = wrong + [f"violation: {v[:300]}" for v in csms.violations]
        assert not problems, "\n".join(problems)


# --- 6. the device model ---------------------------------------------------------------------


def var(component: str, variable: str, evse: int | None = None, **extra: Any) -> dict[str, Any]:
    comp: dict[str, Any] = {"name": component}
    if evse is not None:
        comp["evse"] = {"id": evse}
    return {"component": comp, "variable": {"name": variable}, **extra}


def keyed(results: list[dict[str, Any]]) -> dict[tuple[str, int | None, str], dict[str, Any]]:
    return {
        (r["component"]["name"], r["component"].get("evse", {}).get("id"), r["variable"]["name"]): r
        for r in results
    }


@pytest.mark.timeout(20)
async def test_get_and_set_variables_as_the_table_says(tmp_path: Path, broker: Mosquitto) -> None:
    csms = RawCsms(IDENTITY, PASSWORD, boot=[("Accepted", 120)])
    async with station(tmp_path, broker, csms):
        await booted(csms)
        got = await csms.result("GetVariables", {"getVariableData": [
            var("OCPPCommCtrlr", "HeartbeatInterval"),
            var("SampledDataCtrlr", "TxUpdatedInterval"),
            var("ChargingStation", "VendorName"),
            var("ChargingStation", "Model"),
            var("ChargingStation", "Identity"),
            var("EVSE", "Count"),
            var("EVSE", "AvailabilityState", evse=1),
            var("EVSE", "AvailabilityState", evse=4),
            var("SmartChargingCtrlr", "RateUnit"),
            var("BatterySwapCtrlr", "DispenseOrder"),
            var("BatterySwapCtrlr", "MinDispenseSoC"),
            var("BatterySwapCtrlr", "PackTypes"),
            var("NoSuchCtrlr", "HeartbeatInterval"),
            var("OCPPCommCtrlr", "NoSuchVariable"),
            var("EVSE", "AvailabilityState", evse=9),
        ]})  # fmt: skip
        r = keyed(got["getVariableResult"])
        assert len(r) == 15

        def value(component: str, variable: str, evse: int | None = None) -> str:
            result = r[(component, evse, variable)]
            assert result["attributeStatus"] == "Accepted", result
            out: str = result["attributeValue"]
            return out

        # The Boot's interval is the HeartbeatInterval; the config's meter_interval_s the other.
        assert int(value("OCPPCommCtrlr", "HeartbeatInterval")) == 120
        assert int(value("SampledDataCtrlr", "TxUpdatedInterval")) == 1
        assert value("ChargingStation", "VendorName") == "swapstation"
        assert value("ChargingStation", "Model") == "swap station"
        assert value("ChargingStation", "Identity") == IDENTITY
        assert value("EVSE", "Count") == "4"
        assert value("EVSE", "AvailabilityState", 1) == "Occupied"
        assert value("EVSE", "AvailabilityState", 4) == "Available"
        assert value("SmartChargingCtrlr", "RateUnit") == "W"
        assert value("BatterySwapCtrlr", "DispenseOrder") == "HighestSoC,HighestSoH,CoolestFirst"
        assert float(value("BatterySwapCtrlr", "MinDispenseSoC")) == 80.0
        assert value("BatterySwapCtrlr", "PackTypes").split(",") == ["STD75"]
        assert r[("NoSuchCtrlr", None, "HeartbeatInterval")]["attributeStatus"] == (
            "UnknownComponent"
        )
        assert r[("OCPPCommCtrlr", None, "NoSuchVariable")]["attributeStatus"] == (
            "UnknownVariable"
        )
        got = await csms.result("GetVariables", {"getVariableData": [
            var("OCPPCommCtrlr", "HeartbeatInterval", attributeType="Target"),
        ]})  # fmt: skip
        assert got["getVariableResult"][0]["attributeStatus"] == "NotSupportedAttributeType"

        # Writes that are refused change nothing.
        refused = [
            (var("OCPPCommCtrlr", "HeartbeatInterval", attributeValue="0"), "InvalidValue"),
            (var("OCPPCommCtrlr", "HeartbeatInterval", attributeValue="86401"), "InvalidValue"),
            (var("OCPPCommCtrlr", "HeartbeatInterval", attributeValue="often"), "InvalidValue"),
            (var("SampledDataCtrlr", "TxUpdatedInterval", attributeValue="3601"), "InvalidValue"),
            (var("ChargingStation", "VendorName", attributeValue="acme"), "ReadOnly"),
            (var("EVSE", "Count", attributeValue="9"), "ReadOnly"),
            (var("BatterySwapCtrlr", "MinDispenseSoC", attributeValue="50"), "ReadOnly"),
        ]
        for data, reason in refused:
            got = await csms.result("SetVariables", {"setVariableData": [data]})
            result = got["setVariableResult"][0]
            assert result["attributeStatus"] == "Rejected", (data, result)
            assert result.get("attributeStatusInfo", {}).get("reasonCode") == reason, result
        got = await csms.result("SetVariables", {"setVariableData": [
            var("NoSuchCtrlr", "HeartbeatInterval", attributeValue="10"),
            var("OCPPCommCtrlr", "NoSuchVariable", attributeValue="10"),
            var("OCPPCommCtrlr", "HeartbeatInterval", attributeValue="10", attributeType="Target"),
        ]})  # fmt: skip
        assert [x["attributeStatus"] for x in got["setVariableResult"]] == [
            "UnknownComponent", "UnknownVariable", "NotSupportedAttributeType",
        ]  # fmt: skip
        got = await csms.result("GetVariables", {"getVariableData": [
            var("OCPPCommCtrlr", "HeartbeatInterval"),
            var("SampledDataCtrlr", "TxUpdatedInterval"),
            var("ChargingStation", "VendorName"),
        ]})  # fmt: skip
        assert [x["attributeValue"] for x in got["getVariableResult"]] == [
            "120", "1", "swapstation",
        ]  # fmt: skip

        # Accepted writes, at the limits of the ranges and within: read back, and a
        # HeartbeatInterval of 1 s brings Heartbeats.
        got = await csms.result("SetVariables", {"setVariableData": [
            var("OCPPCommCtrlr", "HeartbeatInterval", attributeValue="86400"),
            var("SampledDataCtrlr", "TxUpdatedInterval", attributeValue="3600"),
        ]})  # fmt: skip
        assert [x["attributeStatus"] for x in got["setVariableResult"]] == ["Accepted"] * 2
        beats = len(csms.of("Heartbeat"))
        got = await csms.result("SetVariables", {"setVariableData": [
            var("OCPPCommCtrlr", "HeartbeatInterval", attributeValue="1"),
            var("SampledDataCtrlr", "TxUpdatedInterval", attributeValue="5"),
        ]})  # fmt: skip
        assert [x["attributeStatus"] for x in got["setVariableResult"]] == ["Accepted"] * 2
        got = await csms.result("GetVariables", {"getVariableData": [
            var("OCPPCommCtrlr", "HeartbeatInterval"),
            var("SampledDataCtrlr", "TxUpdatedInterval"),
        ]})  # fmt: skip
        assert [x["attributeValue"] for x in got["getVariableResult"]] == ["1", "5"]
        await csms.wait_for(
            lambda: len(csms.of("Heartbeat")) >= beats + 2, timeout=5, what="Heartbeats each 1 s"
        )
        no_violations(csms)
        # EVSE 9 is no slot of this station: the component (EVSE, evse 9) is unknown.
        assert r[("EVSE", 9, "AvailabilityState")]["attributeStatus"] == "UnknownComponent"
