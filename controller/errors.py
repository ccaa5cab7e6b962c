"""Every error the controller raises on purpose, under the product's one root.

`except SwapstationError` catches each of them and every driver error (the root is defined with
the drivers, `drivers/errors.py`, the bottom layer). Subclasses are named for what the caller
does next: a `RefusedError` was not done and its message says why (answer the requester); a
`MismatchError` faults the swap; a `StorageError` or a `ConfigError` stops the daemon.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from drivers.errors import DriverError, SwapstationError


class _Judged(Protocol):
    """A safety verdict, as far as its refusal needs it (controller/safety/supervisor.py)."""

    @property
    def why(self) -> str: ...


__all__ = [
    "BrokerRefusedError",
    "BusyError",
    "ConfigError",
    "ConfigIssue",
    "DriverError",
    "InventoryError",
    "JournalTooNewError",
    "MismatchError",
    "NoLongerWantedError",
    "NoPackError",
    "NoReplyError",
    "NotConnectedError",
    "OcppCallRefusedError",
    "OcppFrameError",
    "RecordError",
    "RefusedError",
    "SafetyRefusedError",
    "ShutdownRequested",
    "StorageError",
    "SwapstationError",
    "TaskExitedError",
    "UnreadableJournalError",
    "UploadRefusedError",
    "UsageError",
]

# --- refused: nothing was done, the message says why ----------------------------------------


class RefusedError(SwapstationError):
    """Not allowed now: nothing was done; the message says why (for the requester)."""


class BusyError(RefusedError):
    """Something in progress must end first (a swap; a full request queue)."""


class NoPackError(RefusedError):
    """No pack (or no free slot) for this swap; the message says why, for the back end."""


class NoLongerWantedError(RefusedError):
    """Between a charger's limit and its enable, something came to block it: not switched on."""


class SafetyRefusedError(RefusedError):
    """The safety supervisor refused a command: it was not sent; the message says why."""

    def __init__(self, verdict: _Judged) -> None:
        super().__init__(verdict.why)
        self.verdict = verdict


class BrokerRefusedError(RefusedError):
    """The broker refused the message (an ACL, a quota): retrying at once will not help."""


# --- what the swap knows, contradicted: a fault ----------------------------------------------


class MismatchError(SwapstationError):
    """What a device reports contradicts what the swap knows: a fault."""


class InventoryError(MismatchError):
    """A handover contradicts what the inventory knows."""


# --- links -----------------------------------------------------------------------------------


class NotConnectedError(SwapstationError):
    """Publishing needs a connection; the caller queues or retries after reconnect."""


class NoReplyError(SwapstationError, TimeoutError):
    """No reply came: the broker is unreachable or the station did not answer in time."""


# --- storage: the daemon cannot run safely without it ----------------------------------------


class StorageError(SwapstationError):
    """The store cannot be opened or written: the daemon cannot run safely."""


class JournalTooNewError(StorageError):
    """The journal was written by a newer release: a restart cannot fix it, a person must."""


class RecordError(StorageError):
    """A stored record cannot be read back as a swap record (corrupt or tampered)."""


class UnreadableJournalError(StorageError):
    """The journal cannot be read (missing, too new, too old, not ours to open)."""


# --- configuration and the command line: the person fixes it ---------------------------------


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a config: where, what rule, and the offending value."""

    path: str
    message: str
    got: str | None = None
    env_var: str | None = None

    def line(self, file: str) -> str:
        """Render as `FILE: key.path: message (got VALUE)`."""
        text = f"{file}: {self.path}: {self.message}" if self.path else f"{file}: {self.message}"
        if self.got is not None:
            text += f" (got {self.got})"
        if self.env_var is not None:
            text += f" [from environment variable {self.env_var}]"
        return text


class ConfigError(SwapstationError):
    """The config cannot be used; `issues` lists every reason."""

    def __init__(self, file: Path | str, issues: Iterable[ConfigIssue]) -> None:
        self.file = str(file)
        self.issues = list(issues)
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        """One line per issue."""
        return [issue.line(self.file) for issue in self.issues]


class UsageError(SwapstationError):
    """The command line is wrong: the caller fixes it (exit 2)."""


# --- the process ------------------------------------------------------------------------------


class TaskExitedError(SwapstationError):
    """A job that must run for the life of the daemon returned."""


class ShutdownRequested(SwapstationError):  # noqa: N818 - a signal, not a failure
    """Raised inside the daemon's task group to end it in order."""


class OcppFrameError(SwapstationError):
    """An OCPP frame or payload that breaks the protocol: answered with a CALLERROR of `code`.

    `code` is one of OCPP-J's error codes (controller/ocpp/wire.py).
    """

    def __init__(self, code: str, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description[:255]


class OcppCallRefusedError(SwapstationError):
    """The CSMS answered one of our requests with a CALLERROR (or an answer that breaks OCPP)."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code


class UploadRefusedError(RefusedError):
    """A GetLog location the station does not upload to (its host not public, nor allowed)."""
