"""What the CSMS may ask of the station, each request answered (docs/ocpp.md).

Every request is checked against its official OCPP 2.1 schema first (an answer of
`FormatViolation`, `TypeConstraintViolation`, ... otherwise), then read into a typed model of
the fields we use; an action we do not serve is `NotSupported` (a 2.1 action) or
`NotImplemented` (no such action). Nothing here waits on the connection: a swap request waits
on the sequencer's queue like any other command, in this request's own task.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from http.client import HTTPException
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from ocpp.v21.enums import Action
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError
from websockets.exceptions import ConnectionClosed

from controller.charging.gridcmds import GridCommands
from controller.errors import (
    BusyError,
    OcppCallRefusedError,
    OcppFrameError,
    RefusedError,
    UploadRefusedError,
)
from controller.ocpp import logs, wire
from controller.ocpp.device import evse_status
from controller.ocpp.profiles import PURPOSES, Held, StationProfiles
from controller.ocpp.swaps import REQUEST_ID_MAX, by_of
from controller.swap.requests import StartSwap
from controller.swap.sequencer import Sequencer
from drivers import clock

if TYPE_CHECKING:
    from controller.ocpp.client import OcppClient

_log = logging.getLogger(__name__)

KNOWN_ACTIONS = frozenset(a.value for a in Action)
VEHICLE_RE = re.compile(r"^[\x20-\x7e]{1,16}$")
PACK_TYPE_INFO = "PackType"  # idToken.additionalInfo[].type naming the pack type
IDLE_CHECK_S = 0.5
MAX_LIMIT_W = 100_000_000.0  # set_power_limit's 100 000 kW
MAX_SCHEDULE_S = 365 * 86_400
MAX_LOG_RETRIES = 5
MAX_LOG_PAUSE_S = 300.0


class _In(BaseModel):
    """The fields we read of a request the schema has passed; the rest is ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class _AdditionalInfo(_In):
    additionalIdToken: str  # noqa: N815 - OCPP's names
    type: str


class _IdToken(_In):
    idToken: str  # noqa: N815
    type: str
    additionalInfo: list[_AdditionalInfo] = Field(default_factory=list)  # noqa: N815


class _RequestBatterySwap(_In):
    idToken: _IdToken  # noqa: N815
    requestId: int  # noqa: N815


class _Period(_In):
    startPeriod: int  # noqa: N815
    limit: float | None = None


class _Schedule(_In):
    startSchedule: AwareDatetime | None = None  # noqa: N815
    duration: int | None = None
    chargingRateUnit: Literal["W", "A"]  # noqa: N815
    chargingSchedulePeriod: list[_Period]  # noqa: N815


class _Profile(_In):
    id: int
    stackLevel: int  # noqa: N815
    chargingProfilePurpose: str  # noqa: N815
    chargingProfileKind: str  # noqa: N815
    validFrom: AwareDatetime | None = None  # noqa: N815
    validTo: AwareDatetime | None = None  # noqa: N815
    chargingSchedule: list[_Schedule]  # noqa: N815


class _ClearCriteria(_In):
    evseId: int | None = None  # noqa: N815
    chargingProfilePurpose: str | None = None  # noqa: N815
    stackLevel: int | None = None  # noqa: N815


class _ClearChargingProfile(_In):
    chargingProfileId: int | None = None  # noqa: N815
    chargingProfileCriteria: _ClearCriteria | None = None  # noqa: N815


class _SetChargingProfile(_In):
    evseId: int  # noqa: N815
    chargingProfile: _Profile  # noqa: N815


class _Component(_In):
    name: str
    evse: dict[str, Any] | None = None


class _Variable(_In):
    name: str


class _GetData(_In):
    component: _Component
    variable: _Variable
    attributeType: str = "Actual"  # noqa: N815


class _SetData(_GetData):
    attributeValue: str  # noqa: N815


class _LogParameters(_In):
    remoteLocation: str  # noqa: N815
    oldestTimestamp: AwareDatetime | None = None  # noqa: N815
    latestTimestamp: AwareDatetime | None = None  # noqa: N815


