"""`swapctl robot status|home|stop`: the robot on its own, for commissioning.

Opens the robot's port (exclusively: not while the daemon holds it), synchronises, runs one
command and prints the robot's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

from controller.config import StationConfig
from controller.devices import build_robot
from controller.robotpub import robot_state
from drivers.errors import DriverError, RobotLinkError
from drivers.robot.link import RobotLink
from drivers.robot.protocol import MsgType

EXIT_UNREACHABLE = 1


async def robot_command(config: StationConfig, action: str, timeout_s: float) -> int:
    """Run `action` against the configured robot; print its state; return the exit code."""
    link = build_robot(config)
    if link is None:
        print("no robot in this config ([robot] section)", file=sys.stderr)
        return 2
    runner = asyncio.create_task(link.run(), name="robot")
    try:
        try:
            async with asyncio.timeout(timeout_s):
                await link.ready.wait()
        except TimeoutError:
            print(
                f"robot on {link.params.device}: no answer within {timeout_s:g} s (port missing,"
                " busy with the daemon, or the robot is off)",
                file=sys.stderr,
            )
            return EXIT_UNREACHABLE
        try:
            if action == "stop":
                await link.stop()
            elif action == "home":
                await link.command(MsgType.HOME)
            else:
                await link.command(MsgType.STATUS)
        except DriverError as exc:
            print(f"robot {action}: {exc}", file=sys.stderr)
            _print(link)
            return EXIT_UNREACHABLE if isinstance(exc, RobotLinkError) else 3
        _print(link)
        return 0
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        await link.close()


def _print(link: RobotLink) -> None:
    state = robot_state(link)
    where = state.position if state.slot is None else f"slot {state.slot}"
    print(f"robot      {link.params.device} ({state.link}, boot {state.boot_id or 0:04x})")
    print(f"state      {state.state}, at {where}")
    print(f"holding    {state.holding or 'nothing'}")
    print(f"fault      {state.fault or 'none'}")
    print(
        f"lock       {'locked' if state.locked else 'not locked'},"
        f" last torque {state.lock_torque_nm or 0:.1f} N*m"
    )
    print(
        f"link       {state.stats.commands} commands, {state.stats.retransmits} retransmits,"
        f" {state.stats.bad_frames} bad frames"
    )
