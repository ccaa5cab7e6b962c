"""Shared fixtures: a private mosquitto per test, never the shared broker on 1883."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from simstation.broker import Mosquitto


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A private mosquitto on a free loopback port, TCP_NODELAY on."""
    with Mosquitto(tmp_path / "broker") as b:
        yield b
