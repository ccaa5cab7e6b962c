"""Two linked pseudo-terminals with stable paths (socat), standing in for a serial cable.

The simulated device opens one end, the driver under test the other; both are raw (no echo,
no line discipline), as a real RS-485 adapter is.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from simstation.children import die_with_parent

READY_TIMEOUT_S = 5.0


class PtyPairError(RuntimeError):
    """socat is missing or did not create the pair."""


class PtyPair:
    """`with PtyPair(dir) as pair:` gives `pair.device_end` and `pair.controller_end` paths."""

    def __init__(
        self, directory: Path, name: str = "tty", *, controller_end: Path | None = None
    ) -> None:
        self.device_end = directory / f"{name}-device"
        self.controller_end = controller_end or directory / f"{name}-controller"
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
        """Start socat and wait until both links exist."""
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
