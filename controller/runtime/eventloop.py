"""The daemon's event loop: uvloop, a libuv-based drop-in for asyncio's loop.

Measured with `bench/poll.py` (a 40-slot rack over Modbus TCP): the controller's CPU per poll
cycle falls from about 5.7 to 4.2 ms and the cycle's p99 from about 19 to 15 ms; the loop's own
overhead is a large share of every Modbus request, MQTT message and journal hand-back. The code
uses nothing but the asyncio API, and the tests run it on asyncio's own loop too (in-process
tests use pytest-asyncio's), so either loop is exercised.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to completion on a new uvloop event loop (like `asyncio.run`)."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
