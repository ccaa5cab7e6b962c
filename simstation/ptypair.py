"""Two linked pseudo-terminals with stable paths (socat), standing in for a serial cable.

The simulated device opens one end, the driver under test the other; both are raw (no echo,
no line discipline), as a real RS-485 adapter is. A pty another program holds (opened and
locked, as our serial drivers lock theirs) would leave the driver under test without its port:
`busy` names why, and `PtyPair.start` then tries a fresh pair, saying so on stderr.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

from simstation.children import die_with_parent

READY_TIMEOUT_S = 5.0
FRESH_TRIES = 3  # ptys tried before giving up on a port another program holds


def busy(tty_path: str) -> str | None:
    """Why a driver could not have `tty_path` to itself (opened, exclusively locked); None if free.

    The lock taken to find out is released before returning.
    """
    try:
        fd = os.open(tty_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        return f"cannot be opened ({exc.strerror})"
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return "is locked by another process"
    finally:
        os.close(fd)  # closing drops the lock
    return None


def say_on_stderr(line: str) -> None:
    """Print a line for the person running the simulator (not only the log)."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


class PtyPairError(RuntimeError):
    """socat is missing or did not create the pair."""


class PtyPair:
    """`with PtyPair(dir) as pair:` gives `pair.device_end` and `pair.controller_end` paths."""

    def __init__(
        self,
        directory: Path,
        name: str = "tty",
        *,
        controller_end: Path | None = None,
        say: Callable[[str], None] = say_on_stderr,
    ) -> None:
        self.name = name
        self.device_end = directory / f"{name}-device"
        self.controller_end = controller_end or directory / f"{name}-controller"
        self._say = say
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start socat and wait until both links exist; a pair another program holds is replaced."""
        why: str | None = ""
        for attempt in range(1, FRESH_TRIES + 1):
            self._start_socat()
            node = os.path.realpath(self.controller_end)
            why = busy(node)
            if why is None:
                return
            self.stop()
            fresh = "; trying a fresh one" if attempt < FRESH_TRIES else ""
            self._say(f"{self.name}: the pty {node} {why}{fresh}")
        raise PtyPairError(
            f"{self.name}: {FRESH_TRIES} ptys in a row could not be had (the last {why})"
        )

    def _start_socat(self) -> None:
        socat = shutil.which("socat")
        if socat is None:
            raise PtyPairError("socat is not installed (Debian: apt-get install socat)")
        for path in (self.device_end, self.controller_end):
            path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self._proc = subprocess.Popen(  # noqa: S603 - fixed argv
            [
                socat,
                f"pty,raw,echo=0,link={self.device_end}",
                f"pty,raw,echo=0,link={self.controller_end}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - async-signal-safe: prctl, kill
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not (self.device_end.exists() and self.controller_end.exists()):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                self.stop()
                raise PtyPairError(f"socat did not create the pty pair: {err}")
            time.sleep(0.005)

    def stop(self) -> None:
        """Stop socat (both ends vanish); idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
