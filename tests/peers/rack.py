"""A Modbus TCP charger rack in the ``simrack`` layout, written from docs/register-map.md alone.

This peer is deliberately independent of the controller and of its simulator: it knows only
the published register map, so a test that passes against it checks the controller against the
contract, not against a shared implementation.

Layout (profile ``simrack``): the rack is one Modbus unit; the slot at position ``i`` (0-based)
has its block at ``1000 + 32 * i + offset`` in both the input and the holding table; the rack
identity registers are input registers 0..14. Every other address below the end of the last
served block reads as 0; any request touching an address at or beyond
``1000 + 32 * served_slots`` is answered with exception 02 (illegal data address).

Values are encoded exactly as the map says: raw = engineering / scale, 32-bit values high word
first, strings two ASCII characters per register (high byte first, NUL padded).

The charger is naive on purpose: with a pack, ``charge_enable = 1`` and no fault it draws
``min(current_limit, charger_max_a)`` and ignores the BMS limits unless ``honour_bms`` is set.
Instantaneous values (current, power, status) follow every change at once; ``tick`` integrates
SoC and energy over time and advances the heartbeats.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

from pyModbusTCP.server import (  # type: ignore[import-untyped]
    DataBank,
    DataHandler,
    ModbusServer,
)

if TYPE_CHECKING:
    from types import TracebackType

_log = logging.getLogger(__name__)

BLOCK_BASE: Final = 1000
"""Address of slot 0's block in both tables."""
BLOCK_SIZE: Final = 32
"""Addresses per slot block."""
CAPACITY_AH: Final = 200.0
"""Capacity of every simulated pack, for the SoC integration."""

EXP_NONE: Final = 0
EXP_ILLEGAL_FUNCTION: Final = 1
EXP_DATA_ADDRESS: Final = 2
EXP_DATA_VALUE: Final = 3
EXP_DEVICE_FAILURE: Final = 4
EXP_GATEWAY_TARGET: Final = 0x0B

Kind = Literal["u16", "i16", "u32", "i32", "f32", "string"]
Table = Literal["input", "holding"]

_INT_FORMATS: Final[dict[str, tuple[str, int, int]]] = {
    "u16": (">H", 0, 0xFFFF),
    "i16": (">h", -0x8000, 0x7FFF),
    "u32": (">I", 0, 0xFFFF_FFFF),
    "i32": (">i", -0x8000_0000, 0x7FFF_FFFF),
}


@dataclass(frozen=True)
class Register:
    """One register of the map: where it is and how its value is encoded."""

    name: str
    address: int
    table: Table
    kind: Kind
    words: int
    scale: float = 1.0

    def encode(self, value: float | str) -> list[int]:
        """Raw words for an engineering value; ValueError (TypeError) if it cannot be encoded."""
        if self.kind == "string":
            if not isinstance(value, str):
                raise TypeError(f"{self.name}: a string register needs a str, not {value!r}")
            try:
                data = value.encode("ascii")
            except UnicodeEncodeError as exc:
                raise ValueError(f"{self.name}: {value!r} is not ASCII") from exc
            if len(data) > 2 * self.words:
                raise ValueError(f"{self.name}: {value!r} is longer than {2 * self.words} chars")
            data = data.ljust(2 * self.words, b"\0")
            return list(struct.unpack(f">{self.words}H", data))
        if isinstance(value, str):
            raise TypeError(f"{self.name}: a numeric register needs a number, not {value!r}")
        if self.kind == "f32":
            try:
                data = struct.pack(">f", float(value))
            except OverflowError as exc:
                raise ValueError(f"{self.name}: {value!r} does not fit a f32") from exc
            return list(struct.unpack(">2H", data))
        fmt, low, high = _INT_FORMATS[self.kind]
        raw = round(float(value) / self.scale)
        if not low <= raw <= high:
            raise ValueError(
                f"{self.name}: {value!r} (raw {raw}) does not fit a {self.kind}; use set_raw"
            )
        return list(struct.unpack(f">{self.words}H", struct.pack(fmt, raw)))

    def decode(self, words: Sequence[int]) -> float | str:
        """Engineering value of raw words (strings lose their NUL padding)."""
        data = struct.pack(f">{len(words)}H", *words)
        if self.kind == "string":
            return data.rstrip(b"\0").decode("ascii", errors="replace")
        if self.kind == "f32":
            return float(struct.unpack(">f", data)[0])
        raw = int(struct.unpack(_INT_FORMATS[self.kind][0], data)[0])
        return float(raw) if self.scale == 1.0 else round(raw * self.scale, 9)


