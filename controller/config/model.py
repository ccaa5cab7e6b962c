"""Station configuration: the typed model of `station.toml`.

Every section forbids unknown keys, so a typo is an error rather than a silently ignored
setting. Loading, environment overrides and error formatting live in `configload`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator

from controller.config.base import (
    NAME_RE,
    TOPIC_PREFIX_RE,
    ConfigPath,
    Name,
    NumbersNotBools,
    Seconds,
    Section,
    SerialDevice,
    SlotNumber,
    UnitId,
    admitted_types,
    is_number_type,
    unbool,
)
from controller.config.ocpp import OcppConfig
from controller.config.power import PackTypeConfig, PowerConfig

__all__ = [
    "NAME_RE",
    "NumbersNotBools",
    "PackTypeConfig",
    "PowerConfig",
    "admitted_types",
    "is_number_type",
    "unbool",
]


class TlsConfig(Section):
    """TLS towards the broker; without `ca_file` the system's CA store is used."""

    ca_file: ConfigPath | None = None
    cert_file: ConfigPath | None = None
    key_file: ConfigPath | None = Field(default=None, validate_default=True)

    @field_validator("key_file")
    @classmethod
    def _cert_and_key_together(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if (value is None) != (info.data.get("cert_file") is None):
            raise ValueError("cert_file and key_file go together: give both or neither")
        return value


class MqttConfig(Section):
    """Broker connection, identity and reconnection policy."""

    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=1883, ge=1, le=65535)
    client_id: str | None = Field(default=None, min_length=1, max_length=64)
    topic_prefix: str = Field(default="swapstation", pattern=TOPIC_PREFIX_RE.pattern)
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    username: str | None = None
    password_file: ConfigPath | None = None
    # Set from the environment (SWAPSTATION_MQTT__PASSWORD) or read from password_file;
    # never written in station.toml (configload refuses it there).
    password: SecretStr | None = None
    tls: TlsConfig | None = None
    reconnect_min_s: Seconds = 0.5
    reconnect_max_s: Seconds = 30.0
    connect_timeout_s: Seconds = 10.0

    @model_validator(mode="after")
    def _backoff_order(self) -> Self:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError(
                f"reconnect_max_s ({self.reconnect_max_s}) must be >= reconnect_min_s"
                f" ({self.reconnect_min_s})"
            )
        return self


class LoggingConfig(Section):
    """Log output: stderr, for journald."""

    format: Literal["text", "json"] = "text"
    level: Literal["debug", "info", "warning", "error"] = "info"


class StorageConfig(Section):
    """Where the journal (SQLite) lives."""

    dir: ConfigPath = Path("/var/lib/swapstation")


class SerialLine(Section):
    """An RS-485 / RS-232 line: a local port, or one behind a serial device server (a URL)."""

    device: SerialDevice
    baudrate: Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400] = 19200
    parity: Literal["N", "E", "O"] = "E"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8


class ModbusEndpoint(Section):
    """How to reach a Modbus device: TCP (host, port) or RTU (a serial line)."""

    transport: Literal["tcp", "rtu"]
    host: str | None = Field(default=None, validate_default=True)
    port: int = Field(default=502, ge=1, le=65535)
    serial: SerialLine | None = Field(default=None, validate_default=True)
    timeout_min_s: Seconds = 0.05
    timeout_max_s: Seconds = 1.0
    retries: int = Field(default=1, ge=0, le=5)
    offline_after: int = Field(default=3, ge=1, le=100)

    @field_validator("host")
    @classmethod
    def _host_for_tcp(cls, value: str | None, info: ValidationInfo) -> str | None:
        transport = info.data.get("transport")
        if transport == "tcp" and not value:
            raise ValueError('required when transport = "tcp"')
        if transport == "rtu" and value is not None:
            raise ValueError('not used when transport = "rtu" (the line is given in [serial])')
        return value

    @field_validator("serial")
    @classmethod
    def _serial_for_rtu(cls, value: SerialLine | None, info: ValidationInfo) -> SerialLine | None:
        transport = info.data.get("transport")
        if transport == "rtu" and value is None:
            raise ValueError('required when transport = "rtu" (device, baudrate, parity)')
        if transport == "tcp" and value is not None:
            raise ValueError('not used when transport = "tcp"')
        return value

    @model_validator(mode="after")
    def _timeout_order(self) -> Self:
        if self.timeout_max_s < self.timeout_min_s:
            raise ValueError(
                f"timeout_max_s ({self.timeout_max_s}) must be >= timeout_min_s"
                f" ({self.timeout_min_s})"
            )
        return self


