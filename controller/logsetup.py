"""Logging to stderr for journald: text or JSON lines, with secrets redacted.

Under systemd (`JOURNAL_STREAM` set) text lines carry an `<N>` syslog priority prefix, which
journald turns into the entry's priority, and no timestamp (journald stamps each line).
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


class JournalTextFormatter(logging.Formatter):
    """`<N>logger: message` for journald, which adds time and priority itself."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """Prefix every line with the syslog priority so multi-line text keeps its level."""
        prio = _SYSLOG_PRIORITY.get(record.levelno, 6)
        text = super().format(record)
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines())


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
    if fmt == "json":
        inner = JsonFormatter()
    elif os.environ.get("JOURNAL_STREAM"):
        inner = JournalTextFormatter()
    else:
        inner = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(RedactingFormatter(inner, secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Library chatter stays at warning unless we debug.
    for noisy in ("pymodbus", "aiomqtt", "mqtt", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
