"""The daemon's recent log, kept in memory for OCPP's GetLog, and its upload (HTTP PUT).

Only with `[ocpp]`: a handler on the root logger keeps the last `LINES` lines (INFO and up, as
the daemon logs them, secrets redacted), about 2 MB at most. GetLog uploads the lines within the
request's time range with one HTTP(S) PUT, on a thread of its own, within a deadline, to a public
host (or one `ocpp.log_upload_hosts` allows).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import http.client
import ipaddress
import logging
import socket
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from controller.errors import UploadRefusedError

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


# Uploads run on a thread of their own (never the loop's shared pool: a server that trickles
# its answer must not starve the schema checks, DNS or the journal's close of threads), one at
# a time, and are ended by closing their socket when their deadline passes.
_UPLOADS = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ocpp-log")


def check_host(url: str, allowed: Iterable[str]) -> str | None:
    """Refuse a host that is loopback, private, link-local or reserved, unless it is allowed.

    A name is resolved and every address judged: the station must not become a relay into its
    own plant network for whoever runs the CSMS. Returns the address to connect to (None: an
    allowed host, connected to by its name), so that the upload goes where the check looked,
    not where a second lookup might point.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    if host in set(allowed):
        return None
    try:
        infos = socket.getaddrinfo(host, parts.port or 443, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise UploadRefusedError(f"cannot resolve {host}: {exc.strerror}") from exc
    addresses = [str(info[4][0]).split("%", 1)[0] for info in infos]
    for text in addresses:
        address = ipaddress.ip_address(text)
        if not address.is_global or address.is_multicast:
            raise UploadRefusedError(
                f"{host} is {address}: not a public address (ocpp.log_upload_hosts allows one)"
            )
    if not addresses:
        raise UploadRefusedError(f"{host} has no address")
    return addresses[0]


def _put(
    url: str,
    body: bytes,
    timeout_s: float,
    allowed: list[str],
    opened: list[http.client.HTTPConnection],
) -> int:
    address = check_host(url, allowed)
    parts = urlsplit(url)
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = kind(parts.hostname or "", parts.port, timeout=timeout_s)
    if address is not None:
        # To the address judged (TLS still checks the certificate against the name).
        conn._create_connection = functools.partial(_connect_to, address)  # type: ignore[attr-defined]  # noqa: SLF001
    opened.append(conn)
    try:
        path = parts.path or "/"
        conn.request("PUT", f"{path}?{parts.query}" if parts.query else path, body=body,
                     headers={"Content-Type": "text/plain; charset=utf-8"})  # fmt: skip
        response = conn.getresponse()
        response.read(65_536)
        if response.status >= 400:
            raise OSError(f"HTTP {response.status} {response.reason}")
        return int(response.status)
    finally:
        conn.close()


def _connect_to(address: str, where: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
    return socket.create_connection((address, where[1]), *args, **kwargs)


async def put(url: str, body: bytes, timeout_s: float, allowed: list[str]) -> int:
    """PUT `body` at `url` within `timeout_s` in all; the HTTP status (an error raises).

    The host is judged again (`check_host`) and connected to at the address judged.
    """
    opened: list[http.client.HTTPConnection] = []
    loop = asyncio.get_running_loop()
    job = loop.run_in_executor(_UPLOADS, _put, url, body, timeout_s, allowed, opened)
    try:
        async with asyncio.timeout(timeout_s):
            return await asyncio.shield(job)
    except BaseException:
        for conn in opened:  # the thread's blocked read ends: it is free for the next upload
            if conn.sock is not None:
                with contextlib.suppress(OSError):
                    conn.sock.shutdown(socket.SHUT_RDWR)
        raise
