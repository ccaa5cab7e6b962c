"""The product's error root, and the drivers' errors; subclasses say what the caller does next.

`SwapstationError` is defined here, in the bottom layer (drivers import nothing of the
controller), so that a driver's error is one of the product's too: `except SwapstationError`
catches every failure swapstation raises on purpose. The controller's own errors are all in
`controller/errors.py`.
"""

from __future__ import annotations

from collections.abc import Iterable


class SwapstationError(Exception):
    """Base of every error this project raises on purpose."""


class DriverError(SwapstationError):
    """Base of every error a driver raises on purpose."""


class DeviceTimeoutError(DriverError, TimeoutError):
    """The device did not answer in time: retry, then count it as a failed poll."""


class DeviceConnectionError(DriverError):
    """The transport is down (refused, closed, port gone): reconnect with backoff."""


class DeviceRejectedError(DriverError):
    """The device answered with an exception (illegal address, busy...): do not retry blindly."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class DecodeError(DriverError):
    """A reply did not have the expected shape: a device or profile mismatch."""


class CommandNotAppliedError(DriverError):
    """A write was accepted but the read-back shows another value."""


class RobotError(DriverError):
    """Base of the robot link's errors."""


class RobotRejectedError(RobotError):
    """The robot refused the command (NAK): nothing was done; the reason says why."""

    def __init__(self, message: str, reason: int) -> None:
        super().__init__(message)
        self.reason = reason


class RobotFaultError(RobotError):
    """The command failed while running (ERROR): the robot is faulted and may have moved."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class RobotStoppedError(RobotFaultError):
    """The command was pre-empted by STOP."""


class RobotLinkError(RobotError):
    """The link is down or was lost mid-command: the outcome is unknown; ask the robot."""


class RobotTimeoutError(RobotLinkError, TimeoutError):
    """No acknowledgement after every retry, or no completion within the command's timeout.

    The robot may have run the command with its answers lost: the outcome is unknown.
    """


class SpecError(DriverError):
    """A protocol or register spec is invalid (a configuration problem, not a runtime one)."""

    def __init__(self, file: str, issues: list[tuple[str, str]]) -> None:
        self.file = file
        self.issues = issues
        super().__init__(
            "\n".join(
                f"{file}: {path}: {msg}" if path else f"{file}: {msg}" for path, msg in issues
            )
        )


def format_loc(loc: Iterable[int | str]) -> str:
    """('racks', 1, 'unit_id') -> 'racks[1].unit_id'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out
