"""The swap sequence end to end: daemon in-process, rack, robot, PLC and vehicle simulated."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from controller.safety.motionlog import MotionEntry
from controller.store.records import RecordStore
from simstation.broker import Mosquitto
from simstation.charger import SimPack
from simstation.station import SimRackSpec
from tests.rig import Rig, running, until
from tests.support import assert_motion_within_interlocks, motion_log, run_swapctl

pytestmark = pytest.mark.asyncio

SPEED = 200.0
SECTIONS = "[swap]\nmin_dispense_soc = 80\n"


def rack(**extra: object) -> SimRackSpec:
    packs = {
        1: SimPack("PK-A", soc=95.0),
        2: SimPack("PK-B", soc=85.0),
        3: SimPack("PK-C", soc=40.0),
    }
    return SimRackSpec("r1", [1, 2, 3, 4], packs=packs, poll_period_s=0.05, **extra)  # type: ignore[arg-type]


def swap_state(rig: Rig) -> str:
    seq = rig.station.sequencer
    assert seq is not None
    return seq.ctx.state


def check_interlocks_held(rig: Rig) -> None:
    """Every motion command went out with its interlocks true (the journal's motion log)."""
    entries = motion_log(rig.station.config.storage.dir)
    assert assert_motion_within_interlocks(entries) > 0


async def test_a_full_swap_runs_end_to_end(tmp_path: Path, broker: Mosquitto) -> None:
    async with running(
        tmp_path, broker, [rack()], speed=SPEED, sections=SECTIONS, robot=True, plc=True
    ) as rig:
        seq = rig.station.sequencer
        assert seq is not None
        await until(
            lambda: not seq.blocking and seq.packs_ready().get("STD75") == 2, what="station ready"
        )
        started = time.monotonic()
        started_swap = await seq.request("start_swap", vehicle_id="EV-1", pack_type="STD75")
        assert started_swap.result is not None
        swap_id = str(started_swap.result["swap_id"])
        assert seq.ctx.reserved_serial == "PK-A" and seq.ctx.free_slot == 4
        rig.sim.arrive("EV-1", serial="PK-OLD", soc=12.0)
        await until(lambda: swap_state(rig) == "idle", timeout=15, what="swap done")
        took = time.monotonic() - started
        plc = rig.sim.plc
        assert plc is not None
        assert [v.vehicle_id for v in plc.departed] == ["EV-1"]
        assert plc.departed[0].pack is not None and plc.departed[0].pack.serial == "PK-A"
        assert plc.accidents == 0
        sim_rack = rig.sim.racks["r1"]
        old = sim_rack.pack_in(4)
        assert old is not None and old.serial == "PK-OLD"
        assert sim_rack.pack_in(1) is None
        check_interlocks_held(rig)
        records = RecordStore(rig.station.journal)
        record = await records.get(swap_id)
        assert record is not None
        assert record.outcome == "completed"
        assert record.pack_out is not None and record.pack_out.serial == "PK-OLD"
        assert record.pack_in is not None and record.pack_in.serial == "PK-A"
        assert (record.slot_out, record.slot_in) == (4, 1)
        assert (await records.verify()).ok
        inv = seq.swap.inventory
        assert inv.get("PK-OLD") is not None and inv.get("PK-OLD").slot == 4  # type: ignore[union-attr]
        assert inv.get("PK-A") is None  # left with the vehicle
        print(f"swap took {took:.2f} s wall clock; overhead {sorted(seq.swap.overheads_ms)}")
        assert took < 2.0
        # The swap's commands to machinery, as the safety supervisor judged them, exported.
        config = str(rig.config_path)
        out = await asyncio.to_thread(run_swapctl, "records", "motion", "--config", config,
                                      "--swap", swap_id)  # fmt: skip
        assert out.returncode == 0, out.stderr
        entries = [MotionEntry.model_validate_json(line) for line in out.stdout.splitlines()]
        assert {e.swap_id for e in entries} == {swap_id}
        assert all(e.verdict == "allowed" for e in entries)
        robot = [e.command for e in entries if e.device == "robot" and e.motions]
        assert [c.split()[1] for c in robot] == [
            "MOVE", "UNLOCK", "REMOVE", "MOVE", "STORE", "MOVE", "FETCH", "MOVE", "INSTALL",
            "LOCK", "HOME",
        ]  # fmt: skip
        lift = [e for e in entries if e.motions == ["lift_lower"]]
        assert lift and lift[0].facts["pack_locked"] is True
        out = await asyncio.to_thread(run_swapctl, "records", "motion", "--config", config,
                                      "--verify")  # fmt: skip
        assert out.returncode == 0 and out.stdout.endswith("chain intact\n"), out


def two_racks() -> list[SimRackSpec]:
    return [
        SimRackSpec("r1", [1, 2, 3, 4], packs={1: SimPack("PK-A", soc=95.0)}, poll_period_s=0.05),
        SimRackSpec("r2", [5, 6], packs={5: SimPack("PK-C", soc=94.0)}, poll_period_s=0.05),
    ]


async def _events(rig: Rig, kind: str) -> list[dict[str, object]]:
    rows = await rig.station.journal.call(
        lambda c: c.execute("SELECT body FROM events WHERE kind = ?", (kind,)).fetchall()
    )
    return [json.loads(body) for (body,) in rows]


async def test_a_reserved_pack_whose_rack_goes_offline_is_waited_for_not_swapped(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async with running(
        tmp_path, broker, two_racks(), speed=SPEED, sections=SECTIONS, robot=True, plc=True
    ) as rig:
        seq = rig.station.sequencer
        assert seq is not None
        await until(
            lambda: not seq.blocking and seq.packs_ready().get("STD75") == 2,
            what="station ready",
        )
        await seq.request("start_swap", vehicle_id="EV-1", pack_type="STD75")
        assert (seq.ctx.reserved_slot, seq.ctx.reserved_serial) == (1, "PK-A")
        await rig.sim.racks["r1"].go_offline()
        rig.sim.arrive("EV-1", serial="PK-OLD", soc=12.0)
        await until(
            lambda: any("waiting for its data" in c for c in seq.blocking),
            what="blocked on the reserved pack",
        )
        assert seq.ctx.state == "positioned"
        assert (seq.ctx.reserved_slot, seq.ctx.reserved_serial) == (1, "PK-A")
        await rig.sim.racks["r1"].come_back()
        await until(lambda: swap_state(rig) == "idle", timeout=20, what="swap done")
        record = (await RecordStore(rig.station.journal).last(1))[0]
        assert record.pack_in is not None and record.pack_in.serial == "PK-A"
        assert record.slot_in == 1
        assert await _events(rig, "swap_reserved") == []


async def test_a_reserved_pack_found_unfit_is_replaced_in_the_open(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async with running(
        tmp_path, broker, two_racks(), speed=SPEED, sections=SECTIONS, robot=True, plc=True
    ) as rig:
        seq = rig.station.sequencer
        assert seq is not None
        await until(
            lambda: not seq.blocking and seq.packs_ready().get("STD75") == 2,
            what="station ready",
        )
        await seq.request("start_swap", vehicle_id="EV-1", pack_type="STD75")
        assert seq.ctx.reserved_slot == 1
        rig.sim.racks["r1"].set_fault(1, 7)  # known unfit: a charger fault, on fresh data
        await until(lambda: "charger_fault" in rig.alarm_codes("slot:1"), what="fault seen")
        rig.sim.arrive("EV-1", serial="PK-OLD", soc=12.0)
        await until(lambda: swap_state(rig) == "idle", timeout=20, what="swap done")
        (event,) = await _events(rig, "swap_reserved")
        assert event["instead_of"] == {"slot": 1, "serial": "PK-A", "free_slot": 2}
        assert event["reserved"]["slot"] == 5 and event["reserved"]["serial"] == "PK-C"  # type: ignore[index]
        assert "slot alarm" in str(event["why"])
        record = (await RecordStore(rig.station.journal).last(1))[0]
        assert record.pack_in is not None and record.pack_in.serial == "PK-C"
