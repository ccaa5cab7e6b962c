"""The daemon's event loop: uvloop where it can be imported, else asyncio's own.

Measured with `bench/poll.py` (a 40-slot rack over Modbus TCP): the controller's CPU per poll
cycle falls from about 5.7 to 4.2 ms and the cycle's p99 from about 19 to 15 ms with uvloop;
the loop's own overhead is a large share of every Modbus request, MQTT message and journal
hand-back. The code uses nothing but the asyncio API, so where uvloop is missing (a platform
without a wheel, a stripped install) the daemon runs on asyncio's loop and says so once; the
tests run both (in-process tests use pytest-asyncio's).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

_log = logging.getLogger(__name__)

T = TypeVar("T")


def loop_factory() -> tuple[str, Callable[[], asyncio.AbstractEventLoop]]:
    """The loop to run on: ("uvloop", its factory), or ("asyncio", asyncio's) without uvloop."""
    try:
        import uvloop
    except ImportError:
        return "asyncio", asyncio.new_event_loop
    return "uvloop", uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to completion on a new event loop (like `asyncio.run`)."""
    name, factory = loop_factory()
    if name != "uvloop":
        _log.info("uvloop not available: running on asyncio's event loop")
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
