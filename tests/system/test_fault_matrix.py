"""Every cell of docs/fault-matrix.md, run against the simulated station.

The table is parsed from the document, so the document is what is tested. Faults (a)-(d) run
with the daemon in-process (faults are injected synchronously as the swap enters the step);
(e) runs the daemon as its own process, kills it with SIGKILL in the step and starts it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import signal
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from controller.errors import RefusedError
from controller.safety.motionlog import select_sync, verify_sync
from controller.store.journal import FILENAME, Journal
from controller.store.records import RecordStore
from controller.swap.inventory import Place
from controller.swap.sequencer import Sequencer
from drivers.robot.protocol import FaultCode, MsgType
from simstation.broker import Mosquitto
from simstation.charger import SimPack
from simstation.station import SimRackSpec, SimStation
from tests.rig import SECTIONS, Rig, arrive, rack, running, until
from tests.support import REPO, DaemonProcess, assert_motion_within_interlocks

DOC = REPO / "docs" / "fault-matrix.md"
SPEED = 60.0
FAULTS = (
    "robot jam", "E-stop", "door opened", "rack offline", "SIGKILL + restart", "SIGTERM + restart",
)  # fmt: skip
RESTARTS = {"SIGKILL + restart": signal.SIGKILL, "SIGTERM + restart": signal.SIGTERM}
MAIN_COMMAND = {
    "removing": MsgType.REMOVE,
    "storing": MsgType.STORE,
    "fetching": MsgType.FETCH,
    "installing": MsgType.INSTALL,
    "locking": MsgType.LOCK,
}
BLOCK_WORDS = {"door opened": ("door",), "rack offline": ("slot", "pack")}


@dataclass(frozen=True)
class Cell:
    step: str
    fault: str
    reaction: str  # fault, E-stop, blocks, none, resumes
    outcome: str  # completed, aborted, recovered (completed after a restart)


def parse_matrix(text: str) -> list[Cell]:
    """The cells of the table in docs/fault-matrix.md."""
    rows = [line for line in text.splitlines() if line.startswith("| ") and "→" in line]
    cells = []
    for row in rows:
        parts = [p.strip() for p in row.strip("|").split("|")]
        step, values = parts[0], parts[1:]
        assert len(values) == len(FAULTS), row
        for fault, value in zip(FAULTS, values, strict=True):
            match = re.fullmatch(
                r"(fault|E-stop|blocks|none|resumes) → (completed|aborted|recovered)", value
            )
            assert match, f"cannot read cell {step} / {fault}: {value!r}"
            cells.append(Cell(step, fault, match[1], match[2]))
    return cells


CELLS = parse_matrix(DOC.read_text())


def test_the_matrix_covers_every_step_and_fault() -> None:
    steps = {c.step for c in CELLS}
    assert steps == {
        "waiting_for_vehicle", "positioned", "lifting", "removing", "storing", "fetching",
        "installing", "locking", "lowering", "releasing",
    }  # fmt: skip
    assert len(CELLS) == len(steps) * len(FAULTS)


async def reset_until_accepted(seq: Sequencer) -> None:
    """The operator resets the fault; refused while the cause is still seen (I/O lags)."""
    deadline = time.monotonic() + 5
    while True:
        try:
            await seq.request("reset_fault", by="test")
        except RefusedError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
        else:
            return


def check_after(sim: SimStation, seq: Sequencer | None, cell: Cell) -> None:
    """What must hold after every cell: pack, safety, inventory."""
    plc = sim.plc
    assert plc is not None
    assert plc.unsafe_lowerings == 0, "the car was lowered without a locked pack"
    assert plc.accidents == 0
    assert [v.vehicle_id for v in plc.departed] == ["EV-1"]
    gone = plc.departed[0]
    want = "PK-A" if cell.outcome in {"completed", "recovered"} else "PK-OLD"
    assert gone.pack is not None and gone.pack.serial == want and gone.locked
    # Where the simulator has the packs, and where the controller says they are.
    places: dict[str, list[str]] = {}
    for serial, place in sim.pack_places():
        places.setdefault(serial, []).append(place)
    assert all(len(p) == 1 for p in places.values()), places
    if seq is not None:
        inv = seq.swap.inventory
        in_slots = {s: p[0] for s, p in places.items() if p[0].startswith("slot ")}
        known = {e.serial: f"slot {e.slot}" for e in inv.packs.values() if e.place is Place.SLOT}
        assert known == in_slots
        assert not [e for e in inv.packs.values() if e.place is not Place.SLOT]


async def check_record(journal_dir: Path, cell: Cell) -> None:
    from controller.store.journal import Journal

    journal = await Journal.open(journal_dir, read_only=True)
    try:
        store = RecordStore(journal)
        assert await store.count() == 1
        (record,) = await store.last(1)
        assert record.outcome == cell.outcome, record.reason
        assert (await store.verify()).ok
        # Every motion went out with its phase's interlocks true, and the log's chain holds.
        entries = await journal.call(select_sync)
        assert assert_motion_within_interlocks(entries) > 0
        assert (await journal.call(verify_sync))[1] is None
    finally:
        await journal.close()


# --- (a) to (d): the daemon in-process ---------------------------------------------------------


def injector(
    rig: Rig, cell: Cell, reached: asyncio.Event
) -> tuple[Callable[[str, str], None], Callable[[str, str], None], Callable[[], None]]:
    """What to do as the swap enters the step, and how to put it right afterwards."""
    sim = rig.sim
    plc, robot, sim_rack = sim.plc, sim.robot, sim.racks["r1"]
    assert plc is not None and robot is not None
    tasks: list[asyncio.Task[None]] = []

    def inject() -> None:
        if cell.fault == "robot jam":
            if cell.step in MAIN_COMMAND:
                robot.faults.jam_on = MAIN_COMMAND[cell.step]
            else:
                robot.inject_fault(FaultCode.JAM)
        elif cell.fault == "E-stop":
            plc.estop_ok = False
        elif cell.fault == "door opened":
            plc.open_door()
        elif cell.fault == "rack offline":
            tasks.append(asyncio.create_task(sim_rack.go_offline()))

    def fix() -> None:
        plc.estop_ok = True
        if plc.vehicle is not None:
            plc.close_door()
        if cell.fault == "rack offline":
            tasks.append(asyncio.create_task(sim_rack.come_back()))

    def on_phase(_before: str, after: str) -> None:
        if after != cell.step or reached.is_set():
            return
        if cell.fault in {"robot jam", "rack offline"} or cell.step not in MAIN_COMMAND:
            reached.set()
            inject()

    def on_command(phase: str, what: str) -> None:
        # In a robot step, an E-stop or a door strikes while the step's own command runs.
        main = MAIN_COMMAND.get(phase)
        ours = phase == cell.step and main is not None and what == f"robot {main.name}"
        if ours and not reached.is_set():
            reached.set()
            inject()

    return on_phase, on_command, fix


IN_PROCESS = [c for c in CELLS if c.fault not in RESTARTS]


@pytest.mark.asyncio
@pytest.mark.timeout(60)
@pytest.mark.parametrize("cell", IN_PROCESS, ids=lambda c: f"{c.step}-{c.fault.split()[0]}")
async def test_fault_matrix_cell(tmp_path: Path, cell: Cell) -> None:
    async with running(
        tmp_path, None, [rack()], speed=SPEED, sections=SECTIONS, robot=True, plc=True
    ) as rig:
        seq = rig.station.sequencer
        assert seq is not None
        await until(lambda: not seq.blocking and bool(seq.packs_ready()), what="station ready")
        reached = asyncio.Event()
        on_phase, on_command, fix = injector(rig, cell, reached)
        seq.swap.on_phase.append(on_phase)
        seq.swap.on_command.append(on_command)
        arrive(rig.sim)  # driving in: present at once, in position a moment later
        await until(lambda: seq.facts().get("vehicle_present") is True, what="vehicle seen")
        await seq.request("start_swap", vehicle_id="EV-1", pack_type="STD75")
        await until(reached.is_set, what=cell.step)
        if cell.reaction == "fault":
            await until(lambda: seq.ctx.state == "fault", what="the fault")
            assert seq.blocking and seq.blocking[0].startswith("fault: ")
        elif cell.reaction == "E-stop":
            await until(lambda: seq.ctx.state == "estop", what="the E-stop reaction")
            assert seq.blocking == ["E-stop pressed"] or "E-stop pressed" in seq.blocking
        elif cell.reaction == "blocks":
            words = BLOCK_WORDS[cell.fault]
            await until(
                lambda: any(w in c for c in seq.blocking for w in words),
                what=f"a blocking cause naming {words}",
            )
        fix()
        if cell.reaction in {"fault", "E-stop"}:
            await reset_until_accepted(seq)
        await until(
            lambda: not seq.ctx.active,
            timeout=20,
            what=lambda: f"the end of the swap ({seq.ctx.state}: {seq.blocking})",
        )
        # A cleared cause stops being reported.
        await until(lambda: not seq.blocking, what="no blocking cause left")
        await until(lambda: rig.station.book.rack_online("r1"), what="the rack back")
        await until(
            lambda: seq.swap.inventory.in_slot(3) is not None or cell.outcome == "aborted",
            what="the returned pack placed",
        )
        check_after(rig.sim, seq, cell)
        # The phase turns idle a moment before the record's transaction reaches the journal
        # thread; anything queued behind it there runs after that commit.
        await rig.station.journal.call(lambda conn: None)
        await check_record(rig.station.config.storage.dir, cell)


# --- (e): SIGKILL of the daemon process ----------------------------------------------------------


def journal_state(path: Path) -> str | None:
    """The swap's journalled phase, read as a tool would (read-only)."""
    try:
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=1.0)
    except sqlite3.Error:
        return None
    try:
        row = conn.execute("SELECT body FROM swap_current WHERE id = 1").fetchone()
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    return None if row is None else str(json.loads(row[0])["state"])


