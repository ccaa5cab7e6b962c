"""The robot link against the simulated robot on a real pty."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from drivers.errors import (
    RobotFaultError,
    RobotLinkError,
    RobotRejectedError,
    RobotStoppedError,
)
from drivers.robot.link import LinkState, RobotLink, RobotParams
from drivers.robot.protocol import MoveArgs, MsgType, RobotState, SlotArgs, Target
from simstation.charger import SimPack
from simstation.clock import SimClock
from simstation.robot import SimBay, SimRobot, Timing
from tests.rig import until

TIMEOUTS = dict.fromkeys(
    (
        "home",
        "move",
        "unlock",
        "remove",
        "store",
        "fetch",
        "install",
        "lock",
        "reset",
        "status",
        "stop",
        "sync",
    ),
    5.0,
)


class Rack:
    """A rack as the robot sees it: slots that hold packs."""

    def __init__(self, packs: dict[int, SimPack]) -> None:
        self.packs = dict(packs)

    def insert_pack(self, slot: int, pack: SimPack) -> None:
        assert slot not in self.packs
        self.packs[slot] = pack

    def remove_pack(self, slot: int) -> SimPack:
        return self.packs.pop(slot)

    def pack_in(self, slot: int) -> SimPack | None:
        return self.packs.get(slot)


@dataclass
class Bench:
    sim: SimRobot
    link: RobotLink
    rack: Rack
    bay: SimBay


@contextlib.asynccontextmanager
async def bench(
    tmp_path: Path,
    *,
    speed: float = 1000.0,
    timing: Timing | None = None,
    ack_timeout_s: float = 0.05,
    retries: int = 3,
    heartbeat_timeout_s: float = 1.0,
) -> AsyncIterator[Bench]:
    rack = Rack({3: SimPack("PK-FULL", soc=96.0)})
    bay = SimBay(pack=SimPack("PK-CAR", soc=21.0))
    sim = SimRobot(racks={3: rack, 4: rack}, vehicle=bay, clock=SimClock(speed), timing=timing)
    await sim.start(tmp_path / "robot")
    link = RobotLink(
        RobotParams(
            str(tmp_path / "robot"),
            ack_timeout_s=ack_timeout_s,
            retries=retries,
            heartbeat_timeout_s=heartbeat_timeout_s,
            timeouts=TIMEOUTS,
            reconnect_min_s=0.05,
            reconnect_max_s=0.2,
        )
    )
    task = asyncio.create_task(link.run())
    try:
        await asyncio.wait_for(link.ready.wait(), 5)
        yield Bench(sim, link, rack, bay)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await link.close()
        await sim.stop()


async def test_a_whole_exchange_conserves_packs(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        cmd = b.link.command
        await cmd(MsgType.MOVE, MoveArgs(Target.BAY))
        await cmd(MsgType.UNLOCK)
        status = await cmd(MsgType.REMOVE)
        assert status.pack_serial == "PK-CAR"
        await cmd(MsgType.MOVE, MoveArgs(Target.SLOT, 4))
        await cmd(MsgType.STORE, SlotArgs(4))
        await cmd(MsgType.MOVE, MoveArgs(Target.SLOT, 3))
        assert (await cmd(MsgType.FETCH, SlotArgs(3))).pack_serial == "PK-FULL"
        await cmd(MsgType.MOVE, MoveArgs(Target.BAY))
        await cmd(MsgType.INSTALL)
        status = await cmd(MsgType.LOCK)
        assert status.locked == 1
        assert 100 <= status.torque_dnm / 10 <= 140
        assert b.bay.pack is not None and b.bay.pack.serial == "PK-FULL" and b.bay.locked
        assert b.rack.packs == {4: b.rack.packs[4]} and b.rack.packs[4].serial == "PK-CAR"
        assert b.sim.holding is None
        assert b.link.status is not None and b.link.status.state == RobotState.IDLE


async def test_refusals_are_named(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        with pytest.raises(RobotRejectedError, match="wrong_position") as info:
            await b.link.command(MsgType.STORE, SlotArgs(4))
        assert info.value.reason == 4
        await b.link.command(MsgType.MOVE, MoveArgs(Target.SLOT, 4))
        with pytest.raises(RobotRejectedError, match="slot_empty"):
            await b.link.command(MsgType.FETCH, SlotArgs(4))
        with pytest.raises(RobotRejectedError, match="bad_argument"):
            await b.link.command(MsgType.MOVE, MoveArgs(Target.SLOT, 99))
        assert b.sim.executions == [(b.sim.executions[0][0], MsgType.MOVE)]


@pytest.mark.timeout(120)
async def test_1000_commands_over_a_noisy_line_each_executed_once(tmp_path: Path) -> None:
    instant = Timing(speed_m_s=1e9, settle_s=0.0)
    async with bench(
        tmp_path, timing=instant, ack_timeout_s=0.005, retries=40, heartbeat_timeout_s=5.0
    ) as b:
        b.sim.faults.corrupt_rate = 0.05  # 5 % of bytes, in both directions
        targets = [MoveArgs(Target.SLOT, 3), MoveArgs(Target.BAY), MoveArgs(Target.SLOT, 4)]
        for i in range(1000):
            status = await b.link.command(MsgType.MOVE, targets[i % 3])
            assert status.position == targets[i % 3].target
        assert len(b.sim.executions) == 1000
        # Consecutive commands never share a sequence number: none ran twice.
        seqs = [seq for seq, _ in b.sim.executions]
        assert all(a != c for a, c in itertools.pairwise(seqs))
        reassembly = b.link.reassembly
        assert reassembly is not None and reassembly.stats.bad_frames > 0
        assert b.link.stats.retransmits > 0


async def test_stop_pre_empts_a_running_move_within_50_ms(tmp_path: Path) -> None:
    slow = Timing(speed_m_s=0.01)  # 100 s a metre: the move is still running
    async with bench(tmp_path, speed=1.0, timing=slow) as b:
        move = asyncio.create_task(b.link.command(MsgType.MOVE, MoveArgs(Target.SLOT, 4)))
        await until(lambda: b.sim.state is RobotState.BUSY, what="moving")
        asked = time.monotonic()
        status = await b.link.stop()
        assert b.sim.stopped_at is not None
        halted_ms = (b.sim.stopped_at - asked) * 1000
        answered_ms = (time.monotonic() - asked) * 1000
        assert halted_ms <= 50, f"motion halted {halted_ms:.1f} ms after STOP"
        assert answered_ms <= 50
        assert status.state == RobotState.STOPPED
        with pytest.raises(RobotStoppedError):
            await move
        # Stopped means stopped: nothing moves until a reset.
        with pytest.raises(RobotRejectedError, match="bad_state"):
            await b.link.command(MsgType.HOME)
        await b.link.command(MsgType.RESET)
        assert (await b.link.command(MsgType.HOME)).position == Target.HOME


async def test_jam_and_torque_faults(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        b.sim.faults.jam_on = MsgType.MOVE
        with pytest.raises(RobotFaultError, match="jam"):
            await b.link.command(MsgType.MOVE, MoveArgs(Target.BAY))
        assert b.link.status is not None and b.link.status.position == Target.BETWEEN
        await b.link.command(MsgType.RESET)
        await b.link.command(MsgType.MOVE, MoveArgs(Target.BAY))
        b.sim.faults.torque_fail = True
        with pytest.raises(RobotFaultError, match="torque") as info:
            await b.link.command(MsgType.LOCK)
        assert info.value.code == 3
        assert b.link.status is not None and b.link.status.locked == 0


async def test_slow_acks_are_retried_but_run_once(tmp_path: Path) -> None:
    async with bench(tmp_path, ack_timeout_s=0.02, retries=10) as b:
        b.sim.faults.ack_delay_s = 0.05
        await b.link.command(MsgType.MOVE, MoveArgs(Target.BAY))
        assert b.link.stats.retransmits >= 1
        assert [kind for _, kind in b.sim.executions] == [MsgType.MOVE]


async def test_silence_drops_the_link_and_it_comes_back(tmp_path: Path) -> None:
    async with bench(tmp_path, heartbeat_timeout_s=0.3) as b:
        b.sim.faults.silent = True
        took = await until(lambda: b.link.state is not LinkState.READY, what="link lost")
        assert took < 1.0
        with pytest.raises(RobotLinkError):
            await b.link.command(MsgType.HOME)
        b.sim.faults.silent = False
        await asyncio.wait_for(b.link.ready.wait(), 5)
        await b.link.command(MsgType.HOME)
        assert b.link.stats.link_losses == 1


async def test_a_stall_of_our_own_is_not_blamed_on_the_robot(tmp_path: Path) -> None:
    # The controller process freezes (swapped out, a debugger) for three heartbeat timeouts.
    # The robot's frames wait in the port meanwhile: its silence is judged from our resume.
    async with bench(tmp_path, heartbeat_timeout_s=0.3) as b:
        time.sleep(0.9)  # noqa: ASYNC251 - the freeze itself: blocking the loop is the point
        resumed = time.monotonic()
        await until(lambda: b.link.last_rx > resumed, what="a frame after the resume")
        await b.link.command(MsgType.HOME)
        assert b.link.state is LinkState.READY
        assert b.link.stats.link_losses == 0


async def test_port_vanishes_mid_command_and_returns(tmp_path: Path) -> None:
    slow = Timing(speed_m_s=0.01)
    async with bench(tmp_path, speed=1.0, timing=slow) as b:
        move = asyncio.create_task(b.link.command(MsgType.MOVE, MoveArgs(Target.SLOT, 4)))
        await until(lambda: b.sim.state is RobotState.BUSY, what="moving")
        await b.sim.disconnect()
        with pytest.raises(RobotLinkError, match="outcome is unknown"):
            await move
        await b.sim.reconnect()
        await asyncio.wait_for(b.link.ready.wait(), 5)
        # After the link returns, the robot is asked, not blindly commanded again.
        status = await b.link.command(MsgType.STATUS)
        assert status.state == RobotState.BUSY


async def test_robot_restart_is_noticed_and_resynchronised(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        b.sim.power_cycle()
        await until(lambda: b.link.stats.connects == 2 and b.link.ready.is_set(), what="resync")
        await b.link.command(MsgType.HOME)


async def test_a_command_in_flight_across_a_restart_never_runs_twice(tmp_path: Path) -> None:
    slow = Timing(speed_m_s=0.01)
    async with bench(tmp_path, speed=1.0, timing=slow) as b:
        move = asyncio.create_task(b.link.command(MsgType.MOVE, MoveArgs(Target.SLOT, 4)))
        await until(lambda: b.sim.state is RobotState.BUSY, what="moving")
        b.sim.power_cycle()  # the move dies with the robot; the controller asks again
        with pytest.raises(RobotLinkError, match="outcome is unknown"):
            await move
        assert [kind for _, kind in b.sim.executions] == [MsgType.MOVE]
        await until(lambda: b.link.stats.connects == 2 and b.link.ready.is_set(), what="resync")


async def test_stop_with_its_first_frame_lost_still_halts_within_50_ms(tmp_path: Path) -> None:
    slow = Timing(speed_m_s=0.01)
    async with bench(tmp_path, speed=1.0, timing=slow) as b:
        move = asyncio.create_task(b.link.command(MsgType.MOVE, MoveArgs(Target.SLOT, 4)))
        await until(lambda: b.sim.state is RobotState.BUSY, what="moving")
        b.sim.faults.drop_next.add(MsgType.STOP)
        asked = time.monotonic()
        await b.link.stop()
        assert b.sim.stopped_at is not None
        assert (b.sim.stopped_at - asked) * 1000 <= 50
        with pytest.raises(RobotStoppedError):
            await move


async def test_no_acknowledgement_is_an_unknown_outcome_and_resynchronises(
    tmp_path: Path,
) -> None:
    async with bench(tmp_path, retries=1, ack_timeout_s=0.02) as b:
        b.sim.faults.silent = True  # the robot hears, and answers into the void
        with pytest.raises(RobotLinkError, match="outcome is unknown") as info:
            await b.link.command(MsgType.MOVE, MoveArgs(Target.BAY))
        assert isinstance(info.value, TimeoutError)
        assert _busy(b.link)  # it may be moving: nothing said otherwise
        b.sim.faults.silent = False
        await until(lambda: b.link.stats.connects >= 2 and b.link.ready.is_set(), what="resync")
        status = await b.link.command(MsgType.STATUS)
        assert status.position == Target.BAY  # it had run: asked, not repeated
        assert not _busy(b.link)
        assert [kind for _, kind in b.sim.executions] == [MsgType.MOVE]


def _busy(link: RobotLink) -> bool:
    return link.busy


async def test_a_restart_seen_in_a_report_resynchronises(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        b.sim.faults.silent = True  # no heartbeat tells the link first
        b.sim.power_cycle()
        b.sim.faults.silent = False
        with pytest.raises(RobotLinkError, match="restarted"):
            await b.link.command(MsgType.STATUS)
        await until(lambda: b.link.stats.connects == 2 and b.link.ready.is_set(), what="resync")
        await b.link.command(MsgType.HOME)


async def test_a_lost_link_fails_the_command_at_once(tmp_path: Path) -> None:
    slow = Timing(speed_m_s=0.01)
    async with bench(tmp_path, speed=1.0, timing=slow, heartbeat_timeout_s=0.3) as b:
        b.link.params = dataclasses.replace(b.link.params, reconnect_min_s=2.0)
        move = asyncio.create_task(b.link.command(MsgType.MOVE, MoveArgs(Target.SLOT, 4)))
        await until(lambda: b.sim.state is RobotState.BUSY, what="moving")
        b.sim.faults.silent = True
        started = time.monotonic()
        with pytest.raises(RobotLinkError, match="outcome is unknown"):
            await move
        assert time.monotonic() - started < 1.0  # not after the 2 s reconnect pause


async def test_a_command_in_flight_when_the_port_goes_is_unknown_never_not_sent(
    tmp_path: Path,
) -> None:
    # The link's port gone between two polls for a DONE, its transaction not yet settled (the
    # drop and the poll's timeout in one turn of the loop): the command went out, so its
    # outcome is unknown. It was once "robot link down", which reads as "not sent".
    slow = Timing(speed_m_s=0.01)
    async with bench(tmp_path, speed=1.0, timing=slow) as b:
        move = asyncio.create_task(b.link.command(MsgType.MOVE, MoveArgs(Target.SLOT, 4)))
        await until(lambda: b.sim.state is RobotState.BUSY, what="moving")
        b.link._proto = None  # as if gone, the pending transaction not finished yet
        with pytest.raises(RobotLinkError, match="outcome is unknown"):
            await move
