"""`[ocpp]`: the station as an OCPP 2.1 Charging Station towards an operator's CSMS."""

from __future__ import annotations

import re
from typing import Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from controller.config.base import ConfigPath, Seconds, Section

# OCPP 2.1 Part 4 (JSON over WebSockets): the identity is the URL's last segment, and the
# basic-auth user name; printable, at most 48, no colon (basic auth splits on it).
IDENTITY_RE = re.compile(r"^[A-Za-z0-9*\-_=+|@.]{1,48}$")


class OcppConfig(Section):
    """The CSMS connection, its security profile, and what the station reports."""

    csms_url: str = Field(min_length=1, max_length=512)
    # The charging station's identity at the CSMS (default: the station id).
    identity: str | None = Field(default=None, pattern=IDENTITY_RE.pattern)
    # 1: basic auth over plain ws:// (a trusted network only); 2: TLS (wss://), the CSMS's
    # certificate checked against `ca_file` (or the system's store), and basic auth.
    security_profile: Literal[1, 2] = 2
    password_file: ConfigPath | None = None
    # From the environment (SWAPSTATION_OCPP__PASSWORD) or read from password_file; never
    # written in station.toml.
    password: SecretStr | None = None
    ca_file: ConfigPath | None = None
    reconnect_min_s: Seconds = 1.0
    reconnect_max_s: Seconds = 60.0
    connect_timeout_s: Seconds = 10.0
    call_timeout_s: Seconds = 30.0
    # A queued message the CSMS refuses (CALLERROR) or does not answer is tried this often in
    # all, `message_attempt_interval_s` x the attempts apart, then dropped (logged).
    message_attempts: int = Field(default=3, ge=1, le=100)
    message_attempt_interval_s: Seconds = 10.0
    # Authorize of a station-started swap, as a whole (the MQTT commands wait behind it).
    authorize_timeout_s: Seconds = 5.0
    # Until the CSMS says otherwise (BootNotification's interval, or SetVariables).
    heartbeat_s: int = Field(default=300, ge=1, le=86_400)
    # A charging transaction's meter values: every this many seconds (SampledDataTxUpdatedInterval).
    meter_interval_s: int = Field(default=60, ge=1, le=3600)
    # The pack type of a RequestBatterySwap whose idToken does not name one (additionalInfo of
    # type `PackType`); without it, a station of one pack type uses that one.
    default_pack_type: str | None = Field(default=None, min_length=1, max_length=32)
    # Ask the CSMS (Authorize) before a swap started at the station (MQTT, swapctl) runs.
    authorize_local_swaps: bool = False
    # While the CSMS is unreachable, a swap started at the station runs unauthorised (a
    # station that serves cars) or is refused.
    offline_swaps: Literal["allow", "refuse"] = "allow"
    # GetLog uploads go to public hosts only, and to these (e.g. a log server on the station's
    # own network); each upload is given this long in all.
    log_upload_hosts: list[str] = Field(default_factory=list, max_length=32)
    log_upload_timeout_s: Seconds = 60.0
    # Incoming messages over this are answered with an error and not parsed.
    max_message_bytes: int = Field(default=65_536, ge=4096, le=1_048_576)
    vendor: str = Field(default="swapstation", min_length=1, max_length=50)
    model: str = Field(default="swap station", min_length=1, max_length=20)

    @field_validator("csms_url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in {"ws", "wss"} or not parts.hostname:
            raise ValueError("must be a ws:// or wss:// URL with a host")
        if parts.query or parts.fragment:
            raise ValueError("no query or fragment: the identity is appended to the path")
        return value

    @model_validator(mode="after")
    def _profile(self) -> Self:
        scheme = urlsplit(self.csms_url).scheme
        if self.security_profile == 2 and scheme != "wss":
            raise ValueError("security_profile 2 needs a wss:// csms_url (TLS)")
        if self.security_profile == 1 and scheme != "ws":
            raise ValueError("security_profile 1 is basic auth over ws://; use 2 for wss://")
        if self.security_profile == 1 and self.ca_file is not None:
            raise ValueError("ca_file is for security_profile 2 (TLS)")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        return self
