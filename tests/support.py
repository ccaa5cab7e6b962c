"""Test helpers: the daemon as a real process, an independent MQTT subscriber process."""

from __future__ import annotations

import os
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

from controller.safety.motionlog import MotionEntry, select_sync
from controller.store.journal import FILENAME
from controller.swap import interlocks
from controller.swap.phase import Phase
from simstation.broker import Mosquitto

REPO = Path(__file__).resolve().parent.parent


def station_toml(
    broker: Mosquitto | None,
    storage: Path,
    *,
    station_id: str = "t1",
    extra: str = "",
    mqtt_extra: str = "",
) -> str:
    """A minimal valid station config pointing at `broker`."""
    host, port = (broker.host, broker.port) if broker else ("127.0.0.1", 1)
    return (
        f'station_id = "{station_id}"\n'
        f'[mqtt]\nhost = "{host}"\nport = {port}\n'
        "reconnect_min_s = 0.1\nreconnect_max_s = 0.5\nkeepalive_s = 5\n"
        f"{mqtt_extra}\n"
        f'[storage]\ndir = "{storage}"\n'
        '[logging]\nlevel = "debug"\n'
        f"{extra}\n"
    )


class Subscriber:
    """`mosquitto_sub` as an independent process; lines are `topic payload`."""

    def __init__(self, broker: Mosquitto, topic: str, *extra_args: str) -> None:
        exe = shutil.which("mosquitto_sub")
        assert exe, "mosquitto_sub is missing (Debian package mosquitto-clients)"
        self.proc = subprocess.Popen(
            [
                exe,
                "-V",
                "mqttv5",
                "-h",
                broker.host,
                "-p",
                str(broker.port),
                "-q",
                "1",
                "-t",
                topic,
                "-v",
                *extra_args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
        )
        self.lines: list[str] = []
        self._buf = b""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                # mosquitto_sub can sit out a SIGTERM while it reconnects (seen once in CI,
                # a `-c` session): the test's assertions are done, the client goes anyway.
                self.proc.kill()
                self.proc.wait(timeout=5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 10.0) -> str:
        """Block until a line (new or already seen) matches; return it."""
        for line in self.lines:
            if predicate(line):
                return line
        deadline = time.monotonic() + timeout
        stdout = self.proc.stdout
        assert stdout is not None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching message within {timeout} s; saw {self.lines}")
            ready, _, _ = select.select([stdout], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(stdout.fileno(), 65536)
            if not chunk:
                raise AssertionError(f"mosquitto_sub ended; saw {self.lines}")
            self._buf += chunk
            *complete, self._buf = self._buf.split(b"\n")
            # Every line of the chunk is kept, also those after a match (the next wait_for
            # looks for them among the lines already seen).
            lines = [raw.decode(errors="replace") for raw in complete]
            self.lines.extend(lines)
            for line in lines:
                if predicate(line):
                    return line

    def wait_line(self, expected: str, timeout: float = 10.0) -> str:
        """Wait for an exact line."""
        return self.wait_for(lambda line: line == expected, timeout)


class DaemonProcess:
    """`python -m controller run` as a child process, as systemd would run it."""

    def __init__(
        self,
        config: Path,
        *,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.config = config
        self.log_path = log_path or config.with_suffix(".log")
        base = {k: v for k, v in os.environ.items() if not k.startswith("SWAPSTATION_")}
        base.pop("NOTIFY_SOCKET", None)
        base.pop("WATCHDOG_USEC", None)
        self.env = {**base, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

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
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "controller", "run", "--config", str(self.config)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def run_swapctl(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run `swapctl ARGS` in a child process with a clean SWAPSTATION_ environment."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SWAPSTATION_")}
    return subprocess.run(
        [sys.executable, "-m", "controller", *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


def motion_log(storage: Path) -> list[MotionEntry]:
    """The journal's motion log, read-only (the daemon may be running)."""
    path = storage / FILENAME
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        return select_sync(conn)
    finally:
        conn.close()


def assert_motion_within_interlocks(entries: list[MotionEntry]) -> int:
    """Every motion the supervisor let out of a swap's phase had that phase's interlocks true.

    Returns how many motions were checked.
    """
    checked = 0
    for e in entries:
        if not e.motions or e.verdict != "allowed" or e.phase is None:
            continue
        facts = {k: v for k, v in e.facts.items() if v is None or isinstance(v, bool)}
        failing = [c.name for c in interlocks.failing(Phase(e.phase), facts)]
        assert not failing, f"{e.command} sent in {e.phase} with {failing} false"
        checked += 1
    return checked


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


EC = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2")


def make_ca(d: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA (certificate, key) for TLS tests, made with openssl."""
    crt, key = d / f"{name}.crt", d / f"{name}.key"
    _openssl(
        "req", "-x509", *EC, "-keyout", key, "-out", crt, "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return crt, key


def make_cert(d: Path, ca: tuple[Path, Path], cn: str, *exts: str) -> tuple[Path, Path]:
    """A certificate (and key) signed by `ca`, with extensions `exts`."""
    crt, key = d / f"{cn}.crt", d / f"{cn}.key"
    added = [a for ext in exts for a in ("-addext", ext)]
    _openssl(
        "req", "-x509", "-CA", ca[0], "-CAkey", ca[1], *EC, "-keyout", key, "-out", crt,
        "-subj", f"/CN={cn}", "-addext", "basicConstraints=critical,CA:FALSE", *added,
    )  # fmt: skip
    return crt, key