def _regs(*regs: Register) -> dict[str, Register]:
    return {reg.name: reg for reg in regs}


SLOT_INPUTS: Final = _regs(
    Register("status", 0, "input", "u16", 1),
    Register("pack_present", 1, "input", "u16", 1),
    Register("pack_serial", 2, "input", "string", 8),
    Register("pack_type", 10, "input", "string", 4),
    Register("soc", 14, "input", "u16", 1, 0.1),
    Register("soh", 15, "input", "u16", 1, 0.1),
    Register("voltage", 16, "input", "u16", 1, 0.1),
    Register("current", 17, "input", "i32", 2, 0.001),
    Register("temp_max", 19, "input", "i16", 1, 0.1),
    Register("temp_min", 20, "input", "i16", 1, 0.1),
    Register("fault_code", 21, "input", "u16", 1),
    Register("energy_wh", 22, "input", "u32", 2),
    Register("power_w", 24, "input", "f32", 2),
    Register("bms_voltage_max", 26, "input", "u16", 1, 0.1),
    Register("bms_current_max", 27, "input", "u16", 1, 0.1),
    Register("heartbeat", 28, "input", "u16", 1),
)
"""The slot block's input registers (address = offset in the block)."""

SLOT_HOLDING: Final = _regs(
    Register("charge_enable", 0, "holding", "u16", 1),
    Register("current_limit", 1, "holding", "u16", 1, 0.1),
)
"""The slot block's holding registers (setpoints; address = offset in the block)."""

RACK_INPUTS: Final = _regs(
    Register("vendor", 0, "input", "string", 8),
    Register("model", 8, "input", "string", 4),
    Register("firmware", 12, "input", "u16", 1),
    Register("slot_count", 13, "input", "u16", 1),
    Register("rack_heartbeat", 14, "input", "u16", 1),
)
"""The rack identity registers (absolute input addresses)."""

STATUS_CODES: Final = {
    "empty": 0,
    "idle": 1,
    "charging": 2,
    "full": 3,
    "fault": 4,
    "disabled": 5,
}
"""Status name to the code served in the ``status`` register."""

_HOLDING_BY_OFFSET: Final = {reg.address: reg for reg in SLOT_HOLDING.values()}
_PINNED: Final = frozenset({"current", "power_w"})
"""Values the physics derives: set_value on them pins the served value instead."""


@dataclass(frozen=True)
class Write:
    """One setpoint write received from a client, with the engineering value it asked for.

    ``outcome`` is "stored", "clamped" (stored as ``clamp_limit_a``), "ignored" (answered OK,
    not stored), "refused" (answered with ``refuse_writes``) or "rejected" (exception 03).
    """

    at: float
    slot: int
    name: str
    value: float
    outcome: str = "stored"


def _blank_values() -> dict[str, float | str]:
    values: dict[str, float | str] = {
        name: ("" if reg.kind == "string" else 0.0) for name, reg in SLOT_INPUTS.items()
    }
    values["status"] = float(STATUS_CODES["empty"])
    return values


@dataclass
class _Slot:
    values: dict[str, float | str] = field(default_factory=_blank_values)
    raw: dict[str, list[int]] = field(default_factory=dict)
    forced_status: int | None = None
    enable: int = 0
    limit_raw: int = 0
    heartbeat_frozen: bool = False
    transitions: list[tuple[float, bool]] = field(default_factory=list)

    def num(self, name: str) -> float:
        value = self.values[name]
        assert not isinstance(value, str)
        return float(value)


