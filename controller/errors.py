"""The error root of the controller; subclasses say what the caller does next."""

from __future__ import annotations


class SwapstationError(Exception):
    """Base of every error this project raises on purpose."""


class ShutdownRequested(SwapstationError):  # noqa: N818 - a signal, not a failure
    """Raised inside the daemon's task group to end it in order."""