class _GetLog(_In):
    logType: str  # noqa: N815
    requestId: int  # noqa: N815
    log: _LogParameters
    retries: int | None = None
    retryInterval: int | None = None  # noqa: N815


class _Reset(_In):
    type: str
    evseId: int | None = None  # noqa: N815


def _status(status: str, reason: str | None = None, info: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"status": status}
    if reason is not None:
        out["statusInfo"] = {"reasonCode": reason[:20]}
        if info:
            out["statusInfo"]["additionalInfo"] = info[:1024]
    return out


class CsmsCalls:
    """Answers the CSMS's requests."""

    def __init__(
        self,
        client: OcppClient,
        *,
        sequencer: Sequencer | None,
        grid: GridCommands,
        restart: Callable[[str], None],
    ) -> None:
        self.client = client
        self.sequencer = sequencer
        self.grid = grid
        self.restart = restart
        self.profiles = StationProfiles(grid, client.journal)
        self._reset_task: asyncio.Task[None] | None = None
        self._log_task: asyncio.Task[None] | None = None
        self._uploading = False
        self._serve: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
            "RequestBatterySwap": self.request_battery_swap,
            "SetChargingProfile": self.set_charging_profile,
            "ClearChargingProfile": self.clear_charging_profile,
            "GetVariables": self.get_variables,
            "SetVariables": self.set_variables,
            "Reset": self.reset,
            "GetLog": self.get_log,
        }

    async def answer(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        """The answer to a request; `OcppFrameError` for a CALLERROR."""
        serve = self._serve.get(action)
        if serve is None:
            if action in KNOWN_ACTIONS:
                raise OcppFrameError("NotSupported", f"{action} is not supported here")
            raise OcppFrameError("NotImplemented", f"no such action: {action[:60]}")
        await asyncio.to_thread(wire.check_request, action, payload)
        out = await serve(payload)
        wire.check_response(action, out)
        return out

    # --- the swap -----------------------------------------------------------------------------

    async def request_battery_swap(  # noqa: PLR0911 - one return per answer
        self, payload: dict[str, Any]
    ) -> dict[str, Any]:
        """`RequestBatterySwap`: `start_swap` for the idToken's vehicle; the requestId follows."""
        request = _RequestBatterySwap.model_validate(payload)
        token = request.idToken
        if not 0 <= request.requestId <= REQUEST_ID_MAX:
            # (Negative ones are the station's own swaps': swaps.py.)
            return _status("Rejected", "InvalidValue", f"requestId: 0..{REQUEST_ID_MAX}")
        if self.sequencer is None:
            return _status("Rejected", "NoSwapRobot", "this station runs its racks only")
        if not VEHICLE_RE.match(token.idToken):
            return _status(
                "Rejected", "InvalidIdToken",
                "the idToken is the vehicle id here: 1-16 printable ASCII characters",
            )  # fmt: skip
        pack_type = self._pack_type(token)
        if pack_type is None:
            return _status(
                "Rejected", "UnknownPackType",
                f"name the pack type in idToken.additionalInfo (type {PACK_TYPE_INFO!r})",
            )  # fmt: skip
        try:
            start = StartSwap(
                vehicle_id=token.idToken,
                pack_type=pack_type,
                by=by_of(request.requestId, token.type),
            )
            outcome = await self.sequencer.submit(start)
        except ValidationError as exc:
            return _status("Rejected", "InvalidValue", str(exc.errors()[0]["msg"]))
        except BusyError as exc:
            return _status("Rejected", "Busy", str(exc))
        except RefusedError as exc:
            return _status("Rejected", "Refused", str(exc))
        _log.info("OCPP: swap requested (requestId %d): %s", request.requestId, outcome.message)
        return _status("Accepted")

    def _pack_type(self, token: _IdToken) -> str | None:
        for info in token.additionalInfo:
            if info.type == PACK_TYPE_INFO:
                return info.additionalIdToken
        config = self.client.config
        if self.client.cfg.default_pack_type:
            return self.client.cfg.default_pack_type
        types = list(config.power.pack_types)
        return types[0] if len(types) == 1 else None

    # --- smart charging -------------------------------------------------------------------------

    async def set_charging_profile(  # noqa: PLR0911 - one return per answer
        self, payload: dict[str, Any]
    ) -> dict[str, Any]:
        """A station-wide profile (EVSE 0) becomes (part of) the `ocpp` run-time power limit."""
        request = _SetChargingProfile.model_validate(payload)
        profile = request.chargingProfile
        if request.evseId != 0 or profile.chargingProfilePurpose not in PURPOSES:
            # (ChargingStationExternalConstraints is an external system's, never the CSMS's.)
            return _status(
                "Rejected", "UnsupportedPurpose",
                "a station-wide limit only: evseId 0, ChargingStationMaxProfile",
            )  # fmt: skip
        if profile.chargingProfileKind not in {"Absolute", "Relative"}:
            return _status("Rejected", "UnsupportedKind", "Absolute or Relative profiles only")
        schedule = profile.chargingSchedule[0]
        if schedule.chargingRateUnit != "W":
            return _status("Rejected", "UnsupportedRateUnit", "limits in W only (a DC station)")
        periods = sorted(schedule.chargingSchedulePeriod, key=lambda p: p.startPeriod)
        if any(p.limit is None or not 0 <= p.limit <= MAX_LIMIT_W for p in periods):
            return _status(
                "Rejected", "InvalidSchedule", f"every period needs a limit of 0..{MAX_LIMIT_W:g} W"
            )  # fmt: skip
        if any(not 0 <= p.startPeriod <= MAX_SCHEDULE_S for p in periods) or not (
            0 <= (schedule.duration or 0) <= MAX_SCHEDULE_S
        ):
            return _status(
                "Rejected", "InvalidSchedule", "startPeriod and duration: 0..31536000 s"
            )  # fmt: skip
        now = clock.wall()
        start = now
        if profile.chargingProfileKind == "Absolute" and schedule.startSchedule is not None:
            start = schedule.startSchedule.timestamp()
        ends = [start + schedule.duration] if schedule.duration else []
        ends += [profile.validTo.timestamp()] if profile.validTo else []
        end = min(ends) if ends else None
        if end is not None and end <= now:
            return _status("Rejected", "InvalidSchedule", "the profile has already ended")
        steps = [(start + p.startPeriod, float(p.limit or 0.0)) for p in periods]
        if profile.validFrom is not None:
            # Nothing of it is in force before validFrom: a period that began earlier starts then.
            valid = profile.validFrom.timestamp()
            steps = [(max(at, valid), w) for at, w in steps]
            steps = [
                s for i, s in enumerate(steps) if i + 1 == len(steps) or steps[i + 1][0] > s[0]
            ]
        held = Held(profile.id, profile.chargingProfilePurpose, profile.stackLevel,
                    tuple(steps), end)  # fmt: skip
        # What is in force now applies before the answer; the rest in its time.
        try:
            await self.profiles.replace(held)
        except (RefusedError, ValidationError) as exc:
            return _status("Rejected", "InvalidSchedule", f"not applied: {exc}")
        return _status("Accepted")

    async def clear_charging_profile(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Drop the held profiles that match the request (id, or evse 0, purpose, stack level)."""
        request = _ClearChargingProfile.model_validate(payload)
        criteria = request.chargingProfileCriteria
        matching = []
        for purpose, held in self.profiles.held.items():
            if request.chargingProfileId is not None:
                if held.id == request.chargingProfileId:
                    matching.append(purpose)
                continue
            if criteria is not None and (
                (criteria.evseId not in (None, 0))
                or (criteria.chargingProfilePurpose not in (None, purpose))
                or (criteria.stackLevel not in (None, held.stack_level))
            ):
                continue
            matching.append(purpose)
        if not matching:
            if not self.profiles.held:
                await self.profiles.lift()  # an `ocpp` limit nobody holds (another CSMS's)
            return _status("Unknown")
        await self.profiles.clear(matching)
        return _status("Accepted")

    def close(self) -> None:
        """Stop the tasks of our own (the daemon is done)."""
        self.profiles.close()
        for task in (self._reset_task, self._log_task):
            if task is not None:
                task.cancel()

    # --- the device model ---------------------------------------------------------------------

    async def get_variables(self, payload: dict[str, Any]) -> dict[str, Any]:
        """`GetVariables` over the device model (device.py)."""
        data = [_GetData.model_validate(d) for d in payload["getVariableData"]]
        return {"getVariableResult": [self._get(d) for d in data]}

    def _get(self, data: _GetData) -> dict[str, Any]:
        out: dict[str, Any] = {
            "component": data.component.model_dump(exclude_none=True),
            "variable": data.variable.model_dump(),
            "attributeType": data.attributeType,
        }
        if data.attributeType != "Actual":
            return {**out, "attributeStatus": "NotSupportedAttributeType"}
        value = self._value(data.component, data.variable.name)
        if value is None:
            return {**out, "attributeStatus": self._unknown(data.component)}
        return {**out, "attributeStatus": "Accepted", "attributeValue": value[:2500]}

    def _value(self, component: _Component, name: str) -> str | None:
        if component.name == "EVSE" and component.evse is not None:
            slot = self.client.slot_of.get(component.evse.get("id", -1))
            if name == "AvailabilityState" and slot is not None:
                return evse_status(self.client.control, slot, clock.monotonic())
            return None
        variable = self.client.variables.get((component.name, name))
        return variable.read() if variable is not None else None

    def _unknown(self, component: _Component) -> str:
        if component.name == "EVSE" and component.evse is not None:
            known = component.evse.get("id") in self.client.slot_of
            return "UnknownVariable" if known else "UnknownComponent"
        names = {c for c, _ in self.client.variables}
        return "UnknownVariable" if component.name in names else "UnknownComponent"

    async def set_variables(self, payload: dict[str, Any]) -> dict[str, Any]:
        """`SetVariables`: the heartbeat and meter intervals (in memory, until a restart)."""
        data = [_SetData.model_validate(d) for d in payload["setVariableData"]]
        results = []
        for d in data:
            out: dict[str, Any] = {
                "component": d.component.model_dump(exclude_none=True),
                "variable": d.variable.model_dump(),
                "attributeType": d.attributeType,
            }
            variable = self.client.variables.get((d.component.name, d.variable.name))
            if variable is None:
                out["attributeStatus"] = self._unknown(d.component)
            elif d.attributeType != "Actual":
                out["attributeStatus"] = "NotSupportedAttributeType"
            elif variable.write is None:
                out["attributeStatus"] = "Rejected"
                out["attributeStatusInfo"] = {"reasonCode": "ReadOnly"}
            else:
                why = variable.write(d.attributeValue)
                out["attributeStatus"] = "Accepted" if why is None else "Rejected"
                if why is not None:
                    out["attributeStatusInfo"] = {"reasonCode": "InvalidValue",
                                                  "additionalInfo": why}  # fmt: skip
            results.append(out)
        self.client.wake()
        return {"setVariableResult": results}

    # --- reset and logs -------------------------------------------------------------------------

    async def reset(self, payload: dict[str, Any]) -> dict[str, Any]:
        """An orderly restart, never in the middle of a swap: `Scheduled` until it is idle."""
        request = _Reset.model_validate(payload)
        if request.evseId is not None:
            return _status("Rejected", "UnsupportedEvse", "the station restarts as a whole")
        if self._reset_task is not None:
            return _status("Scheduled")
        if self.sequencer is not None:
            # From now on no swap starts; one already running ends first.
            self.sequencer.handlers.no_new_swaps = "a restart is pending (the CSMS's Reset)"
        busy = self._busy()
        self._reset_task = asyncio.create_task(self._restart_when_idle(request.type))
        return _status("Scheduled" if busy else "Accepted")

    def _busy(self) -> bool:
        seq = self.sequencer
        return seq is not None and seq.ctx.active

    async def _restart_when_idle(self, kind: str) -> None:
        try:
            await self._wait_idle_and_restart(kind)
        except Exception:  # noqa: BLE001 - swaps must not stay refused for a failed reset
            _log.exception("OCPP: Reset failed; restarting all the same")
            self.restart(f"OCPP Reset ({kind})")

    async def _wait_idle_and_restart(self, kind: str) -> None:
        while True:
            while self._busy():  # noqa: ASYNC110 - the sequencer has no idle event; twice a second
                await asyncio.sleep(IDLE_CHECK_S)
            await asyncio.sleep(IDLE_CHECK_S)  # the answer goes out first
            if not self._busy():  # (a start_swap that ran meanwhile is refused, but look)
                break
        try:
            await self.client.note_reset()
        except Exception:  # noqa: BLE001 - the boot will say PowerUp; the restart goes on
            _log.exception("OCPP: the Reset could not be noted for the next boot")
        _log.warning("OCPP: Reset (%s): restarting between swaps", kind)
        self.restart(f"OCPP Reset ({kind})")

    async def get_log(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Upload the daemon's recent log (`DiagnosticsLog`) with an HTTP(S) PUT."""
        request = _GetLog.model_validate(payload)
        location = request.log.remoteLocation
        if request.logType != "DiagnosticsLog":
            return _status("Rejected", "UnsupportedLogType", "DiagnosticsLog only")
        parts = urlsplit(location)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            return _status("Rejected", "UnsupportedScheme", "an http:// or https:// URL (PUT)")
        try:
            await asyncio.to_thread(logs.check_host, location, self.client.cfg.log_upload_hosts)
        except UploadRefusedError as exc:
            return _status("Rejected", "ForbiddenLocation", str(exc))
        oldest, latest = request.log.oldestTimestamp, request.log.latestTimestamp
        body = self.client.recent_log.text(
            oldest.timestamp() if oldest else None, latest.timestamp() if latest else None
        )
        if not body:
            return {"status": "Accepted"}  # no filename: no logging information in the range
        filename = f"{self.client.identity}-{request.requestId}.log"
        url = location + filename if location.endswith("/") else location
        status = "Accepted"
        if self._log_task is not None and self._uploading:
            self._log_task.cancel()
            status = "AcceptedCanceled"
        retries = min(request.retries if request.retries is not None else 2, MAX_LOG_RETRIES)
        pause = min(max(request.retryInterval or 30, 1), MAX_LOG_PAUSE_S)
        self._log_task = asyncio.create_task(
            self._upload(request.requestId, url, body, retries, pause), name="ocpp-getlog"
        )
        return {"status": status, "filename": filename}

    async def _upload(
        self, request_id: int, url: str, body: bytes, retries: int, pause: float
    ) -> None:
        self._uploading = True
        try:
            outcome = await self._put_log(request_id, url, body, retries, pause)
        finally:
            self._uploading = False
        await self._log_status(outcome, request_id)

    async def _put_log(
        self, request_id: int, url: str, body: bytes, retries: int, pause: float
    ) -> str:
        await self._log_status("Uploading", request_id)
        for attempt in range(retries + 1):
            try:
                await logs.put(
                    url,
                    body,
                    self.client.cfg.log_upload_timeout_s,
                    self.client.cfg.log_upload_hosts,
                )
            except (OSError, ValueError, HTTPException, UploadRefusedError) as exc:
                _log.warning("OCPP: log upload %d, attempt %d: %s", request_id, attempt + 1, exc)
                if attempt < retries:
                    await asyncio.sleep(pause)
                continue
            _log.info("OCPP: log uploaded (%d B) for request %d", len(body), request_id)
            return "Uploaded"
        return "UploadFailure"

    async def _log_status(self, status: str, request_id: int) -> None:
        if self.client.state != "accepted":
            _log.info("OCPP: LogStatusNotification %s not sent: the boot is not accepted", status)
            return
        try:
            await self.client.call(
                "LogStatusNotification", {"status": status, "requestId": request_id}
            )
        except (OcppCallRefusedError, TimeoutError, ConnectionClosed) as exc:
            _log.info("OCPP: LogStatusNotification %s not delivered: %s", status, exc)
