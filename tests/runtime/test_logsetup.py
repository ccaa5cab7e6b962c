"""Logging: text and JSON lines on stderr, secrets redacted whatever logs them."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from controller.runtime.logsetup import setup_logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def test_json_lines_carry_level_logger_message_and_extras(restore_logging: None) -> None:
    out = io.StringIO()
    setup_logging("json", "info", stream=out)
    logging.getLogger("controller.test").info("rack %s offline", "a", extra={"rack": "a"})
    logging.getLogger("controller.test").debug("not shown at info")
    entry = json.loads(out.getvalue())
    assert entry["level"] == "info"
    assert entry["logger"] == "controller.test"
    assert entry["msg"] == "rack a offline"
    assert entry["rack"] == "a"
    assert entry["ts"].endswith("+00:00")
    assert len(out.getvalue().splitlines()) == 1


def test_secrets_are_redacted_in_messages_and_tracebacks(restore_logging: None) -> None:
    out = io.StringIO()
    setup_logging("text", "debug", secrets=["hunter2"], stream=out)
    log = logging.getLogger("controller.test")
    log.info("connecting with %s", "hunter2")
    try:
        int("hunter2")
    except ValueError:
        log.exception("failed")
    text = out.getvalue()
    assert "hunter2" not in text
    assert text.count("***") >= 2


def test_journald_text_has_priority_prefix(
    restore_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    out = io.StringIO()
    setup_logging("text", "info", stream=out)
    logging.getLogger("controller.test").warning("two\nlines")
    assert out.getvalue().splitlines() == ["<4>controller.test: two", "<4>lines"]


def test_journald_json_lines_keep_their_priority(
    restore_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    out = io.StringIO()
    setup_logging("json", "info", stream=out)
    logging.getLogger("controller.test").error("rack offline")
    line = out.getvalue().rstrip("\n")
    assert line.startswith("<3>{")
    assert json.loads(line[3:])["msg"] == "rack offline"