class RackConfig(ModbusEndpoint):
    """A charger rack: the slots it serves and how to address each slot's charger."""

    name: Name
    profile: str = Field(default="simrack", min_length=1)
    unit_id: UnitId | None = None
    unit_ids: list[UnitId] | None = None
    slots: list[SlotNumber] = Field(min_length=1, max_length=256)
    poll_period_s: Seconds = 1.0
    stale_after_s: Seconds | None = Field(
        default=None,
        description="data older than this is stale; default 2 x poll_period_s, or one poll"
        " period plus the longest failing poll if that is longer",
    )
    heartbeat_timeout_s: Seconds = Field(
        default=5.0, description="a charger heartbeat unchanged this long makes the slot stale"
    )
    circuit: Name | None = Field(
        default=None, description="the power.circuits node it hangs on (needed when any is given)"
    )

    @property
    def stale_after(self) -> float:
        """Age beyond which a slot's data is stale.

        Two poll periods, unless one failing request (every attempt timing out, and on RTU
        the quiet time after each) takes longer than a period: then data would go stale on a
        healthy rack whenever a single charger on its line is silent.
        """
        if self.stale_after_s is not None:
            return self.stale_after_s
        attempt = self.timeout_max_s * (2 if self.transport == "rtu" else 1)
        failing = (self.retries + 1) * attempt
        return max(2 * self.poll_period_s, self.poll_period_s + failing)

    @field_validator("slots")
    @classmethod
    def _slots_unique(cls, value: list[int]) -> list[int]:
        dupes = sorted({s for s in value if value.count(s) > 1})
        if dupes:
            raise ValueError(f"slot numbers must be unique within a rack, repeated: {dupes}")
        return value

    @model_validator(mode="after")
    def _addressing(self) -> Self:
        if (self.unit_id is None) == (self.unit_ids is None):
            raise ValueError(
                "give exactly one of unit_id (one unit, a block per slot) or unit_ids"
                " (one unit id per slot)"
            )
        if self.unit_ids is not None and len(self.unit_ids) != len(self.slots):
            raise ValueError(
                f"unit_ids has {len(self.unit_ids)} entries but slots has {len(self.slots)}:"
                " one unit id per slot"
            )
        return self


class StationIoConfig(ModbusEndpoint):
    """The station PLC: vehicle, lift, door, E-stop inputs and lift outputs."""

    profile: str = Field(default="simplc", min_length=1)
    unit_id: UnitId = 1
    poll_period_s: Seconds = 0.1
    stale_after_s: Seconds | None = Field(
        default=None,
        description="inputs older than this are unknown (not safe); default 3 x poll_period_s,"
        " or one poll period plus the longest failing poll if that is longer",
    )
    heartbeat_timeout_s: Seconds = Field(
        default=1.0, description="a PLC heartbeat unchanged this long makes every input unknown"
    )

    @property
    def stale_after(self) -> float:
        """Age beyond which the PLC's inputs are unknown."""
        if self.stale_after_s is not None:
            return self.stale_after_s
        failing = (self.retries + 1) * self.timeout_max_s * (2 if self.transport == "rtu" else 1)
        return max(3 * self.poll_period_s, self.poll_period_s + failing)


class RobotCommandTimeouts(Section):
    """Completion timeout per robot command kind, in seconds."""

    home: Seconds = 60.0
    move: Seconds = 60.0
    unlock: Seconds = 30.0
    remove: Seconds = 30.0
    store: Seconds = 30.0
    fetch: Seconds = 30.0
    install: Seconds = 30.0
    lock: Seconds = 30.0
    reset: Seconds = 10.0
    status: Seconds = 2.0
    stop: Seconds = 1.0
    sync: Seconds = 2.0


class RobotConfig(Section):
    """The swap robot's serial link."""

    serial: SerialLine
    ack_timeout_s: Seconds = 0.25
    retries: int = Field(default=3, ge=0, le=10)
    heartbeat_timeout_s: Seconds = 3.0
    command_timeouts_s: RobotCommandTimeouts = RobotCommandTimeouts()


class SwapStepTimeouts(Section):
    """Longest time each step of a swap may take before it is a fault, in seconds."""

    waiting_for_vehicle: Seconds = 600.0
    positioned: Seconds = 120.0
    lifting: Seconds = 60.0
    removing: Seconds = 120.0
    storing: Seconds = 120.0
    fetching: Seconds = 120.0
    installing: Seconds = 120.0
    locking: Seconds = 60.0
    lowering: Seconds = 60.0
    releasing: Seconds = 300.0  # only warns: the vehicle is on the ground with a locked pack
    aborting: Seconds = 600.0


