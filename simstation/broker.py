"""A private mosquitto on a free loopback port: for the tests, the demo and simulations.

Never the shared broker on 1883: each user gets its own process, config and log, with
`set_tcp_nodelay true` (without it QoS 1 round trips stall 40-80 ms on Nagle). A plain
listener by default; TLS, a password file and an ACL file for the security tests.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from simstation.children import die_with_parent

READY_TIMEOUT_S = 10.0
START_ATTEMPTS = 5


class BrokerError(RuntimeError):
    """The private broker could not be started."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the caller retries on a lost race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def find_mosquitto() -> str:
    """Path of the mosquitto binary (Debian installs it in /usr/sbin)."""
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise BrokerError("mosquitto is not installed (Debian: apt-get install mosquitto)")
    return found


@dataclass(frozen=True, slots=True)
class BrokerTls:
    """PEM files of a TLS listener; `require_certificate`: clients need one signed by `cafile`."""

    cafile: Path
    certfile: Path
    keyfile: Path
    require_certificate: bool = False

    def config_lines(self) -> list[str]:
        """The listener options (they follow its `listener` line)."""
        return [
            f"cafile {self.cafile}",
            f"certfile {self.certfile}",
            f"keyfile {self.keyfile}",
            f"require_certificate {'true' if self.require_certificate else 'false'}",
        ]


class Mosquitto:
    """One mosquitto process; `with Mosquitto(dir) as b:` starts it and stops it."""

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        extra_config: str = "",
        allow_anonymous: bool = True,
        persistent: bool = False,
        tls: BrokerTls | None = None,
        password_file: Path | None = None,
        acl_file: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.host = host
        self.port = port or 0
        self._fixed_port = port is not None
        self.extra_config = extra_config
        self.allow_anonymous = allow_anonymous
        self.persistent = persistent
        self.tls = tls
        self.password_file = password_file
        self.acl_file = acl_file
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "mosquitto.log"

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

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def config_text(self) -> str:
        """The mosquitto.conf this broker runs with."""
        lines = [
            f"listener {self.port} {self.host}",
            *(self.tls.config_lines() if self.tls is not None else []),
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            *([f"password_file {self.password_file}"] if self.password_file is not None else []),
            *([f"acl_file {self.acl_file}"] if self.acl_file is not None else []),
            "set_tcp_nodelay true",
            "persistence true" if self.persistent else "persistence false",
            *([f"persistence_location {self.workdir}/"] if self.persistent else []),
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "connection_messages true",
        ]
        if os.geteuid() == 0:
            # As root mosquitto would switch to the `mosquitto` user and lose our files.
            lines.append(f"user {getpass.getuser()}")
        return "\n".join(lines) + "\n" + self.extra_config

    def start(self) -> None:
        """Start on the configured port, or on a free one (retrying a lost race)."""
        binary = find_mosquitto()
        self.workdir.mkdir(parents=True, exist_ok=True)
        attempts = 1 if self._fixed_port else START_ATTEMPTS
        for _ in range(attempts):
            if not self._fixed_port:
                self.port = free_port(self.host)
            conf = self.workdir / "mosquitto.conf"
            conf.write_text(self.config_text())
            log = self.log_path.open("ab")
            self.proc = subprocess.Popen(  # noqa: S603 - fixed argv
                [binary, "-c", str(conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,  # noqa: PLW1509 - async-signal-safe: prctl, kill
            )
            log.close()
            if self._wait_ready():
                self._fixed_port = True  # restarts come back on the same port
                return
            self.stop()
        tail = self.log_path.read_text(errors="replace")[-800:] if self.log_path.exists() else ""
        raise BrokerError(f"mosquitto did not start on {self.host}:{self.port}:\n{tail}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), timeout=0.2),
            ):
                return True
            time.sleep(0.01)
        return False

    def stop(self) -> None:
        """Terminate (SIGTERM, then SIGKILL after 5 s); idempotent."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL: the broker dies without a goodbye."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()

    def restart(self) -> None:
        """Stop and start again on the same port (a persistent broker keeps its sessions)."""
        self.stop()
        self.start()