class _Handler(DataHandler):  # type: ignore[misc]
    """Maps pyModbusTCP's table calls onto the rack (one unit, registers only, no bits)."""

    def __init__(self, rack: PeerRack) -> None:
        super().__init__(data_bank=DataBank(virtual_mode=True))
        self._rack = rack

    @staticmethod
    def _no_bits(*_args: Any) -> Any:
        return DataHandler.Return(exp_code=EXP_ILLEGAL_FUNCTION)

    read_coils = _no_bits
    read_d_inputs = _no_bits
    write_coils = _no_bits

    def _read(self, table: Table, address: int, count: int) -> Any:
        try:
            exp, data = self._rack.handle_read(table, address, count)
        except Exception:
            _log.exception("peer rack: read %s %d+%d failed", table, address, count)
            exp, data = EXP_DEVICE_FAILURE, None
        return DataHandler.Return(exp_code=exp, data=data)

    def read_h_regs(self, address: int, count: int, _srv_info: Any) -> Any:
        return self._read("holding", address, count)

    def read_i_regs(self, address: int, count: int, _srv_info: Any) -> Any:
        return self._read("input", address, count)

    def write_h_regs(self, address: int, words: list[int], _srv_info: Any) -> Any:
        try:
            exp = self._rack.handle_write(address, words)
        except Exception:
            _log.exception("peer rack: write %d+%d failed", address, len(words))
            exp = EXP_DEVICE_FAILURE
        return DataHandler.Return(exp_code=exp)


class _Service(ModbusServer.ModbusService):  # type: ignore[misc]
    """One client connection: pyModbusTCP's loop plus silence, delay and bookkeeping."""

    rack: PeerRack  # set on the per-server subclass built by _RackServer

    def setup(self) -> None:
        super().setup()
        self.rack.client_connected(self.request)

    def finish(self) -> None:
        self.rack.client_gone(self.request)
        super().finish()

    def handle(self) -> None:
        rack = self.rack
        session = ModbusServer.SessionData()
        try:
            while True:
                session.new_request()
                session.request.mbap.raw = self._recv_all(7)
                session.request.pdu.raw = self._recv_all(session.request.mbap.length - 1)
                if not rack.admit_request():
                    continue  # silent: drop it, keep the connection
                session.set_response_mbap()
                unit = rack.unit_id
                if unit is not None and session.request.mbap.unit_id != unit:
                    session.response.pdu.build_except(
                        session.request.pdu.func_code, EXP_GATEWAY_TARGET
                    )
                else:
                    self.server.engine(session)
                if not rack.reply_delay():
                    return
                self._send_all(session.response.raw)
        except (ModbusServer.Error, OSError) as exc:
            _log.debug("peer rack: connection ended: %r", exc)


class _RackServer(ModbusServer):  # type: ignore[misc]
    """pyModbusTCP's threaded server with the rack's handler and connection service."""

    def __init__(self, rack: PeerRack, host: str, port: int) -> None:
        super().__init__(host=host, port=port, no_block=True, data_hdl=_Handler(rack))
        self.ModbusService = type("_BoundService", (_Service,), {"rack": rack})

    def _serve(self) -> None:
        # as pyModbusTCP's, with a short poll interval so that stop() is quick
        try:
            self._evt_running.set()
            self._service.serve_forever(poll_interval=0.02)
        except Exception:
            _log.exception("peer rack: server loop failed")
            self._service.server_close()
        finally:
            self._evt_running.clear()

    def wait_running(self, timeout_s: float) -> bool:
        """Wait until the serving thread runs (stop() is a no-op before that)."""
        return bool(self._evt_running.wait(timeout_s))

    @property
    def bound_port(self) -> int:
        """The TCP port the listening socket is bound to."""
        return int(self._service.server_address[1])

    def join(self, timeout_s: float) -> None:
        """Wait for the serving thread to end."""
        if self._serve_th is not None:
            self._serve_th.join(timeout_s)


