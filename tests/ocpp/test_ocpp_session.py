"""OCPP 2.1 end to end: the daemon against a CSMS built on the `ocpp` package's server side.

Real websocket on loopback, real broker, simulated racks, robot and PLC (tests/rig.py). The
CSMS (tests/peers/csms.py) validates every request the station sends against the official
schemas, as the library does.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import logging
import os
import socket
import sys
import threading
from pathlib import Path
from typing import Any, ClassVar

import pytest
from ocpp.exceptions import OCPPError
from ocpp.v21 import call

from controller.store.journal import Journal
from controller.store.records import RecordStore
from simstation.broker import Mosquitto
from simstation.charger import SimPack
from simstation.station import SimRackSpec
from tests.ocpp.conftest import OcppPki
from tests.peers.csms import Csms
from tests.rig import Rig, running, until
from tests.support import REPO

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(90)]

SPEED = 200.0
PASSWORD = "csms-secret-1"


def rack() -> SimRackSpec:
    packs = {
        1: SimPack("PK-A", soc=95.0),
        2: SimPack("PK-B", soc=85.0),
        3: SimPack("PK-C", soc=40.0),
    }
    return SimRackSpec("r1", [1, 2, 3, 4], packs=packs, poll_period_s=0.05)


def sections(csms: Csms, extra: str = "") -> str:
    return (
        "[swap]\nmin_dispense_soc = 80\n"
        f'[ocpp]\ncsms_url = "{csms.url}"\nidentity = "t1"\nsecurity_profile = 1\n'
        'default_pack_type = "STD75"\nmeter_interval_s = 1\nreconnect_min_s = 0.1\n'
        f"reconnect_max_s = 0.5\ncall_timeout_s = 5\n{extra}"
    )


def station(
    path: Path, broker: Mosquitto, config: str, env: dict[str, str]
) -> contextlib.AbstractAsyncContextManager[Rig]:
    """The daemon with `[ocpp]` and its password, against the simulated station (robot, PLC)."""
    return running(path, broker, [rack()], speed=SPEED, sections=config, environ=env,
                   robot=True, plc=True)  # fmt: skip


def environ(password: str = PASSWORD) -> dict[str, str]:
    return {"SWAPSTATION_OCPP__PASSWORD": password}


def statuses(csms: Csms) -> dict[int, str]:
    out: dict[int, str] = {}
    for p in csms.of("StatusNotification"):
        out[p["evseId"]] = p["connectorStatus"]
    return out


def swap_events(csms: Csms) -> list[dict[str, Any]]:
    return csms.of("BatterySwap")


def tx_events(csms: Csms, evse: int) -> list[dict[str, Any]]:
    return [p for p in csms.of("TransactionEvent") if p.get("evse", {}).get("id") == evse]


def energy(p: dict[str, Any]) -> float | None:
    for mv in p.get("meterValue", []):
        for sv in mv["sampledValue"]:
            if sv.get("measurand") == "Energy.Active.Import.Register":
                return float(sv["value"])
    return None


async def boot(rig: Rig, csms: Csms) -> None:
    await csms.wait_for(lambda: len(statuses(csms)) == 4, what="four EVSE statuses")
    assert csms.of("BootNotification")
    assert rig.station.ocpp is not None and rig.station.ocpp.state == "accepted"


async def test_boot_statuses_swap_transaction_profile_and_bad_input(
    tmp_path: Path, broker: Mosquitto
) -> None:
    csms = Csms("t1", PASSWORD)
    await csms.start()
    async with station(tmp_path, broker, sections(csms), environ()) as rig:
        await boot(rig, csms)
        # Boot: the library checked it against the schema; the station says who it is.
        boot_msg = csms.of("BootNotification")[0]
        assert boot_msg["chargingStation"]["vendorName"] == "swapstation"
        # (A slot whose data is not fresh yet is Unavailable first: unknown is not available.)
        expected = {1: "Occupied", 2: "Occupied", 3: "Occupied", 4: "Available"}
        await csms.wait_for(lambda: statuses(csms) == expected, what=f"statuses {expected}")

        # A dock-charging transaction on slot 3 (PK-C at 40 %), its energy increasing.
        await csms.wait_for(
            lambda: len([p for p in tx_events(csms, 3) if energy(p) is not None]) >= 3,
            timeout=20, what="three metered transaction events of slot 3",
        )  # fmt: skip
        events3 = tx_events(csms, 3)
        assert events3[0]["eventType"] == "Started"
        assert events3[0]["transactionInfo"]["chargingState"] == "Charging"
        assert [p["seqNo"] for p in events3] == list(range(len(events3)))
        assert len({p["transactionInfo"]["transactionId"] for p in events3}) == 1
        energies = [e for e in map(energy, events3) if e is not None]
        assert energies == sorted(energies) and energies[-1] > energies[0], energies

        # A remote swap: RequestBatterySwap -> start_swap, then BatteryIn and BatteryOut.
        seq = rig.station.sequencer
        assert seq is not None
        await until(lambda: not seq.blocking, what="station ready")
        answer = await csms.call(
            call.RequestBatterySwap(id_token={"id_token": "EV-1", "type": "Central"}, request_id=42)
        )
        assert answer.status == "Accepted"
        assert seq.ctx.reserved_serial == "PK-A"
        swap_id = seq.ctx.swap_id
        rig.sim.arrive("EV-1", serial="PK-OLD", soc=12.0)
        # Calls that arrive during the swap are answered, and hold nothing up.
        await until(lambda: seq.ctx.state not in {"authorised", "waiting_for_vehicle"},
                    what="the swap under way")  # fmt: skip
        busy = await csms.call(
            call.RequestBatterySwap(id_token={"id_token": "EV-2", "type": "Central"}, request_id=43)
        )
        assert busy.status == "Rejected" and busy.status_info["reason_code"] == "Busy"
        order = await csms.call(call.GetVariables(get_variable_data=[
            {"component": {"name": "BatterySwapCtrlr"}, "variable": {"name": "DispenseOrder"}}
        ]))  # fmt: skip
        assert order.get_variable_result[0]["attribute_value"].startswith("HighestSoC")
        assert seq.ctx.active
        await csms.wait_for(
            lambda: [p["eventType"] for p in swap_events(csms)] == ["BatteryIn", "BatteryOut"],
            timeout=30, what="BatteryIn then BatteryOut",
        )  # fmt: skip
        battery_in, battery_out = swap_events(csms)
        for p in (battery_in, battery_out):
            assert p["requestId"] == 42
            assert p["idToken"] == {"idToken": "EV-1", "type": "Central"}
        await until(lambda: seq.ctx.state == "idle", timeout=15, what="swap done")
        record = await RecordStore(rig.station.journal).get(swap_id)
        assert record is not None and record.outcome == "completed"
        assert record.pack_out is not None and record.pack_in is not None
        data_in, data_out = battery_in["batteryData"][0], battery_out["batteryData"][0]
        assert (data_in["evseId"], data_in["serialNumber"]) == (record.slot_out, "PK-OLD")
        assert data_in["soC"] == pytest.approx(record.pack_out.soc, abs=0.05)
        assert (data_out["evseId"], data_out["serialNumber"]) == (record.slot_in, "PK-A")
        assert data_out["soC"] == pytest.approx(record.pack_in.soc, abs=0.05)
        # What was on the wire is OCPP's spelling, not the library's dataclass spelling.
        wire = [f for f in csms.frames if '"BatterySwap"' in f]
        assert all('"soC"' in f and '"soH"' in f and '"SoC"' not in f for f in wire)

        # A station-wide charging profile lowers the power within one control step.
        control = rig.station.control
        profile = {
            "id": 7, "stack_level": 0,
            "charging_profile_purpose": "ChargingStationMaxProfile",
            "charging_profile_kind": "Relative",
            "charging_schedule": [{
                "id": 1, "charging_rate_unit": "W",
                "charging_schedule_period": [{"start_period": 0, "limit": 3000.0}],
            }],
        }  # fmt: skip
        answer = await csms.call(call.SetChargingProfile(evse_id=0, charging_profile=profile))
        assert answer.status == "Accepted"
        state = control.power_state()
        assert state.binding == "ocpp", state
        assert state.limit_kw == pytest.approx(3.0)
        stepped = control.last_step
        await until(lambda: control.last_step > stepped, what="one control step")
        assert control.allocation.budget_w is not None
        assert control.allocation.bound_w <= 3000.0 + 1e-6
        # ExternalConstraints are an external system's, never the CSMS's: refused.
        external = {**profile, "id": 8,
                    "charging_profile_purpose": "ChargingStationExternalConstraints"}  # fmt: skip
        answer = await csms.call(call.SetChargingProfile(evse_id=0, charging_profile=external))
        assert answer.status == "Rejected"
        assert answer.status_info["reason_code"] == "UnsupportedPurpose"
        # Another max profile replaces the first.
        lower = {**profile, "id": 9}
        lower["charging_schedule"] = [{
            "id": 2, "charging_rate_unit": "W",
            "charging_schedule_period": [{"start_period": 0, "limit": 2000.0}],
        }]  # fmt: skip
        answer = await csms.call(call.SetChargingProfile(evse_id=0, charging_profile=lower))
        assert answer.status == "Accepted"
        assert control.power_state().limit_kw == pytest.approx(2.0)
        answer = await csms.call(call.ClearChargingProfile(charging_profile_criteria={
            "charging_profile_purpose": "TxDefaultProfile", "evse_id": 3,
        }))  # fmt: skip
        assert answer.status == "Unknown"
        assert control.power_state().limit_kw == pytest.approx(2.0)
        answer = await csms.call(call.ClearChargingProfile(charging_profile_id=7))
        assert answer.status == "Unknown"  # replaced: no longer held
        answer = await csms.call(call.ClearChargingProfile())
        assert answer.status == "Accepted"
        assert control.power_state().binding != "ocpp"

        # Bad input: answered with an OCPP error, and nothing harmed.
        csms.answers.clear()
        await csms.send_raw('[2, "bad-1", "RequestBatterySwap", {"requestId": "x"}]')
        await csms.send_raw("this is not json")
        await csms.send_raw(json.dumps([2, "deep", "Reset", _deep(200)]))
        await csms.send_raw(json.dumps([2, "big", "Reset", {"type": "x" * 70_000}]))
        await csms.send_raw(json.dumps([2, "nope", "NoSuchAction", {}]))
        await csms.send_raw(json.dumps([2, "ns", "UpdateFirmware", {}]))
        await csms.wait_for(lambda: len(csms.answers) >= 6, what="six CALLERRORs")
        codes = {a[1]: a[2] for a in csms.answers}
        assert all(a[0] == 4 for a in csms.answers), csms.answers
        assert codes["bad-1"] == "TypeConstraintViolation"
        # Unread (not JSON, too deep, too big): no id to answer to, so "-1".
        unread = sorted(a[2] for a in csms.answers if a[1] == "-1")
        assert unread == ["FormatViolation", "FormatViolation", "RpcFrameworkError"]
        assert codes["nope"] == "NotImplemented"
        assert codes["ns"] == "NotSupported"
        assert seq.ctx.state == "idle"
        huge_id = await csms.call(call.RequestBatterySwap(
            id_token={"id_token": "EV-1", "type": "Central"}, request_id=2**64
        ))  # fmt: skip
        assert huge_id.status == "Rejected"
        assert huge_id.status_info["reason_code"] == "InvalidValue"
        with pytest.raises(OCPPError):
            await csms.call(call.Reset(type="Sometimes"))
        # Still answering, and the daemon runs.
        got = await csms.call(
            call.GetVariables(get_variable_data=[
                {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}}
            ])
        )  # fmt: skip
        assert got.get_variable_result[0]["attribute_status"] == "Accepted"
        assert not rig.task.done()
    await csms.stop()


def _deep(n: int) -> Any:
    out: Any = {}
    for _ in range(n):
        out = {"a": out}
    return out


async def test_a_csms_outage_mid_swap_loses_nothing_and_keeps_the_order(
    tmp_path: Path, broker: Mosquitto
) -> None:
    csms = Csms("t1", PASSWORD)
    await csms.start()
    async with station(tmp_path, broker, sections(csms), environ()) as rig:
        await boot(rig, csms)
        seq = rig.station.sequencer
        assert seq is not None
        await until(lambda: not seq.blocking, what="station ready")
        answer = await csms.call(
            call.RequestBatterySwap(id_token={"id_token": "EV-2", "type": "Central"}, request_id=7)
        )
        assert answer.status == "Accepted"
        # The CSMS goes away as the car drives in, for the whole swap (minutes of station time).
        await csms.stop()
        ocpp = rig.station.ocpp
        assert ocpp is not None
        await until(lambda: ocpp.state != "accepted", what="the station sees the CSMS gone")
        before = len(csms.seen)
        rig.sim.arrive("EV-2", serial="PK-OLD", soc=15.0)
        await until(lambda: seq.ctx.state == "idle", timeout=30, what="swap done offline")
        queued = await ocpp.queue.head(1000)
        actions = [m.action for m in queued]
        assert actions.count("BatterySwap") == 2, actions
        expected = [(m.action, m.payload) for m in queued]
        # Back: every queued message arrives, in the order it was queued.
        await csms.start()

        def after() -> list[tuple[str, dict[str, Any]]]:
            return [(s.action, s.payload) for s in csms.seen[before:]
                    if s.action in {"BatterySwap", "TransactionEvent"}]  # fmt: skip

        await csms.wait_for(lambda: len(after()) >= len(expected), timeout=30,
                            what="every queued message delivered")  # fmt: skip
        assert after()[: len(expected)] == expected
        swaps = [p["eventType"] for a, p in after() if a == "BatterySwap"]
        assert swaps == ["BatteryIn", "BatteryOut"]
        offline = [p for a, p in expected if a == "TransactionEvent"]
        assert offline and all(p.get("offline") for p in offline)
        assert csms.connections == 2


async def test_profile_2_tls_with_a_self_signed_ca_and_a_wrong_password(
    tmp_path: Path, broker: Mosquitto, ocpp_pki: OcppPki
) -> None:
    csms = Csms("t1", PASSWORD, tls=ocpp_pki.server_context())
    await csms.start()
    extra = f'ca_file = "{ocpp_pki.ca}"\n'
    tls_sections = sections(csms, extra).replace("security_profile = 1", "security_profile = 2")
    async with station(tmp_path / "good", broker, tls_sections, environ()) as rig:
        await boot(rig, csms)
        assert csms.frames and csms.refused_logins == 0
    async with station(tmp_path / "bad", broker, tls_sections, environ("wrong-password")) as rig:
        ocpp = rig.station.ocpp
        assert ocpp is not None
        await until(lambda: ocpp.state == "refused", what="the login refused")
        assert csms.refused_logins >= 1
        # The daemon runs on, on MQTT: a command is answered.
        env = {k: v for k, v in os.environ.items() if not k.startswith("SWAPSTATION_")}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "controller", "cmd", "--config", str(rig.config_path), "ping",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO,
            env={**env, **environ("wrong-password")},
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()
        assert "pong" in out.decode()
        assert not rig.task.done()
        assert ocpp.state == "refused"
    await csms.stop()


async def test_reset_waits_for_the_swap_then_restarts_and_boots_as_remote_reset(
    tmp_path: Path, broker: Mosquitto
) -> None:
    csms = Csms("t1", PASSWORD)
    await csms.start()
    async with station(tmp_path, broker, sections(csms), environ()) as rig:
        await boot(rig, csms)
        assert csms.of("BootNotification")[0]["reason"] == "PowerUp"
        seq = rig.station.sequencer
        assert seq is not None
        await until(lambda: not seq.blocking, what="station ready")
        answer = await csms.call(
            call.RequestBatterySwap(id_token={"id_token": "EV-3", "type": "Central"}, request_id=3)
        )
        assert answer.status == "Accepted"
        # A swap runs: the reset waits for it.
        answer = await csms.call(call.Reset(type="OnIdle"))
        assert answer.status == "Scheduled"
        rig.sim.arrive("EV-3", serial="PK-OLD", soc=20.0)
        async with asyncio.timeout(30):
            code = await asyncio.shield(rig.task)
        assert code == 75  # EX_TEMPFAIL: the unit's RestartForceExitStatus restarts it
        plc = rig.sim.plc
        assert plc is not None and [v.vehicle_id for v in plc.departed] == ["EV-3"]
        # The swap was over (completed) before the restart began.
        record = await _last_record(rig.station.config.storage.dir)
        assert record.vehicle_id == "EV-3" and record.outcome == "completed"
    # The next start boots as RemoteReset, once.
    async with station(tmp_path, broker, sections(csms), environ()) as rig:
        await csms.wait_for(lambda: len(csms.of("BootNotification")) == 2, what="the second boot")
        assert csms.of("BootNotification")[1]["reason"] == "RemoteReset"
        # Idle: accepted at once, and from then on no swap starts.
        answer = await csms.call(call.Reset(type="Immediate"))
        assert answer.status == "Accepted"
        late = await csms.call(
            call.RequestBatterySwap(id_token={"id_token": "EV-5", "type": "Central"}, request_id=5)
        )
        assert late.status == "Rejected"
        assert "a restart is pending" in late.status_info["additional_info"]
        async with asyncio.timeout(10):
            assert await asyncio.shield(rig.task) == 75
    await csms.stop()


async def _last_record(storage: Path) -> Any:
    journal = await Journal.open(storage, read_only=True)
    try:
        rows = await RecordStore(journal).last(1)
    finally:
        await journal.close()
    assert rows
    return rows[-1]


async def test_a_swap_started_at_the_station_asks_the_csms_first(
    tmp_path: Path, broker: Mosquitto
) -> None:
    csms = Csms("t1", PASSWORD, authorized={"EV-1"})
    await csms.start()
    extra = 'authorize_local_swaps = true\noffline_swaps = "refuse"\n'
    async with station(tmp_path, broker, sections(csms, extra), environ()) as rig:
        await boot(rig, csms)
        seq = rig.station.sequencer
        assert seq is not None
        await until(lambda: not seq.blocking, what="station ready")

        async def start_swap(vehicle: str, *extra: str) -> str:
            return await swapctl_cmd(
                "start_swap", f"vehicle_id={vehicle}", "pack_type=STD75", *extra
            )

        async def swapctl_cmd(*args: str) -> str:
            env = {k: v for k, v in os.environ.items() if not k.startswith("SWAPSTATION_")}
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "controller", "cmd", "--config", str(rig.config_path),
                *args,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO,
                env={**env, **environ()},
            )  # fmt: skip
            out, err = await asyncio.wait_for(proc.communicate(), 30)
            return out.decode() + err.decode()

        # Only the CSMS's requests carry an ocpp: by; on MQTT it is refused.
        forged = await start_swap("EV-1", "by=ocpp:42:Central")
        assert "invalid: by: 'ocpp:' is the station's own" in forged, forged
        # ... and the CSMS's power limit is its own too.
        forged = await swapctl_cmd("set_power_limit", "source=ocpp", "kw=5")
        assert "invalid: source: 'ocpp' is the CSMS's" in forged, forged
        refused = await start_swap("EV-9")
        assert "not authorised: the CSMS answered Invalid for EV-9" in refused, refused
        assert seq.ctx.vehicle_id != "EV-9"
        assert csms.of("Authorize")[-1]["idToken"] == {"idToken": "EV-9", "type": "Local"}
        accepted = await start_swap("EV-1")
        assert "accepted" in accepted, accepted
        assert seq.ctx.vehicle_id == "EV-1"
        await seq.request("abort", reason="test over")
        await until(lambda: not seq.ctx.active, what="swap cancelled")
        # The CSMS gone, offline_swaps = "refuse": a station swap is refused, saying why.
        await csms.stop()
        ocpp = rig.station.ocpp
        assert ocpp is not None
        await until(lambda: ocpp.state != "accepted", what="the CSMS gone")
        refused = await start_swap("EV-1")
        assert "the CSMS is not reachable" in refused, refused
        # The swap that was cancelled ended without its pack going out: BatteryOutTimeout.
        await until(lambda: bool(ocpp.swaps.translated), what="the abort translated")
        messages = await ocpp.queue.head(1000)
        sent = [p["eventType"] for p in csms.of("BatterySwap")]
        queued = [m.payload["eventType"] for m in messages if m.action == "BatterySwap"]
        assert sent + queued == ["BatteryOutTimeout"]


class _LogSink(http.server.BaseHTTPRequestHandler):
    """An HTTP server that takes PUTs (the CSMS's log location)."""

    got: ClassVar[dict[str, bytes]] = {}

    def do_PUT(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        type(self).got[self.path] = self.rfile.read(length)
        self.send_response(201)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        del format, args


async def test_get_log_uploads_the_recent_log_by_http_put(
    tmp_path: Path, broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)  # as the daemon logs (the tests' root logger is quieter)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _LogSink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    csms = Csms("t1", PASSWORD)
    await csms.start()
    stalled = socket.create_server(("127.0.0.1", 0))  # takes the connection, never answers
    extra = 'log_upload_hosts = ["127.0.0.1"]\nlog_upload_timeout_s = 1\n'
    try:
        async with station(tmp_path, broker, sections(csms, extra), environ()) as rig:
            await boot(rig, csms)
            where = f"http://127.0.0.1:{server.server_address[1]}/logs/"
            answer = await csms.call(call.GetLog(
                log={"remote_location": where}, log_type="DiagnosticsLog", request_id=5
            ))  # fmt: skip
            assert (answer.status, answer.filename) == ("Accepted", "t1-5.log")
            await csms.wait_for(
                lambda: [p["status"] for p in csms.of("LogStatusNotification")]
                == ["Uploading", "Uploaded"],
                what="the upload reported",
            )  # fmt: skip
            body = _LogSink.got["/logs/t1-5.log"].decode()
            assert "OCPP: boot accepted" in body
            assert PASSWORD not in body
            # FTP and other logs: refused, saying why.
            answer = await csms.call(call.GetLog(
                log={"remote_location": "ftp://127.0.0.1/x"}, log_type="DiagnosticsLog",
                request_id=6,
            ))  # fmt: skip
            assert answer.status == "Rejected"
            assert answer.status_info["reason_code"] == "UnsupportedScheme"
            # The station's own network is not a place to upload to, unless allowed.
            answer = await csms.call(call.GetLog(
                log={"remote_location": "http://10.20.30.40/x"}, log_type="DiagnosticsLog",
                request_id=8,
            ))  # fmt: skip
            assert answer.status == "Rejected"
            assert answer.status_info["reason_code"] == "ForbiddenLocation"
            # A server that never answers: the upload ends at its deadline.
            port = stalled.getsockname()[1]
            answer = await csms.call(call.GetLog(
                log={"remote_location": f"http://127.0.0.1:{port}/x"},
                log_type="DiagnosticsLog", request_id=9, retries=0,
            ))  # fmt: skip
            assert answer.status == "Accepted"
            await csms.wait_for(
                lambda: {"status": "UploadFailure", "requestId": 9}
                in csms.of("LogStatusNotification"),
                what="the stalled upload given up",
            )  # fmt: skip
            # An unreachable location: retried, then UploadFailure.
            answer = await csms.call(call.GetLog(
                log={"remote_location": "http://127.0.0.1:1/x"}, log_type="DiagnosticsLog",
                request_id=7, retries=1, retry_interval=1,
            ))  # fmt: skip
            assert answer.status == "Accepted"
            await csms.wait_for(
                lambda: any(p == {"status": "UploadFailure", "requestId": 7}
                            for p in csms.of("LogStatusNotification")),
                what="the failure reported",
            )  # fmt: skip
    finally:
        stalled.close()
        server.shutdown()
        server.server_close()
        await csms.stop()


async def test_a_refused_message_is_tried_again_then_dropped_and_the_rest_goes_on(
    tmp_path: Path, broker: Mosquitto
) -> None:
    csms = Csms("t1", PASSWORD)
    await csms.start()
    extra = "message_attempts = 3\nmessage_attempt_interval_s = 0.05\n"
    async with station(tmp_path, broker, sections(csms, extra), environ()) as rig:
        await boot(rig, csms)
        seq = rig.station.sequencer
        assert seq is not None
        await until(lambda: not seq.blocking, what="station ready")
        # BatteryIn: refused twice, taken the third time. BatteryOut: refused three times: dropped.
        csms.refuse_swaps = [True, True, False, True, True, True]
        answer = await csms.call(
            call.RequestBatterySwap(id_token={"id_token": "EV-4", "type": "Central"}, request_id=4)
        )
        assert answer.status == "Accepted"
        rig.sim.arrive("EV-4", serial="PK-OLD", soc=30.0)
        await until(lambda: seq.ctx.state == "idle", timeout=30, what="swap done")
        ocpp = rig.station.ocpp
        assert ocpp is not None
        await csms.wait_for(lambda: not csms.refuse_swaps, timeout=15, what="six BatterySwaps")
        sent = [p["eventType"] for p in csms.of("BatterySwap")]
        assert sent == ["BatteryIn"] * 3 + ["BatteryOut"] * 3
        # The queue went on: a later message (a status, a transaction event) is still delivered.
        await seq.request("set_slot", slot=3, enabled=False)
        await csms.wait_for(lambda: statuses(csms).get(3) == "Unavailable",
                            what="a later status delivered")  # fmt: skip
        assert await ocpp.queue.length() <= 1
        assert not rig.task.done()
    await csms.stop()


async def test_another_csms_does_not_get_the_first_one_s_backlog(
    tmp_path: Path, broker: Mosquitto
) -> None:
    gone = Csms("t1", PASSWORD)
    await gone.start()
    await gone.stop()  # its port, now closed: the station queues for it
    async with station(tmp_path, broker, sections(gone), environ()) as rig:
        ocpp = rig.station.ocpp
        assert ocpp is not None
        async with asyncio.timeout(10):  # polled, as until() does, for a journal read
            while await ocpp.queue.length() == 0:  # noqa: ASYNC110 - a journal read, polled
                await asyncio.sleep(0.01)
    csms = Csms("t1", PASSWORD)
    await csms.start()
    async with station(tmp_path, broker, sections(csms), environ()) as rig:
        await boot(rig, csms)
        await csms.wait_for(lambda: bool(tx_events(csms, 3)), what="slot 3's transaction")
        events = tx_events(csms, 3)
        assert events[0]["eventType"] == "Started" and events[0]["seqNo"] == 0
        assert not any(p.get("offline") for p in csms.of("TransactionEvent"))
    await csms.stop()


async def test_until_the_boot_is_accepted_the_csms_may_only_configure(
    tmp_path: Path, broker: Mosquitto
) -> None:
    csms = Csms("t1", PASSWORD, boot_status="Pending")
    await csms.start()
    async with station(tmp_path, broker, sections(csms), environ()) as rig:
        await csms.wait_for(lambda: bool(csms.of("BootNotification")), what="a boot")
        ocpp = rig.station.ocpp
        assert ocpp is not None and ocpp.state == "pending"
        got = await csms.call(call.GetVariables(get_variable_data=[
            {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}}
        ]))  # fmt: skip
        assert got.get_variable_result[0]["attribute_status"] == "Accepted"
        with pytest.raises(OCPPError) as refused:
            await csms.call(call.RequestBatterySwap(
                id_token={"id_token": "EV-1", "type": "Central"}, request_id=1
            ))  # fmt: skip
        assert "the boot is not accepted yet" in str(refused.value)
        assert not csms.of("StatusNotification")  # nothing else is sent meanwhile
        csms.boot_status = "Accepted"
        await boot(rig, csms)
        assert len(csms.of("BootNotification")) >= 2
    await csms.stop()
