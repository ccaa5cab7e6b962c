"""sd_notify(3) written out: one datagram per message to `$NOTIFY_SOCKET`.

We do not use the `sdnotify` package: it swallows every error and knows nothing of the
watchdog. Sending never raises: a lost notification must not stop the daemon, but the
first failure is logged so a misconfigured unit is visible.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

_log = logging.getLogger(__name__)


class Notifier:
    """Talks to the service manager; a no-op outside systemd."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        if raw.startswith("@"):
            self._address = b"\0" + raw[1:].encode()
        elif raw.startswith("/"):
            self._address = raw
        self._watchdog_s: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self._watchdog_s = int(usec) / 1_000_000
        self._sock: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        """True when a notify socket was given."""
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between pings: half the manager's timeout, or None without a watchdog."""
        return None if self._watchdog_s is None else self._watchdog_s / 2

    def notify(self, **fields: str) -> bool:
        """Send `KEY=value` lines (keys upper-cased); True if the datagram went out."""
        if self._address is None:
            return False
        payload = "\n".join(f"{k.upper()}={v}" for k, v in fields.items()).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(payload, self._address)
        except OSError as exc:
            if not self._warned:
                _log.warning("sd_notify to %r failed: %s", self._address, exc)
                self._warned = True
            return False
        return True

    def ready(self, status: str = "") -> bool:
        """READY=1, optionally with STATUS."""
        return self.notify(ready="1", **({"status": status} if status else {}))

    def status(self, text: str) -> bool:
        """STATUS=<one line>."""
        return self.notify(status=text.replace("\n", " "))

    def watchdog(self) -> bool:
        """WATCHDOG=1: the control loop is alive."""
        return self.notify(watchdog="1")

    def stopping(self) -> bool:
        """STOPPING=1: orderly shutdown has begun."""
        return self.notify(stopping="1")

    def close(self) -> None:
        """Close the socket; idempotent."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