class SwapConfig(Section):
    """Swap sequencing policy."""

    min_dispense_soc: float = Field(default=90.0, ge=10.0, le=100.0)
    lock_torque_min_nm: float = Field(default=100.0, gt=0, le=1000)
    lock_torque_max_nm: float = Field(default=140.0, gt=0, le=1000)
    pack_detect_timeout_s: Seconds = Field(
        default=10.0,
        description="after a pack is stored, how long its charger may take to report it (its"
        " serial read from the BMS) before that is a mismatch",
    )
    step_timeouts_s: SwapStepTimeouts = SwapStepTimeouts()
    evaluate_every_s: float = Field(
        default=0.05,
        gt=0,
        le=1.0,
        description="the swap sequencer looks at the facts at least this often (data going"
        " stale, step timeouts, settle times); every station I/O poll and robot report makes it"
        " look at once too",
    )

    @model_validator(mode="after")
    def _torque_order(self) -> Self:
        if self.lock_torque_max_nm < self.lock_torque_min_nm:
            raise ValueError("lock_torque_max_nm must be >= lock_torque_min_nm")
        return self


class SupervisionConfig(Section):
    """Limits the controller enforces on every slot (in addition to the chargers' own)."""

    charge_temp_min_c: float = Field(default=0.0, ge=-30, le=20)
    charge_temp_max_c: float = Field(default=45.0, ge=20, le=60)
    temp_hysteresis_c: float = Field(default=1.0, ge=0, le=10)
    over_temp_c: float = Field(default=55.0, ge=30, le=90)
    over_voltage_margin_v: float = Field(default=2.0, ge=0, le=50)
    over_current_margin_a: float = Field(default=5.0, ge=0, le=100)
    debounce_s: Seconds = 2.0
    fast_rise_c_per_min: float = Field(
        default=2.0, gt=0, le=100_000, description="scale with the speed of a simulated station"
    )
    fast_rise_window_s: Seconds = 30.0


class ChargingConfig(Section):
    """What the controller asks of the chargers."""

    max_current_a: float = Field(default=150.0, gt=0, le=600)
    min_on_s: float = Field(
        default=30.0,
        ge=0.01,
        le=3600,
        description="the chargers' contactors: once switched on, a charger is not switched off"
        " to share power before this (a stop for a cause is never delayed)",
    )
    min_off_s: float = Field(
        default=30.0,
        ge=0.01,
        le=3600,
        description="the chargers' contactors: once off, a charger is not switched on again"
        " before this (the safety supervisor refuses it; also after a restart)",
    )


class DeadbandsConfig(Section):
    """Smallest change of a value that is worth a new slot message."""

    soc: float = Field(default=0.5, ge=0)
    voltage_v: float = Field(default=1.0, ge=0)
    current_a: float = Field(default=0.5, ge=0)
    power_w: float = Field(default=500.0, ge=0)
    temp_c: float = Field(default=0.5, ge=0)
    energy_wh: float = Field(default=100.0, ge=0)


class PublishConfig(Section):
    """Slot state on MQTT: on change beyond the deadbands, and a periodic full refresh."""

    slot_refresh_s: Seconds = 60.0
    deadbands: DeadbandsConfig = DeadbandsConfig()


class CommandsConfig(Section):
    """Remote commands over MQTT (`<root>/cmd/<name>`)."""

    require_expiry: bool = Field(
        default=False,
        description="refuse a command that carries neither an MQTT v5 Message Expiry Interval"
        " nor an in-band expires_at (a stale command can then never run)",
    )
    max_payload_bytes: int = Field(default=4096, ge=256, le=65536)
    remember_ids_s: float = Field(
        default=7 * 24 * 3600.0,
        ge=60.0,
        le=366 * 24 * 3600.0,
        description="how long a command id is remembered: a repeat within it is not run again",
    )


class StationConfig(Section):
    """The whole of `station.toml`."""

    station_id: Name
    mqtt: MqttConfig = MqttConfig()
    logging: LoggingConfig = LoggingConfig()
    storage: StorageConfig = StorageConfig()
    profiles_dir: ConfigPath = Field(
        default=Path("profiles"),
        validate_default=True,
        description="folder of register profiles; relative to the config file",
    )
    racks: list[RackConfig] = Field(default_factory=list, max_length=64)
    station_io: StationIoConfig | None = None
    robot: RobotConfig | None = None
    swap: SwapConfig = SwapConfig()
    supervision: SupervisionConfig = SupervisionConfig()
    charging: ChargingConfig = ChargingConfig()
    power: PowerConfig = PowerConfig()
    publish: PublishConfig = PublishConfig()
    commands: CommandsConfig = CommandsConfig()
    ocpp: OcppConfig | None = None

    @property
    def topic_root(self) -> str:
        """MQTT topic under which everything of this station is published."""
        return f"{self.mqtt.topic_prefix}/{self.station_id}"

    @property
    def client_id(self) -> str:
        """MQTT client id: configured, or derived from the station id."""
        return self.mqtt.client_id or f"swapstation-{self.station_id}"

    @property
    def slot_count(self) -> int:
        """Number of battery slots over all racks."""
        return sum(len(r.slots) for r in self.racks)
