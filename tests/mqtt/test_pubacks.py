"""The aiomqtt shim: pinned to the release it was written against, and still reaching in.

`controller/mqtt/pubacks.py` uses aiomqtt internals to see a v5 PUBACK's reason code. Another
aiomqtt release may change them without a word: this test fails on any other version, so an
upgrade is a decision (read aiomqtt's `publish` again, update the shim and the pin). The
refusal itself is tested against a real broker's ACL in test_security.py.
"""

from __future__ import annotations

import inspect
import tomllib
from importlib.metadata import version

import aiomqtt

from controller.mqtt.pubacks import AIOMQTT_VERSION, CheckedClient
from tests.support import REPO


def test_aiomqtt_is_the_release_the_shim_was_written_for() -> None:
    assert version("aiomqtt") == AIOMQTT_VERSION


def test_pyproject_pins_aiomqtt_exactly() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = [d for d in project["dependencies"] if d.startswith("aiomqtt")]
    assert pins == [f"aiomqtt=={AIOMQTT_VERSION}"]


def test_the_internals_the_shim_uses_are_there() -> None:
    client = aiomqtt.Client
    assert callable(getattr(client, "_pending_call", None))
    params = list(inspect.signature(client._on_publish).parameters)
    assert params == ["self", "client", "userdata", "mid", "reason_code", "properties"]
    assert "_pending_publishes" in inspect.getsource(client.__init__)
    assert issubclass(CheckedClient, client)
