"""The daemon's loop: uvloop when it imports, asyncio's own when it does not."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from controller.runtime import eventloop
from tests.support import REPO


def test_uvloop_when_it_imports() -> None:
    name, _ = eventloop.loop_factory()
    assert name == "uvloop"


def test_without_uvloop_the_daemon_runs_on_asyncio() -> None:
    # A fresh interpreter where `import uvloop` fails, as on a platform without its wheel.
    script = (
        "import sys; sys.modules['uvloop'] = None\n"
        "import asyncio\n"
        "from controller.runtime import eventloop\n"
        "async def main():\n"
        "    await asyncio.sleep(0)\n"
        "    return type(asyncio.get_running_loop()).__module__\n"
        "print(eventloop.loop_factory()[0], eventloop.run(main()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["asyncio", "asyncio.unix_events"]


def test_the_daemon_s_loop_runs_a_coroutine() -> None:
    async def main() -> str:
        await asyncio.sleep(0)
        return type(asyncio.get_running_loop()).__module__

    assert eventloop.run(main()).startswith("uvloop")
