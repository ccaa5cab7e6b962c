"""The daemon's recent log, kept in memory for OCPP's GetLog, and its upload (HTTP PUT).

Only with `[ocpp]`: a handler on the root logger keeps the last `LINES` lines (INFO and up, as
the daemon logs them, secrets redacted), about 2 MB at most. GetLog uploads the lines within the
request's time range with one HTTP(S) PUT, on a worker thread.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import urllib.request
from collections.abc import Iterable

LINES = 10_000
LINE_MAX = 200  # characters kept of one line (a traceback's lines come as one record)
FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class RecentLog(logging.Handler):
    """The last lines the daemon logged, with their times."""

    def __init__(self, secrets: Iterable[str] = (), lines: int = LINES) -> None:
        super().__init__(level=logging.INFO)
        self.lines: collections.deque[tuple[float, str]] = collections.deque(maxlen=lines)
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        self.setFormatter(logging.Formatter(FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        """Keep one record, formatted and redacted."""
        try:
            text = self.format(record)
            for secret in self._secrets:
                text = text.replace(secret, "***")
            for line in text.splitlines()[:50]:
                self.lines.append((record.created, line[:LINE_MAX]))
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)

    def text(self, oldest: float | None = None, latest: float | None = None) -> bytes:
        """The lines between `oldest` and `latest` (epoch seconds), as UTF-8."""
        kept = [
            line
            for at, line in list(self.lines)
            if (oldest is None or at >= oldest) and (latest is None or at <= latest)
        ]
        return ("\n".join(kept) + "\n").encode("utf-8") if kept else b""


def _put(url: str, body: bytes, timeout_s: float) -> int:
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked: http or https
        url, data=body, method="PUT", headers={"Content-Type": "text/plain; charset=utf-8"}
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
        return int(response.status)


async def put(url: str, body: bytes, timeout_s: float) -> int:
    """PUT `body` at `url` on a worker thread; the HTTP status (an error status raises)."""
    return await asyncio.to_thread(_put, url, body, timeout_s)
