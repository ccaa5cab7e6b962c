"""The README's demo: broker, simulated station, daemon and fleet traffic, stopped in order."""

from __future__ import annotations

import re
import time

import pytest

from tests.support import run_swapctl


@pytest.mark.timeout(45)
def test_demo_swaps_a_vehicle_and_stops_in_order() -> None:
    started = time.monotonic()
    # Stops as soon as the demo has seen a swap_completed event on the events topic; exit 1
    # if none came within --duration.
    result = run_swapctl("demo", "--stop-after-swaps", "1", "--duration", "25", timeout=40)
    took = time.monotonic() - started
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "swapstation/demo/status  online" in out
    assert "rack rack-a online (8 slots)" in out
    assert "rack rack-b online (4 slots)" in out
    assert "station I/O online" in out
    # The fleet drove a vehicle in and its start_swap (MQTT v5, response topic) was accepted.
    assert "fleet: EV-0001 drives into the bay" in out
    assert "fleet: start_swap EV-0001 (STD75): accepted: swap " in out, out
    # The station state (retained <root>/state) showed the swap under way ...
    assert re.search(r"^state: auto phase lifting vehicle EV-0001 ", out, re.MULTILINE), out
    # ... and the events topic its completion: the vehicle left with a charged pack.
    assert re.search(
        r"^#\d+ +swap_completed +EV-0001 \w+ out VP-00001, in PK-\d{5}$", out, re.MULTILINE
    ), out
    assert "1 swap(s) completed: stopping" in out
    assert "swapstation/demo/status  offline" in out
    assert "daemon stopped with exit code 0" in out
    assert "Traceback" not in out, out
    assert took < 30, f"the demo took {took:.1f} s to complete a swap and stop"


@pytest.mark.timeout(30)
def test_demo_without_traffic_runs_and_stops_in_order() -> None:
    result = run_swapctl("demo", "--no-traffic", "--duration", "3", timeout=25)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "traffic: off (--no-traffic)" in out
    assert "swapstation/demo/status  online" in out
    assert "rack rack-a online (8 slots)" in out
    assert "rack rack-b online (4 slots)" in out
    assert "state: auto phase idle" in out
    assert "start_swap" not in out
    assert "swap_started" not in out
    assert "swapstation/demo/status  offline" in out
    assert "daemon stopped with exit code 0" in out
