"""`swapctl robot status|home|stop|reset`: the robot on its own, for commissioning.

Opens the robot's port (exclusively: not while the daemon holds it), synchronises, runs one
command and prints the robot's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

from controller.config.model import StationConfig
from controller.mqtt.robotpub import robot_state
from controller.runtime.devices import Links, build_robot, build_station_io_driver
from drivers.errors import DriverError, RobotLinkError
from drivers.robot.link import RobotLink
from drivers.robot.protocol import MsgType

EXIT_UNREACHABLE = 1
EXIT_REFUSED = 4


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
            elif action == "reset":
                refusal = await _reset_refusal(config, timeout_s)
                if refusal is not None:
                    print(f"robot reset refused: {refusal}", file=sys.stderr)
                    return EXIT_REFUSED
                await link.command(MsgType.RESET)
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


async def _reset_refusal(config: StationConfig, timeout_s: float) -> str | None:
    """Why a RESET must not be sent now (None: it may): the E-stop chain, read from the PLC.

    A RESET moves nothing, but it re-arms a robot that was stopped: not while the E-stop chain
    is open, nor while it cannot be read. A station without configured station I/O has
    nothing to read: the person at the robot decides.
    """
    links = Links()
    try:
        io = build_station_io_driver(config, links)
        if io is None:
            return None
        try:
            async with asyncio.timeout(timeout_s):
                reading = await io.read()
        except (DriverError, TimeoutError) as exc:
            return f"the station I/O cannot be read ({exc or 'no answer'}): E-stop unknown"
        if reading.inputs.get("estop_ok") is not True:
            return "the E-stop chain is open"
        return None
    finally:
        await links.close()