async def command(
    broker: Mosquitto, name: str, *, wait_s: float = 0.5, **args: str
) -> dict[str, object]:
    """Send `cmd/<name>` with MQTT v5 request/response and return the reply ({} if none)."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    reply_topic = f"test/replies/{time.monotonic_ns()}"
    async with aiomqtt.Client(
        broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        await client.subscribe(reply_topic, qos=1)
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = reply_topic
        props.CorrelationData = b"c1"
        body = json.dumps({"id": f"t-{uuid.uuid4()}", **args})
        await client.publish(f"swapstation/t1/cmd/{name}", body, qos=1, properties=props)
        try:
            async with asyncio.timeout(wait_s):
                async for message in client.messages:
                    assert isinstance(message.payload, bytes)
                    reply: dict[str, object] = json.loads(message.payload)
                    return reply
        except TimeoutError:
            pass  # not subscribed yet (the daemon is starting)
    return {}


KILLS = [c for c in CELLS if c.fault in RESTARTS]


@pytest.mark.asyncio
@pytest.mark.timeout(90)
@pytest.mark.parametrize("cell", KILLS, ids=lambda c: f"{c.step}-{c.fault.split()[0]}")
async def test_fault_matrix_sigkill(tmp_path: Path, broker: Mosquitto, cell: Cell) -> None:
    """SIGKILL or SIGTERM (an orderly stop: `systemctl restart`) at a step, then a restart."""
    (tmp_path / "sim").mkdir()
    sim = SimStation(tmp_path / "sim", [rack()], speed=SPEED, robot=True, plc=True)
    await sim.start()
    try:
        path = tmp_path / "station.toml"
        state_dir = tmp_path / "state"
        path.write_text(
            sim.controller_toml(
                station_id="t1",
                mqtt_host=broker.host,
                mqtt_port=broker.port,
                storage=state_dir,
                sections=SECTIONS,
            )
        )
        journal = state_dir / FILENAME
        daemon = DaemonProcess(path)
        daemon.start()
        try:
            reply: dict[str, object] = {}
            deadline = time.monotonic() + 20
            while not reply.get("ok"):  # until the station is up and ready to swap
                reply = await command(broker, "start_swap", vehicle_id="EV-1", pack_type="STD75")
                if time.monotonic() > deadline:
                    raise AssertionError(f"start_swap not accepted: {reply}")
                if not reply.get("ok"):
                    await asyncio.sleep(0.1)
            arrive(sim)
            await until(lambda: journal_state(journal) == cell.step, timeout=20, what=cell.step)
            sig = RESTARTS[cell.fault]
            daemon.signal(sig)
            assert daemon.wait(5) == (0 if sig == signal.SIGTERM else -sig)
            daemon.start()
            await until(lambda: journal_state(journal) == "idle", timeout=40, what="swap done")
        finally:
            daemon.stop()
        check_after(sim, None, cell)
        await check_record(state_dir, cell)
    finally:
        await sim.stop()


@pytest.mark.asyncio
@pytest.mark.timeout(150)
async def test_sigkill_at_random_moments_loses_no_record(tmp_path: Path, broker: Mosquitto) -> None:
    """Swaps back to back, the daemon killed at random moments: every swap recorded once."""
    rng = random.Random(20261125)  # a reproducible schedule
    (tmp_path / "sim").mkdir()
    packs = {n: SimPack(f"PK-{n}", soc=95.0) for n in range(1, 4)}
    spec = SimRackSpec("r1", list(range(1, 9)), packs=packs, poll_period_s=0.05)
    sim = SimStation(tmp_path / "sim", [spec], speed=SPEED, robot=True, plc=True)
    await sim.start()
    state_dir = tmp_path / "state"
    path = tmp_path / "station.toml"
    path.write_text(
        sim.controller_toml(
            station_id="t1",
            mqtt_host=broker.host,
            mqtt_port=broker.port,
            storage=state_dir,
            sections=SECTIONS,
        )
    )
    journal = state_dir / FILENAME
    daemon = DaemonProcess(path)
    started: list[str] = []
    kills = 0
    try:
        daemon.start()
        plc = sim.plc
        assert plc is not None
        for n in range(1, 5):
            await until(lambda: plc.vehicle is None, timeout=30, what="an empty bay")
            sim.arrive(f"EV-{n}", serial=f"OLD-{n}", soc=95.0, leave_s=5.0)
            reply: dict[str, object] = {}
            deadline = time.monotonic() + 30
            while not reply.get("ok"):
                reply = await command(broker, "start_swap", vehicle_id=f"EV-{n}", pack_type="STD75")
                assert time.monotonic() < deadline, f"start_swap not accepted: {reply}"
                if not reply.get("ok"):
                    await asyncio.sleep(0.2)
            result = reply["result"]
            assert isinstance(result, dict)
            started.append(str(result["swap_id"]))
            # Somewhere in this swap (or just after it), the daemon dies.
            await asyncio.sleep(rng.uniform(0.05, 2.0))
            daemon.signal(signal.SIGKILL)
            daemon.wait(5)
            kills += 1
            daemon.start()
            await until(lambda: journal_state(journal) == "idle", timeout=40, what="swap done")
    finally:
        daemon.stop()
        await sim.stop()
    from controller.store.journal import Journal

    store_journal = await Journal.open(state_dir, read_only=True)
    try:
        store = RecordStore(store_journal)
        records = await store.last(100)
        assert [r.swap_id for r in records] == started, "each swap recorded once, in order"
        assert (await store.verify()).ok
        assert kills == 4
    finally:
        await store_journal.close()


# --- a restart in a fault, a frozen controller: the process as systemd runs it ----------------


@contextlib.asynccontextmanager
async def station_process(
    tmp_path: Path, broker: Mosquitto
) -> AsyncIterator[tuple[SimStation, DaemonProcess, Path]]:
    """The simulated station, and the daemon as its own process with a swap started."""
    (tmp_path / "sim").mkdir()
    sim = SimStation(tmp_path / "sim", [rack()], speed=SPEED, robot=True, plc=True)
    await sim.start()
    try:
        path = tmp_path / "station.toml"
        path.write_text(
            sim.controller_toml(
                station_id="t1", mqtt_host=broker.host, mqtt_port=broker.port,
                storage=tmp_path / "state", sections=SECTIONS,
            )
        )  # fmt: skip
        daemon = DaemonProcess(path)
        daemon.start()
        try:
            reply: dict[str, object] = {}
            deadline = time.monotonic() + 20
            while not reply.get("ok"):
                reply = await command(broker, "start_swap", vehicle_id="EV-1", pack_type="STD75")
                assert time.monotonic() < deadline, f"start_swap not accepted: {reply}"
            yield sim, daemon, tmp_path / "state" / FILENAME
        finally:
            daemon.stop()
    finally:
        await sim.stop()


def swap_row(journal: Path) -> dict[str, Any]:
    conn = sqlite3.connect(f"{journal.as_uri()}?mode=ro", uri=True, timeout=1.0)
    try:
        row = conn.execute("SELECT body FROM swap_current WHERE id = 1").fetchone()
    finally:
        conn.close()
    body: dict[str, Any] = json.loads(row[0]) if row else {}
    return body


@pytest.mark.asyncio
@pytest.mark.timeout(90)
async def test_a_restart_in_a_fault_is_in_the_record(tmp_path: Path, broker: Mosquitto) -> None:
    async with station_process(tmp_path, broker) as (sim, daemon, journal):
        robot = sim.robot
        assert robot is not None
        robot.faults.jam_on = MsgType.REMOVE
        arrive(sim)
        await until(lambda: journal_state(journal) == "fault", timeout=20, what="fault")
        daemon.signal(signal.SIGKILL)
        daemon.wait(5)
        daemon.start()
        deadline = time.monotonic() + 20
        while not (await command(broker, "reset_fault", wait_s=1.0)).get("ok"):
            assert time.monotonic() < deadline, "reset_fault never accepted"
        await until(lambda: journal_state(journal) == "idle", timeout=40, what="swap done")
    store_journal = await Journal.open(journal.parent, read_only=True)
    try:
        (record,) = await RecordStore(store_journal).last(1)
    finally:
        await store_journal.close()
    assert record.outcome == "aborted"
    restarts = [a for a in record.operator_actions if a.action == "restart"]
    assert [a.detail for a in restarts] == ["fault"], record.operator_actions


@pytest.mark.asyncio
@pytest.mark.timeout(90)
async def test_a_frozen_controller_names_itself_not_the_station_io(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async with station_process(tmp_path, broker) as (sim, daemon, journal):
        arrive(sim)
        await until(lambda: journal_state(journal) == "removing", timeout=20, what="removing")
        daemon.signal(signal.SIGSTOP)  # the process freezes (swapped out, a debugger, ...)
        await asyncio.sleep(1.5)  # the freeze itself: what is being tested
        daemon.signal(signal.SIGCONT)
        await until(
            lambda: journal_state(journal) in {"fault", "storing", "fetching", "installing"},
            timeout=20,
            what="the swap going on, or faulted",
        )
        reason = str(swap_row(journal).get("reason") or "")
        print(f"after a 1.5 s freeze in removing: {journal_state(journal)}, reason {reason!r}")
        if journal_state(journal) == "fault":
            assert "stalled" in reason, reason
            assert "station I/O data too old" not in reason, reason
