"""Logging to stderr for journald: text or JSON lines, with secrets redacted.

Under systemd (`JOURNAL_STREAM` set) every line carries an `<N>` syslog priority prefix, which
journald strips and turns into the entry's priority (so `journalctl -p warning` works for text
and JSON alike), and text lines carry no timestamp (journald stamps each line).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TextIO

REDACTED = "***"
_SYSLOG_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}
# LogRecord attributes that are not user "extra" fields.
_RECORD_KEYS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, extra fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        """Render a record as a JSON line."""
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(
            (k, v)
            for k, v in vars(record).items()
            if k not in _RECORD_KEYS and not k.startswith("_")
        )
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class JournalPriorityFormatter(logging.Formatter):
    """Prefix every line with `<N>`, the syslog priority journald files the line under."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self._inner = inner

    def format(self, record: logging.LogRecord) -> str:
        """Format with the wrapped formatter, then prefix each line (tracebacks included)."""
        prio = _SYSLOG_PRIORITY.get(record.levelno, 6)
        return "\n".join(f"<{prio}>{line}" for line in self._inner.format(record).splitlines())


class RedactingFormatter(logging.Formatter):
    """Wrap a formatter and replace every known secret in the final text."""

    def __init__(self, inner: logging.Formatter, secrets: Iterable[str]) -> None:
        super().__init__()
        self._inner = inner
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def format(self, record: logging.LogRecord) -> str:
        """Format with the wrapped formatter, then redact."""
        text = self._inner.format(record)
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text


def setup_logging(
    fmt: str = "text",
    level: str = "info",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> None:
    """Route all logging to stderr (or `stream`) in the chosen format; idempotent."""
    inner: logging.Formatter
    journald = bool(os.environ.get("JOURNAL_STREAM"))
    if fmt == "json":
        inner = JsonFormatter()
    elif journald:
        inner = logging.Formatter("%(name)s: %(message)s")  # journald stamps the time
    else:
        inner = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    if journald:
        inner = JournalPriorityFormatter(inner)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(RedactingFormatter(inner, secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Library chatter stays at warning. pymodbus reports every failed request itself, at
    # error level, and our drivers report the same failures in the station's terms, so its
    # own log is kept for debugging.
    for noisy in ("aiomqtt", "mqtt", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    logging.getLogger("pymodbus").setLevel(
        logging.WARNING if level == "debug" else logging.CRITICAL
    )
