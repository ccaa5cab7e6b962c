"""Tests of the independent peer rack (tests/peers/rack.py) against docs/register-map.md.

The client is the Debian tool ``mbpoll`` (or hand-built Modbus TCP frames), so that neither
the peer nor its checks share code with the controller or its simulator.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.peers.rack import (
    RACK_INPUTS,
    SLOT_HOLDING,
    SLOT_INPUTS,
    STATUS_CODES,
    PeerRack,
    Register,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "register-map.md"
MBPOLL = shutil.which("mbpoll") or "/usr/bin/mbpoll"
HOST = "127.0.0.1"

needs_mbpoll = pytest.mark.skipif(not Path(MBPOLL).exists(), reason="mbpoll is not installed")


# -- helpers -------------------------------------------------------------------------------


@dataclass
class Poll:
    """One mbpoll run: exit code, output, the values it printed by address, and its duration."""

    rc: int
    stdout: str
    stderr: str
    values: dict[int, str]
    elapsed_s: float

    def ints(self) -> dict[int, int]:
        """The printed values as integers (mbpoll adds "(-1)" after large u16: ignored)."""
        return {addr: int(text) for addr, text in self.values.items()}


_LINE = re.compile(r"^\[(\d+)\]:\s+(\S+)", re.MULTILINE)


async def run_mbpoll(argv: list[str], *, deadline_s: float = 5.0) -> Poll:
    """Run mbpoll with these arguments (argv[0] is the program) and parse what it printed."""
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), deadline_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    stdout = out.decode(errors="replace")
    values = {int(addr): text for addr, text in _LINE.findall(stdout)}
    assert proc.returncode is not None
    return Poll(
        proc.returncode, stdout, err.decode(errors="replace"), values, time.monotonic() - started
    )


async def mbpoll(
    port: int, *options: str, write: tuple[str, ...] = (), timeout_s: float = 1.0, unit: int = 1
) -> Poll:
    """mbpoll once (-1), 0-based addresses (-0), against the peer on this port."""
    argv = [MBPOLL, "-m", "tcp", "-p", str(port), "-a", str(unit), "-0", "-1"]
    argv += ["-o", f"{timeout_s:g}", *options, HOST, *write]
    return await run_mbpoll(argv)


async def eventually(cond: Callable[[], bool], timeout_s: float = 3.0) -> None:
    """Poll a condition until it holds, failing after the deadline."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.01)