class PeerRack:
    """A charger rack (profile ``simrack``) served over Modbus TCP on 127.0.0.1.

    ``slot_count`` slots hold state; ``served_slots`` (default ``slot_count``) blocks answer on
    the wire and the ``slot_count`` register reports ``served_slots``. The fault-injection
    attributes (``delay_s``, ``silent``, ``clamp_limit_a``, ``ignore_limit_writes``,
    ``refuse_writes``, ``refuse_reads``, ``auto_off_when_full``, ``honour_bms``, ``unit_id``)
    may be changed at any time, also while serving.
    """

    def __init__(
        self,
        slot_count: int = 4,
        *,
        served_slots: int | None = None,
        charger_max_a: float = 150.0,
        vendor: str = "PEERRACK",
        model: str = "P4",
        firmware: int = 101,
        tick_period_s: float | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        served = slot_count if served_slots is None else served_slots
        if slot_count < 0 or served < 0 or BLOCK_BASE + BLOCK_SIZE * served > 0x10000:
            raise ValueError(f"bad slot counts: {slot_count}, served {served}")
        RACK_INPUTS["vendor"].encode(vendor)
        RACK_INPUTS["model"].encode(model)
        RACK_INPUTS["firmware"].encode(firmware)
        self.slot_count = slot_count
        """Slots the rack is built with (state is kept for max(slot_count, served_slots))."""
        self.charger_max_a = charger_max_a
        """Rating of every charger: the most current it draws, whatever the limit."""
        self.tick_period_s = tick_period_s
        """Period of the background ticker started by start(); None: manual ticks only."""
        self.host = host
        """Address to bind (127.0.0.1)."""

        # fault injection (plain attributes: each read by the server thread per request)
        self.delay_s: float = 0.0
        """Every reply is sent this long after the request was processed."""
        self.silent: bool = False
        """Requests are read and dropped without a reply; the connection stays open."""
        self.clamp_limit_a: float | None = None
        """A current_limit write above this is stored as this (answered normally)."""
        self.ignore_limit_writes: bool = False
        """current_limit writes are answered OK but not stored."""
        self.refuse_writes: int | None = None
        """Writes are answered with this exception code and not stored (None or 0: off)."""
        self.refuse_reads: int | None = None
        """Reads are answered with this exception code (None or 0: off)."""
        self.auto_off_when_full: bool = False
        """A charger whose pack is full clears its own charge_enable."""
        self.honour_bms: bool = False
        """The charger keeps to bms_current_max and stops at bms_voltage_max."""
        self.unit_id: int | None = None
        """If set, requests to another unit id are answered with exception 0x0B."""

        self._lock = threading.RLock()
        self._served_slots = served
        self._slots = [_Slot() for _ in range(max(slot_count, served))]
        self._rack_values: dict[str, float | str] = {
            "vendor": vendor,
            "model": model,
            "firmware": float(firmware),
            "rack_heartbeat": 0.0,
        }
        self._rack_raw: dict[str, list[int]] = {}
        self._rack_heartbeat_frozen = False
        self._writes: list[Write] = []
        self._requests = 0
        self._connections = 0
        self._ticks = 0
        self._server: _RackServer | None = None
        self._port = 0
        self._stopping = threading.Event()
        self._ticker: threading.Thread | None = None
        self._clients: dict[socket.socket, threading.Thread] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> int:
        """Serve on 127.0.0.1 (a free port; the same port again after a stop) and return it."""
        with self._lock:
            if self._server is not None:
                return self._port
            self._stopping.clear()
            server = _RackServer(self, self.host, self._port)
            try:
                server.start()
            except ModbusServer.NetworkError as exc:
                raise OSError(f"peer rack cannot listen on {self.host}:{self._port}") from exc
            if not server.wait_running(5.0):
                raise RuntimeError("peer rack: the server thread did not start")
            self._port = server.bound_port
            self._server = server
            if self.tick_period_s is not None:
                self._ticker = threading.Thread(
                    target=self._run_ticker,
                    args=(self.tick_period_s,),
                    name="peer-rack-ticker",
                    daemon=True,
                )
                self._ticker.start()
            return self._port

    def stop(self) -> None:
        """Stop serving, close every client connection and wait for the threads to end."""
        with self._lock:
            server, self._server = self._server, None
            ticker, self._ticker = self._ticker, None
        if server is None:
            return
        self._stopping.set()
        if ticker is not None:
            ticker.join(2.0)
        server.stop()
        self.drop_connections()
        server.join(2.0)
        with self._lock:
            threads = list(self._clients.values())
        for thread in threads:
            thread.join(2.0)

    def __enter__(self) -> PeerRack:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The TCP port (0 before the first start)."""
        return self._port

    @property
    def serving(self) -> bool:
        """Whether the rack is listening."""
        return self._server is not None

    def drop_connections(self) -> None:
        """Close every open client connection now (the listener keeps accepting)."""
        with self._lock:
            sockets = list(self._clients)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    @property
    def served_slots(self) -> int:
        """Slot blocks that answer on the wire (reported by the slot_count register)."""
        return self._served_slots

    @served_slots.setter
    def served_slots(self, count: int) -> None:
        if count < 0 or BLOCK_BASE + BLOCK_SIZE * count > 0x10000:
            raise ValueError(f"bad served_slots {count}")
        with self._lock:
            while len(self._slots) < count:
                self._slots.append(_Slot())
            self._served_slots = count

    # -- counters and observations -----------------------------------------------------------

    @property
    def requests(self) -> int:
        """Requests received (answered or dropped), over all connections."""
        with self._lock:
            return self._requests

    @property
    def connections(self) -> int:
        """Client connections accepted so far."""
        with self._lock:
            return self._connections

    @property
    def open_connections(self) -> int:
        """Client connections open now."""
        with self._lock:
            return len(self._clients)

    @property
    def ticks(self) -> int:
        """Calls of tick() so far (manual or by the background ticker)."""
        with self._lock:
            return self._ticks

    @property
    def writes(self) -> list[Write]:
        """A copy of the log of setpoint writes received, oldest first."""
        with self._lock:
            return list(self._writes)

    def clear_writes(self) -> None:
        """Empty the write log."""
        with self._lock:
            self._writes.clear()

    def enable_transitions(self, i: int) -> list[tuple[float, bool]]:
        """(time.monotonic(), new value) each time slot i's charge_enable register changed."""
        with self._lock:
            return list(self._slot(i).transitions)

    def charger_on(self, i: int) -> bool:
        """Whether slot i's charge_enable register holds 1."""
        with self._lock:
            return self._slot(i).enable == 1

    def limit_a(self, i: int) -> float:
        """Slot i's stored current_limit, in A."""
        with self._lock:
            return round(self._slot(i).limit_raw * SLOT_HOLDING["current_limit"].scale, 9)

    def value(self, i: int, name: str) -> float | str:
        """The engineering value slot i serves now for register `name` (input or holding)."""
        with self._lock:
            reg = SLOT_INPUTS.get(name) or SLOT_HOLDING.get(name)
            if reg is None:
                raise KeyError(f"no slot register {name!r}")
            block = self._block(i, reg.table)
            return reg.decode(block[reg.address : reg.address + reg.words])

    def number(self, i: int, name: str) -> float:
        """Like value(), for a numeric register (TypeError for a string one)."""
        value = self.value(i, name)
        if isinstance(value, str):
            raise TypeError(f"{name} is a string register")
        return value

    def status(self, i: int) -> str:
        """The status name slot i serves now ("code N" for a code outside the table)."""
        code = int(self.value(i, "status"))
        for name, known in STATUS_CODES.items():
            if known == code:
                return name
        return f"code {code}"

    def rack_value(self, name: str) -> float | str:
        """The engineering value of a rack identity register as served now."""
        reg = RACK_INPUTS[name]
        with self._lock:
            image = self._rack_image()
        return reg.decode(image[reg.address : reg.address + reg.words])

    # -- state -------------------------------------------------------------------------------

    def set_pack(
        self,
        i: int,
        serial: str | None,
        pack_type: str = "STD75",
        soc: float = 50.0,
        soh: float = 95.0,
        voltage: float = 370.0,
        temp_max: float = 25.0,
        temp_min: float = 23.0,
        bms_voltage_max: float = 403.2,
        bms_current_max: float = 200.0,
    ) -> None:
        """Insert a pack in slot i (energy_wh restarts at 0); None empties the slot."""
        if serial is None:
            fields: dict[str, float | str] = {
                name: ("" if SLOT_INPUTS[name].kind == "string" else 0.0)
                for name in (
                    "pack_present",
                    "pack_serial",
                    "pack_type",
                    "soc",
                    "soh",
                    "voltage",
                    "temp_max",
                    "temp_min",
                    "energy_wh",
                    "bms_voltage_max",
                    "bms_current_max",
                )
            }
        else:
            fields = {
                "pack_present": 1.0,
                "pack_serial": serial,
                "pack_type": pack_type,
                "soc": soc,
                "soh": soh,
                "voltage": voltage,
                "temp_max": temp_max,
                "temp_min": temp_min,
                "energy_wh": 0.0,
                "bms_voltage_max": bms_voltage_max,
                "bms_current_max": bms_current_max,
            }
        for name, value in fields.items():
            SLOT_INPUTS[name].encode(value)
        with self._lock:
            slot = self._slot(i)
            slot.values.update(fields)
            self._settle(slot, 0.0)

    def set_value(self, i: int, name: str, value: float | str) -> None:
        """Set slot i's input register `name` in engineering units (clears its set_raw).

        ``status`` forces a status (a name or a code, like set_status); ``current`` and
        ``power_w`` pin the served value only (the physics keeps its own current) until
        set_raw(i, name, None).
        """
        reg = SLOT_INPUTS.get(name)
        if reg is None:
            raise KeyError(f"no slot input register {name!r}")
        if name == "status":
            self._force_status(i, value)
            return
        words = reg.encode(value)
        with self._lock:
            slot = self._slot(i)
            if name in _PINNED:
                slot.raw[name] = words
                return
            slot.raw.pop(name, None)
            slot.values[name] = value if isinstance(value, str) else float(value)
            self._settle(slot, 0.0)

    def set_raw(self, i: int, name: str, words: list[int] | None) -> None:
        """Serve these raw words for slot i's input register `name`; None: back to the value."""
        reg = SLOT_INPUTS.get(name)
        if reg is None:
            raise KeyError(f"no slot input register {name!r}")
        with self._lock:
            slot = self._slot(i)
            if words is None:
                slot.raw.pop(name, None)
                return
            slot.raw[name] = self._check_words(reg, words)

    def set_rack_value(self, name: str, value: float | str) -> None:
        """Set a rack identity register (vendor, model, firmware, rack_heartbeat)."""
        if name == "slot_count":
            raise ValueError("slot_count reports served_slots: set that, or use set_rack_raw")
        reg = RACK_INPUTS[name]
        reg.encode(value)
        with self._lock:
            self._rack_raw.pop(name, None)
            self._rack_values[name] = value if isinstance(value, str) else float(value)

    def set_rack_raw(self, name: str, words: list[int] | None) -> None:
        """Serve these raw words for a rack identity register; None: back to the value."""
        reg = RACK_INPUTS[name]
        with self._lock:
            if words is None:
                self._rack_raw.pop(name, None)
            else:
                self._rack_raw[name] = self._check_words(reg, words)

    def set_status(self, i: int, name: str | None) -> None:
        """Force slot i's status ("full", "fault", ...); None returns to the computed one."""
        self._force_status(i, name)

    def set_fault(self, i: int, code: int) -> None:
        """Set slot i's fault_code (0 clears it); a fault stops the charger's current."""
        self.set_value(i, "fault_code", code)

    def set_setpoint(self, i: int, name: str, value: float) -> None:
        """Preset a holding register (engineering units) as if the device held it; not logged."""
        reg = SLOT_HOLDING[name]
        (word,) = reg.encode(value)
        with self._lock:
            slot = self._slot(i)
            if name == "charge_enable":
                self._set_enable(slot, word, time.monotonic())
            else:
                slot.limit_raw = word
            self._settle(slot, 0.0)

    def freeze_heartbeat(self, i: int, frozen: bool = True) -> None:
        """Stop (or restart) slot i's heartbeat from counting on tick()."""
        with self._lock:
            self._slot(i).heartbeat_frozen = frozen

    def freeze_rack_heartbeat(self, frozen: bool = True) -> None:
        """Stop (or restart) the rack_heartbeat register from counting on tick()."""
        with self._lock:
            self._rack_heartbeat_frozen = frozen

    # -- physics -----------------------------------------------------------------------------

    def tick(self, dt_s: float) -> None:
        """Advance every slot by dt_s seconds: heartbeats +1, SoC and energy integrate."""
        if dt_s < 0:
            raise ValueError("dt_s must not be negative")
        with self._lock:
            self._ticks += 1
            if not self._rack_heartbeat_frozen:
                beat = self._rack_values["rack_heartbeat"]
                assert not isinstance(beat, str)
                self._rack_values["rack_heartbeat"] = float((int(beat) + 1) % 0x10000)
            for slot in self._slots:
                if not slot.heartbeat_frozen:
                    slot.values["heartbeat"] = float((int(slot.num("heartbeat")) + 1) % 0x10000)
                self._settle(slot, dt_s)

    def settle(self) -> None:
        """Recompute every slot's current, power and status now (after changing a knob)."""
        with self._lock:
            for slot in self._slots:
                self._settle(slot, 0.0)

    def _settle(self, slot: _Slot, dt_s: float) -> None:
        present = slot.num("pack_present") != 0
        fault = slot.num("fault_code") != 0
        soc = slot.num("soc")
        voltage = slot.num("voltage")
        current = 0.0
        if present and not fault and slot.enable == 1 and soc < 100.0:
            current = min(slot.limit_raw * SLOT_HOLDING["current_limit"].scale, self.charger_max_a)
            if self.honour_bms:
                current = min(current, slot.num("bms_current_max"))
                if voltage >= slot.num("bms_voltage_max"):
                    current = 0.0
            current = max(current, 0.0)
        if dt_s > 0 and current > 0:
            soc = min(100.0, soc + current * dt_s / 3600.0 / CAPACITY_AH * 100.0)
            slot.values["soc"] = soc
            energy = slot.num("energy_wh") + voltage * current * dt_s / 3600.0
            slot.values["energy_wh"] = min(energy, float(0xFFFF_FFFF))
        if soc >= 100.0:
            current = 0.0
            if present and self.auto_off_when_full and slot.enable != 0:
                self._set_enable(slot, 0, time.monotonic())
        slot.values["current"] = current
        slot.values["power_w"] = voltage * current
        if fault:
            status = "fault"
        elif not present:
            status = "empty"
        elif soc >= 100.0:
            status = "full"
        elif current > 0:
            status = "charging"
        else:
            status = "idle"
        slot.values["status"] = float(STATUS_CODES[status])

    def _run_ticker(self, period_s: float) -> None:
        last = time.monotonic()
        while not self._stopping.wait(period_s):
            now = time.monotonic()
            self.tick(now - last)
            last = now

    # -- server side (called from the server's connection threads) ---------------------------

    def client_connected(self, sock: socket.socket) -> None:
        """Server side: a client connection opened."""
        with self._lock:
            self._clients[sock] = threading.current_thread()
            self._connections += 1

    def client_gone(self, sock: socket.socket) -> None:
        """Server side: a client connection ended."""
        with self._lock:
            self._clients.pop(sock, None)

    def admit_request(self) -> bool:
        """Server side: count a request; False when it must be dropped (silent)."""
        with self._lock:
            self._requests += 1
        return not self.silent

    def reply_delay(self) -> bool:
        """Server side: wait delay_s before replying; False when the rack stops meanwhile."""
        delay = self.delay_s
        if delay > 0:
            return not self._stopping.wait(delay)
        return not self._stopping.is_set()

    def handle_read(self, table: Table, address: int, count: int) -> tuple[int, list[int] | None]:
        """Server side of functions 3 and 4: (exception code, words)."""
        end = address + count
        if self.refuse_reads:
            return int(self.refuse_reads), None
        if end > self._end_address():
            return EXP_DATA_ADDRESS, None
        with self._lock:
            rack = self._rack_image() if table == "input" else []
            blocks: dict[int, list[int]] = {}
            words: list[int] = []
            for addr in range(address, end):
                if addr < BLOCK_BASE:
                    words.append(rack[addr] if addr < len(rack) else 0)
                    continue
                index, offset = divmod(addr - BLOCK_BASE, BLOCK_SIZE)
                if index not in blocks:
                    blocks[index] = self._block(index, table)
                words.append(blocks[index][offset])
        return EXP_NONE, words

    def handle_write(self, address: int, words: Sequence[int]) -> int:
        """Server side of functions 6, 16 and 23: the exception code (0: written)."""
        end_address = self._end_address()
        targets: list[tuple[int, Register, int]] = []
        for k, word in enumerate(words):
            addr = address + k
            if addr < BLOCK_BASE or addr >= end_address:
                return EXP_DATA_ADDRESS
            index, offset = divmod(addr - BLOCK_BASE, BLOCK_SIZE)
            reg = _HOLDING_BY_OFFSET.get(offset)
            if reg is None:
                return EXP_DATA_ADDRESS
            targets.append((index, reg, int(word)))
        now = time.monotonic()
        with self._lock:
            refuse = self.refuse_writes
            if refuse:
                self._log_writes(now, targets, "refused")
                return int(refuse)
            if any(reg.name == "charge_enable" and word > 1 for _, reg, word in targets):
                self._log_writes(now, targets, "rejected")
                return EXP_DATA_VALUE
            for index, reg, word in targets:
                slot = self._slots[index]
                outcome = "stored"
                if reg.name == "charge_enable":
                    self._set_enable(slot, word, now)
                elif self.ignore_limit_writes:
                    outcome = "ignored"
                else:
                    stored = word
                    clamp = self.clamp_limit_a
                    if clamp is not None and word * reg.scale > clamp + 1e-9:
                        stored = round(clamp / reg.scale)
                        outcome = "clamped"
                    slot.limit_raw = stored
                self._log_writes(now, [(index, reg, word)], outcome)
            for index in {index for index, _, _ in targets}:
                self._settle(self._slots[index], 0.0)
        return EXP_NONE

    # -- internals ---------------------------------------------------------------------------

    def _slot(self, i: int) -> _Slot:
        if not 0 <= i < len(self._slots):
            raise IndexError(f"no slot {i} (the rack has {len(self._slots)})")
        return self._slots[i]

    def _end_address(self) -> int:
        return BLOCK_BASE + BLOCK_SIZE * self._served_slots

    def _force_status(self, i: int, status: float | str | None) -> None:
        if status is None:
            code = None
        elif isinstance(status, str):
            if status not in STATUS_CODES:
                raise ValueError(f"unknown status {status!r} (known: {', '.join(STATUS_CODES)})")
            code = STATUS_CODES[status]
        else:
            (code,) = SLOT_INPUTS["status"].encode(status)
        with self._lock:
            slot = self._slot(i)
            slot.forced_status = code
            slot.raw.pop("status", None)

    def _set_enable(self, slot: _Slot, word: int, now: float) -> None:
        if word != slot.enable:
            slot.transitions.append((now, word == 1))
        slot.enable = word

    def _log_writes(
        self, now: float, targets: list[tuple[int, Register, int]], outcome: str
    ) -> None:
        for index, reg, word in targets:
            self._writes.append(Write(now, index, reg.name, round(word * reg.scale, 9), outcome))

    @staticmethod
    def _check_words(reg: Register, words: list[int]) -> list[int]:
        if len(words) != reg.words or not all(0 <= w <= 0xFFFF for w in words):
            raise ValueError(f"{reg.name} takes {reg.words} words of 0..65535, not {words!r}")
        return list(words)

    def _block(self, i: int, table: Table) -> list[int]:
        slot = self._slot(i)
        block = [0] * BLOCK_SIZE
        if table == "holding":
            block[0] = slot.enable
            block[1] = slot.limit_raw
            return block
        for name, reg in SLOT_INPUTS.items():
            words = slot.raw.get(name)
            if words is None:
                if name == "status" and slot.forced_status is not None:
                    words = [slot.forced_status]
                else:
                    words = reg.encode(slot.values[name])
            block[reg.address : reg.address + reg.words] = words
        return block

    def _rack_image(self) -> list[int]:
        image = [0] * 15
        values = dict(self._rack_values, slot_count=float(self._served_slots))
        for name, reg in RACK_INPUTS.items():
            words = self._rack_raw.get(name) or reg.encode(values[name])
            image[reg.address : reg.address + reg.words] = words
        return image
