"""The README's demo: broker, simulated station and daemon, stopped in order."""

from __future__ import annotations

import pytest

from tests.support import run_swapctl


@pytest.mark.timeout(60)
def test_demo_runs_and_stops_in_order() -> None:
    result = run_swapctl("demo", "--duration", "3", timeout=50)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "swapstation/demo/status  online" in out
    assert "rack rack-a online (8 slots)" in out
    assert "rack rack-b online (4 slots)" in out
    assert "swapstation/demo/status  offline" in out
    assert "daemon stopped with exit code 0" in out