class RawClient:
    """A hand-built Modbus TCP client (MBAP + PDU), to check framing-level behaviour."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.tid = 0

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        """Open a connection to the peer."""
        reader, writer = await asyncio.open_connection(HOST, port)
        return cls(reader, writer)

    async def send(self, pdu: bytes, unit: int = 1) -> int:
        """Send one request; return its transaction id."""
        self.tid += 1
        self.writer.write(struct.pack(">HHHB", self.tid, 0, len(pdu) + 1, unit) + pdu)
        await self.writer.drain()
        return self.tid

    async def receive(self, timeout_s: float = 2.0) -> tuple[int, bytes]:
        """Read one response: (transaction id, PDU)."""
        header = await asyncio.wait_for(self.reader.readexactly(7), timeout_s)
        tid, _proto, length, _unit = struct.unpack(">HHHB", header)
        pdu = await asyncio.wait_for(self.reader.readexactly(length - 1), timeout_s)
        return tid, pdu

    async def call(self, pdu: bytes) -> bytes:
        """Send a request and return the PDU of its response."""
        tid = await self.send(pdu)
        got, reply = await self.receive()
        assert got == tid
        return reply

    async def close(self) -> None:
        """Close the connection."""
        self.writer.close()
        await self.writer.wait_closed()


def doc_section(marker: str) -> str:
    """The text between <!-- marker --> and the next closing marker in the register map."""
    text = DOC.read_text(encoding="utf-8")
    # a section ends at the next closing marker: <!-- /generated --> closes every generated one
    match = re.search(rf"<!-- {marker} -->\n(.*?)<!-- /", text, re.DOTALL)
    assert match, f"no {marker} section in {DOC}"
    return match.group(1)


def doc_table(marker: str) -> list[dict[str, str]]:
    """The rows of a generated markdown table in the register map, keyed by column."""
    lines = [line for line in doc_section(marker).splitlines() if line.startswith("|")]
    head = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = []
    for line in lines[2:]:
        cells = [cell.strip().strip("`") for cell in line.strip("|").split("|")]
        rows.append(dict(zip(head, cells, strict=True)))
    return rows


@pytest.fixture
def rack() -> Iterator[PeerRack]:
    """A started 4-slot peer rack."""
    peer = PeerRack(4)
    peer.start()
    yield peer
    peer.stop()


def example_pack(peer: PeerRack) -> None:
    """The pack of the worked example, in slot 2 (position 1)."""
    peer.set_pack(1, "PK-0002", soc=62.5, soh=96.0, voltage=370.8, temp_max=26.0, temp_min=23.0)


# -- the peer follows the doc's tables -----------------------------------------------------


def _check_table(rows: list[dict[str, str]], regs: dict[str, Register], where: str) -> None:
    assert [row["name"] for row in rows] == list(regs)
    for row in rows:
        reg = regs[row["name"]]
        assert int(row[where]) == reg.address, row
        assert row["table"] == reg.table, row
        assert row["type"] == reg.kind, row
        assert int(row["words"]) == reg.words, row
        assert float(row["scale"]) == reg.scale, row


def test_register_tables_match_the_doc() -> None:
    rows = doc_table("generated:simrack-slot")
    _check_table([r for r in rows if r["table"] == "input"], SLOT_INPUTS, "offset")
    _check_table([r for r in rows if r["table"] == "holding"], SLOT_HOLDING, "offset")
    _check_table(doc_table("generated:simrack-rack"), RACK_INPUTS, "address")
    codes = {row["status"]: int(row["code"]) for row in doc_table("generated:simrack-status")}
    assert codes == STATUS_CODES


# -- the worked example and the rack registers ---------------------------------------------


@needs_mbpoll
async def test_worked_example_with_mbpoll(rack: PeerRack) -> None:
    example_pack(rack)
    block = doc_section("mbpoll-example")
    command = re.search(r"^\$ (mbpoll .*)$", block, re.MULTILINE)
    assert command
    argv = command.group(1).split()
    argv[0] = MBPOLL
    argv[argv.index("-p") + 1] = str(rack.port)
    expected = {int(addr): text for addr, text in _LINE.findall(block)}
    assert sorted(expected) == list(range(1032, 1061))

    poll = await run_mbpoll(argv)

    assert poll.rc == 0, poll.stderr
    assert sorted(poll.values) == sorted(expected)
    for addr, text in expected.items():
        if text != "(varies)":
            assert poll.values[addr] == text, f"[{addr}]: {poll.values[addr]} != doc {text}"
    words = poll.ints()
    serial = struct.pack(">8H", *(words[a] for a in range(1034, 1042)))
    assert serial.rstrip(b"\0") == b"PK-0002"
    assert SLOT_INPUTS["pack_type"].decode([words[a] for a in range(1042, 1046)]) == "STD75"
    assert rack.value(1, "voltage") == 370.8
    assert rack.status(1) == "idle"


@needs_mbpoll
async def test_heartbeat_varies_with_tick(rack: PeerRack) -> None:
    before = (await mbpoll(rack.port, "-t", "3", "-r", "1060")).ints()[1060]
    rack.tick(0.1)
    after = (await mbpoll(rack.port, "-t", "3", "-r", "1060")).ints()[1060]
    assert after == (before + 1) % 65536
    rack.freeze_heartbeat(1)
    rack.tick(0.1)
    assert (await mbpoll(rack.port, "-t", "3", "-r", "1060")).ints()[1060] == after


def test_heartbeat_wraps_and_freezes() -> None:
    peer = PeerRack(2)
    peer.set_value(0, "heartbeat", 65535)
    peer.tick(0.1)
    assert peer.value(0, "heartbeat") == 0
    assert peer.value(1, "heartbeat") == 1
    peer.freeze_heartbeat(0)
    peer.tick(0.1)
    assert peer.value(0, "heartbeat") == 0
    assert peer.value(1, "heartbeat") == 2
    peer.freeze_heartbeat(0, frozen=False)
    peer.tick(0.1)
    assert peer.value(0, "heartbeat") == 1
    assert peer.rack_value("rack_heartbeat") == 3
    peer.freeze_rack_heartbeat()
    peer.tick(0.1)
    assert peer.rack_value("rack_heartbeat") == 3


@needs_mbpoll
async def test_rack_identity_registers() -> None:
    with PeerRack(6, vendor="ACME-CHARGE", model="R6X", firmware=207) as peer:
        poll = await mbpoll(peer.port, "-t", "3", "-r", "0", "-c", "15")
    assert poll.rc == 0, poll.stderr
    words = [poll.ints()[a] for a in range(15)]
    assert struct.pack(">8H", *words[0:8]).rstrip(b"\0") == b"ACME-CHARGE"
    assert struct.pack(">4H", *words[8:12]).rstrip(b"\0") == b"R6X"
    assert words[12:14] == [207, 6]


@needs_mbpoll
async def test_gaps_read_as_zero(rack: PeerRack) -> None:
    for i in range(4):
        rack.set_pack(i, f"PK-{i}")
        rack.set_setpoint(i, "current_limit", 100.0)
        rack.set_setpoint(i, "charge_enable", 1)
    rack.tick(1.0)
    # the poller's read: four blocks in one request of 125 registers
    inputs = (await mbpoll(rack.port, "-t", "3", "-r", "1000", "-c", "125")).ints()
    holding = (await mbpoll(rack.port, "-t", "4", "-r", "1000", "-c", "125")).ints()
    for i in range(4):
        base = 1000 + 32 * i
        assert inputs[base + 1] == 1  # pack_present
        assert all(inputs[a] == 0 for a in range(base + 29, base + 32) if a in inputs)
        assert holding[base] == 1
        assert holding[base + 1] == 1000
        assert all(holding[a] == 0 for a in range(base + 2, base + 32) if a in holding)
    below = (await mbpoll(rack.port, "-t", "3", "-r", "15", "-c", "100")).ints()
    assert set(below.values()) == {0}


# -- encodings -----------------------------------------------------------------------------


@needs_mbpoll
async def test_32_bit_values_with_mbpoll(rack: PeerRack) -> None:
    rack.set_pack(0, "PK-1", voltage=400.0)
    rack.set_setpoint(0, "current_limit", 100.0)
    rack.set_setpoint(0, "charge_enable", 1)
    rack.tick(36.0)  # 100 A at 400 V for 36 s: 400 Wh

    current = await mbpoll(rack.port, "-t", "3:int", "-B", "-r", "1017")
    power = await mbpoll(rack.port, "-t", "3:float", "-B", "-r", "1024")
    energy = await mbpoll(rack.port, "-t", "3:int", "-B", "-r", "1022")
    raw = await mbpoll(rack.port, "-t", "3", "-r", "1017", "-c", "2")

    assert current.ints()[1017] == 100_000  # mA
    assert float(power.values[1024]) == 40_000.0
    assert energy.ints()[1022] == 400
    assert [raw.ints()[1017], raw.ints()[1018]] == [1, 100_000 - 65536]  # high word first

    rack.set_value(0, "current", -2.5)  # pins the served value: discharge reads negative
    negative = await mbpoll(rack.port, "-t", "3:int", "-B", "-r", "1017")
    assert negative.ints()[1017] == -2500
    words = (await mbpoll(rack.port, "-t", "3", "-r", "1017", "-c", "2")).ints()
    assert words[1017] == 65535  # 0xFFFF, sign extension in the high word


def test_encodings() -> None:
    peer = PeerRack(1)
    peer.set_pack(0, "ABCDEFGHIJKLMNOP", pack_type="X", temp_max=-12.5, temp_min=-40.0)
    assert peer.value(0, "pack_serial") == "ABCDEFGHIJKLMNOP"
    assert SLOT_INPUTS["temp_max"].encode(-12.5) == [65411]
    assert peer.value(0, "temp_max") == -12.5
    assert SLOT_INPUTS["pack_type"].encode("X") == [0x5800, 0, 0, 0]
    assert SLOT_INPUTS["power_w"].encode(1.0) == [0x3F80, 0]
    assert SLOT_INPUTS["energy_wh"].encode(70000) == [1, 4464]
    with pytest.raises(ValueError, match="longer"):
        peer.set_pack(0, "ABCDEFGHIJKLMNOPQ")
    with pytest.raises(ValueError, match="does not fit"):
        peer.set_value(0, "soc", -1.0)
    peer.set_raw(0, "soc", [0xFFFF])  # garbage beyond the plausible range
    assert peer.value(0, "soc") == 6553.5
    peer.set_value(0, "soc", 40.0)  # a value clears the raw override
    assert peer.value(0, "soc") == 40.0


# -- setpoints -----------------------------------------------------------------------------


@needs_mbpoll
async def test_setpoint_write_then_read_back(rack: PeerRack) -> None:
    example_pack(rack)
    started = time.monotonic()
    limit = await mbpoll(rack.port, "-t", "4", "-r", "1033", write=("1500",))
    enable = await mbpoll(rack.port, "-t", "4", "-r", "1032", write=("1",))
    back = await mbpoll(rack.port, "-t", "4", "-r", "1032", "-c", "2")

    assert limit.rc == 0, limit.stderr
    assert enable.rc == 0, enable.stderr
    assert back.ints() == {1032: 1, 1033: 1500}
    assert [(w.slot, w.name, w.value, w.outcome) for w in rack.writes] == [
        (1, "current_limit", 150.0, "stored"),
        (1, "charge_enable", 1.0, "stored"),
    ]
    assert all(w.at >= started for w in rack.writes)
    assert rack.charger_on(1)
    assert rack.limit_a(1) == 150.0
    assert [on for _, on in rack.enable_transitions(1)] == [True]
    assert rack.status(1) == "charging"
    assert rack.value(1, "current") == 150.0

    both = await mbpoll(rack.port, "-t", "4", "-r", "1032", write=("0", "200"))
    assert both.rc == 0, both.stderr
    assert not rack.charger_on(1)
    assert rack.limit_a(1) == 20.0
    assert [on for _, on in rack.enable_transitions(1)] == [True, False]
    assert rack.status(1) == "idle"


async def test_fc16_and_fc23_and_bad_values(rack: PeerRack) -> None:
    client = await RawClient.connect(rack.port)
    try:
        # function 16 over both setpoints of slot 3 (block 1096)
        reply = await client.call(struct.pack(">BHHB2H", 16, 1096, 2, 4, 1, 555))
        assert reply == struct.pack(">BHH", 16, 1096, 2)
        assert rack.charger_on(3)
        assert rack.limit_a(3) == 55.5
        # function 23: write the limit, read both back
        reply = await client.call(struct.pack(">BHHHHBH", 23, 1096, 2, 1097, 1, 2, 300))
        assert reply == struct.pack(">BB2H", 23, 4, 1, 300)
        # charge_enable takes 0 or 1 only: exception 03, nothing stored
        reply = await client.call(struct.pack(">BHH", 6, 1096, 2))
        assert reply == bytes([0x86, 3])
        assert rack.charger_on(3)
        assert rack.writes[-1].outcome == "rejected"
        # no coils on a rack
        reply = await client.call(struct.pack(">BHH", 1, 0, 8))
        assert reply == bytes([0x81, 1])
    finally:
        await client.close()


# -- fault injection -----------------------------------------------------------------------


@needs_mbpoll
async def test_exception_02_beyond_served_slots() -> None:
    with PeerRack(4, served_slots=2) as peer:
        count = await mbpoll(peer.port, "-t", "3", "-r", "13")
        whole = await mbpoll(peer.port, "-t", "3", "-r", "1000", "-c", "64")
        over = await mbpoll(peer.port, "-t", "3", "-r", "1000", "-c", "65")
        third = await mbpoll(peer.port, "-t", "3", "-r", "1064", "-c", "29")
        holding = await mbpoll(peer.port, "-t", "4", "-r", "1064", "-c", "2")
        write = await mbpoll(peer.port, "-t", "4", "-r", "1064", write=("1",))

        assert count.ints() == {13: 2}
        assert whole.rc == 0, whole.stderr
        for poll in (over, third, holding, write):
            assert poll.rc != 0
            assert "Illegal data address" in poll.stderr, poll.stderr
        assert not peer.charger_on(2)
        assert peer.writes == []


@needs_mbpoll
async def test_writes_outside_the_setpoints_answer_02(rack: PeerRack) -> None:
    gap = await mbpoll(rack.port, "-t", "4", "-r", "1034", write=("1",))
    low = await mbpoll(rack.port, "-t", "4", "-r", "5", write=("1",))
    spanning = await mbpoll(rack.port, "-t", "4", "-r", "1033", write=("100", "1"))
    for poll in (gap, low, spanning):
        assert poll.rc != 0
        assert "Illegal data address" in poll.stderr, poll.stderr
    assert all(rack.limit_a(i) == 0.0 for i in range(4))
    assert rack.writes == []


@needs_mbpoll
async def test_delay_s(rack: PeerRack) -> None:
    rack.delay_s = 0.3
    slow = await mbpoll(rack.port, "-t", "3", "-r", "1000", timeout_s=2.0)
    assert slow.rc == 0, slow.stderr
    assert slow.elapsed_s >= 0.3

    rack.delay_s = 1.0
    late = await mbpoll(rack.port, "-t", "3", "-r", "1000", timeout_s=0.2)
    assert late.rc != 0
    assert "timed out" in late.stderr, late.stderr

    rack.delay_s = 0.0
    quick = await mbpoll(rack.port, "-t", "3", "-r", "1000", timeout_s=2.0)
    assert quick.rc == 0, quick.stderr


@needs_mbpoll
async def test_silent_mbpoll_times_out(rack: PeerRack) -> None:
    rack.silent = True
    poll = await mbpoll(rack.port, "-t", "3", "-r", "1000", timeout_s=0.2)
    assert poll.rc != 0
    assert "timed out" in poll.stderr, poll.stderr
    await eventually(lambda: rack.requests == 1)


async def test_silent_drops_requests_and_keeps_the_connection(rack: PeerRack) -> None:
    rack.silent = True
    client = await RawClient.connect(rack.port)
    try:
        await client.send(struct.pack(">BHH", 4, 1000, 2))
        await eventually(lambda: rack.requests == 1)
        with pytest.raises(TimeoutError):  # no reply, and no EOF either
            await asyncio.wait_for(client.reader.read(1), 0.2)
        # writes are dropped too
        await client.send(struct.pack(">BHH", 6, 1000, 1))
        await eventually(lambda: rack.requests == 2)
        assert not rack.charger_on(0)

        rack.silent = False
        tid = await client.send(struct.pack(">BHH", 4, 1000, 2))
        got, reply = await client.receive()
        assert got == tid  # the dropped requests get no late answer
        assert reply == struct.pack(">BB2H", 4, 4, 0, 0)
        assert rack.open_connections == 1
        assert rack.connections == 1
    finally:
        await client.close()


@needs_mbpoll
async def test_clamp_limit(rack: PeerRack) -> None:
    rack.clamp_limit_a = 100.0
    write = await mbpoll(rack.port, "-t", "4", "-r", "1033", write=("1500",))
    back = await mbpoll(rack.port, "-t", "4", "-r", "1033")
    assert write.rc == 0, write.stderr
    assert back.ints() == {1033: 1000}
    assert rack.limit_a(1) == 100.0
    assert [(w.value, w.outcome) for w in rack.writes] == [(150.0, "clamped")]
    below = await mbpoll(rack.port, "-t", "4", "-r", "1033", write=("800",))
    assert below.rc == 0
    assert rack.limit_a(1) == 80.0
    assert rack.writes[-1].outcome == "stored"


@needs_mbpoll
async def test_ignore_limit_writes(rack: PeerRack) -> None:
    rack.set_setpoint(1, "current_limit", 32.0)
    rack.ignore_limit_writes = True
    write = await mbpoll(rack.port, "-t", "4", "-r", "1032", write=("1", "1500"))
    back = await mbpoll(rack.port, "-t", "4", "-r", "1032", "-c", "2")
    assert write.rc == 0, write.stderr
    assert back.ints() == {1032: 1, 1033: 320}  # enable taken, limit not
    assert [w.outcome for w in rack.writes] == ["stored", "ignored"]


@needs_mbpoll
async def test_refuse_writes(rack: PeerRack) -> None:
    rack.refuse_writes = 4
    write = await mbpoll(rack.port, "-t", "4", "-r", "1032", write=("1",))
    assert write.rc != 0
    assert "Slave device or server failure" in write.stderr, write.stderr
    assert not rack.charger_on(1)
    assert rack.enable_transitions(1) == []
    assert [(w.name, w.outcome) for w in rack.writes] == [("charge_enable", "refused")]
    read = await mbpoll(rack.port, "-t", "4", "-r", "1032")
    assert read.rc == 0  # reads still work
    rack.refuse_writes = None
    again = await mbpoll(rack.port, "-t", "4", "-r", "1032", write=("1",))
    assert again.rc == 0
    assert rack.charger_on(1)


@needs_mbpoll
async def test_unit_id_checked_when_set(rack: PeerRack) -> None:
    assert (await mbpoll(rack.port, "-t", "3", "-r", "13", unit=7)).rc == 0  # any unit by default
    rack.unit_id = 1
    wrong = await mbpoll(rack.port, "-t", "3", "-r", "13", unit=7)
    assert wrong.rc != 0
    assert (await mbpoll(rack.port, "-t", "3", "-r", "13")).rc == 0


# -- physics -------------------------------------------------------------------------------


def charging_rack(**knobs: bool) -> PeerRack:
    """A 2-slot rack, slot 0 holding a pack at 50 % enabled at 100 A, never started."""
    peer = PeerRack(2)
    for name, value in knobs.items():
        setattr(peer, name, value)
    peer.set_pack(0, "PK-1", soc=50.0, voltage=370.0)
    peer.set_setpoint(0, "current_limit", 100.0)
    peer.set_setpoint(0, "charge_enable", 1)
    return peer


def test_charging_integrates_soc_and_energy() -> None:
    peer = charging_rack()
    assert peer.status(0) == "charging"
    peer.tick(36.0)  # 1 Ah into 200 Ah: +0.5 %
    assert peer.value(0, "soc") == 50.5
    assert peer.value(0, "current") == 100.0
    assert peer.value(0, "power_w") == 37000.0
    assert peer.value(0, "energy_wh") == 370.0
    assert peer.status(1) == "empty"
    assert peer.value(1, "pack_present") == 0
    assert peer.value(1, "pack_serial") == ""


def test_naive_charger_ignores_the_bms_unless_told() -> None:
    peer = charging_rack()
    peer.set_value(0, "bms_current_max", 0.0)
    peer.set_setpoint(0, "current_limit", 400.0)
    assert peer.value(0, "current") == 150.0  # charger_max_a, BMS ignored
    peer.honour_bms = True
    peer.settle()
    assert peer.value(0, "current") == 0.0
    assert peer.status(0) == "idle"
    peer.set_value(0, "bms_current_max", 80.0)
    assert peer.value(0, "current") == 80.0
    peer.set_value(0, "voltage", 403.2)  # at the BMS voltage limit
    assert peer.value(0, "current") == 0.0


def test_full_pack_and_auto_off() -> None:
    naive = charging_rack()
    naive.set_value(0, "soc", 99.99)
    naive.tick(3600.0)
    assert naive.value(0, "soc") == 100.0
    assert naive.status(0) == "full"
    assert naive.value(0, "current") == 0.0
    assert naive.charger_on(0)  # keeps its enable

    tidy = charging_rack(auto_off_when_full=True)
    tidy.set_value(0, "soc", 99.99)
    tidy.tick(3600.0)
    assert tidy.status(0) == "full"
    assert not tidy.charger_on(0)
    assert [on for _, on in tidy.enable_transitions(0)] == [True, False]


def test_fault_forced_status_and_empty_slot() -> None:
    peer = charging_rack()
    peer.set_fault(0, 17)
    assert peer.status(0) == "fault"
    assert peer.value(0, "current") == 0.0
    peer.set_fault(0, 0)
    assert peer.status(0) == "charging"
    peer.set_status(0, "full")
    assert peer.status(0) == "full"
    assert peer.value(0, "current") == 100.0  # forcing the status changes nothing else
    peer.set_status(0, None)
    assert peer.status(0) == "charging"
    peer.set_value(0, "status", 9)
    assert peer.status(0) == "code 9"
    peer.set_status(0, None)
    peer.set_pack(0, None)
    assert peer.status(0) == "empty"
    assert peer.value(0, "current") == 0.0
    assert peer.value(0, "soc") == 0.0
    assert peer.value(0, "pack_type") == ""


async def test_background_ticker() -> None:
    with PeerRack(1, tick_period_s=0.01) as peer:
        await eventually(lambda: peer.ticks >= 3)
        assert peer.number(0, "heartbeat") >= 3


# -- lifecycle -----------------------------------------------------------------------------


@needs_mbpoll
async def test_restart_on_the_same_port_and_dropped_connections() -> None:
    peer = PeerRack(1)
    port = peer.start()
    try:
        assert peer.start() == port  # idempotent
        client = await RawClient.connect(port)
        await eventually(lambda: peer.open_connections == 1)
        peer.stop()
        assert not peer.serving
        assert await asyncio.wait_for(client.reader.read(1), 2.0) == b""  # closed by the rack
        await client.close()
        down = await mbpoll(port, "-t", "3", "-r", "13", timeout_s=0.2)
        assert down.rc != 0

        assert peer.start() == port
        up = await mbpoll(port, "-t", "3", "-r", "13")
        assert up.ints() == {13: 1}
    finally:
        peer.stop()
