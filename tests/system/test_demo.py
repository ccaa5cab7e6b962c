"""The README's demo: broker, simulated station, daemon and fleet traffic, stopped in order."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from simstation.cli import STEPS, Tally, _step_cells, summary
from tests.support import REPO, run_swapctl


@pytest.mark.timeout(75)
def test_demo_three_swaps_then_the_summary() -> None:
    started = time.monotonic()
    # The acceptance: stops as soon as three swap_completed events came on the events topic.
    result = run_swapctl("demo", "--swaps", "3", timeout=70)
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
    # The station state (retained <root>/state) showed the swap under way, the robot its
    # moves ...
    assert re.search(r"^state: auto phase lifting vehicle EV-0001 ", out, re.MULTILINE), out
    assert re.search(r"^robot: link ready, \w+ at slot \d+, holding PK-\d{5}$", out, re.MULTILINE)
    # ... and the events topic each completion: the vehicle left with a charged pack.
    for n in (1, 2, 3):
        assert re.search(
            rf"^#\d+ +swap_completed +EV-000{n} \w+ out VP-0000{n}, in PK-\d{{5}}$",
            out,
            re.MULTILINE,
        ), out
    assert "3 swap(s) completed: stopping" in out
    assert "swapstation/demo/status  offline" in out
    assert "daemon stopped with exit code 0" in out
    # The summary, after everything has stopped.
    summary = out[out.index("\nsummary\n") :]
    assert re.search(r"^  swaps completed +3$", summary, re.MULTILINE), summary
    assert re.search(r"^  swaps aborted +0$", summary, re.MULTILINE), summary
    assert re.search(r"^  swaps failed +0$", summary, re.MULTILINE), summary
    times = re.search(r"^  swap time +mean ([\d.]+) s, max ([\d.]+) s$", summary, re.MULTILINE)
    assert times is not None, summary
    assert 0 < float(times[1]) <= float(times[2]) < 30, summary
    # Every step of the sequence was timed, in order.
    steps = re.findall(r"^    (\w+) +([\d.]+) s$", summary, re.MULTILINE)
    assert [s for s, _ in steps] == list(STEPS), summary
    assert re.search(r"^  vehicles sent +[34]$", summary, re.MULTILINE), summary
    assert re.search(r"^  requests refused +\d+ \(\d+ unanswered\)$", summary, re.MULTILINE)
    assert re.search(r"^  alarms seen +\d+", summary, re.MULTILINE), summary
    assert re.search(r"^  run time +[\d.]+ s$", summary, re.MULTILINE), summary
    assert "Traceback" not in out, out
    assert took < 60, f"the demo took {took:.1f} s for three swaps"


@pytest.mark.timeout(60)
def test_demo_with_a_simulated_csms_shows_the_ocpp_messages() -> None:
    result = run_swapctl("demo", "--ocpp", "--swaps", "1", timeout=55)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert re.search(r"^simulated CSMS: ws://127\.0\.0\.1:\d+/ocpp \(OCPP 2\.1", out, re.MULTILINE)
    lines = [line for line in out.splitlines() if line.startswith("OCPP ")]
    text = "\n".join(lines)
    assert lines[0] == "OCPP csms: demo connected", text
    assert lines[1].startswith("OCPP station> BootNotification {"), text
    for expected in (
        'OCPP <csms result {"currentTime"',  # the boot accepted
        "OCPP <csms GetVariables",  # the CSMS asks for the swap order
        "OCPP station> StatusNotification",
        'OCPP station> TransactionEvent {"eventType":"Started"',
        'OCPP station> BatterySwap {"batteryData"',
    ):
        assert expected in text, f"{expected!r} not in:\n{text}"
    swaps = re.findall(r"\"eventType\":\"(Battery\w+)\"", text)
    assert swaps[:2] == ["BatteryIn", "BatteryOut"], text
    assert re.search(
        r"^OCPP: \d+ message\(s\) between the station and the CSMS$", out, re.MULTILINE
    )
    assert "Traceback" not in out, out


@pytest.mark.timeout(30)
def test_demo_without_traffic_misses_its_target_and_stops_in_order() -> None:
    # --stop-after-swaps is the old name of --swaps; without vehicles the target is missed.
    result = run_swapctl(
        "demo", "--no-traffic", "--stop-after-swaps", "1", "--duration", "3", timeout=25
    )
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "traffic: off (--no-traffic)" in out
    assert "swapstation/demo/status  online" in out
    assert "rack rack-a online (8 slots)" in out
    assert "rack rack-b online (4 slots)" in out
    assert "state: auto phase idle" in out
    assert "start_swap" not in out
    assert "swap_started" not in out
    assert "0 of 1 swap(s) completed in 3 s" in out
    assert "swapstation/demo/status  offline" in out
    assert "daemon stopped with exit code 0" in out
    assert re.search(r"^  swaps completed +0$", out, re.MULTILINE), out
    assert "  vehicles sent        0 (no traffic)" in out


def _event(seq: int, at: float, kind: str, **data: object) -> dict[str, object]:
    stamp = datetime.fromtimestamp(1_800_000_000 + at, UTC).isoformat()
    return {"seq": seq, "at": stamp, "station": "t", "kind": kind, "data": data}


def _phase(seq: int, at: float, before: str, after: str) -> dict[str, object]:
    return _event(
        seq, at, "swap_phase", swap_id="s1", vehicle_id="EV-1", to=after, **{"from": before}
    )


@pytest.mark.timeout(5)
def test_the_tally_times_swaps_and_steps_from_events_once() -> None:
    tally = Tally()
    events = [
        _event(1, 0.0, "swap_started", swap_id="s1", vehicle_id="EV-1"),
        _phase(2, 0.0, "idle", "authorised"),
        _phase(3, 0.5, "authorised", "waiting_for_vehicle"),
        _phase(4, 2.0, "waiting_for_vehicle", "positioned"),
        _event(5, 2.5, "alarm_raised", scope="slot:3", code="over_temperature"),
    ]
    for event in events:
        assert tally.take(event)
    assert not tally.take(events[2])  # a repeat (at least once delivery) is not counted again
    run = tally.runs["s1"]
    assert run.steps == {"authorised": 0.5, "waiting_for_vehicle": 1.5}
    cells = _step_cells("positioned", "0.3 s", run)
    assert cells[:4] == [
        "[x] authorised 0.50 s",
        "[x] waiting_for_vehicle 1.50 s",
        "[>] positioned 0.3 s",
        "[ ] lifting",
    ]
    # Aborted before anything moved: the rest of the sequence was skipped.
    tally.take(_phase(6, 3.0, "positioned", "releasing"))
    assert _step_cells("releasing", "0.1 s", tally.runs["s1"])[3] == "[-] lifting"
    tally.take(_phase(7, 4.0, "releasing", "complete"))
    tally.take(_event(8, 4.0, "swap_aborted", swap_id="s1", vehicle_id="EV-1", reason="x"))
    tally.take(_phase(9, 4.0, "complete", "idle"))
    assert (tally.count("completed"), tally.count("aborted")) == (0, 1)
    assert tally.swap_times == [] and tally.step_times == {}  # times are of completed swaps
    assert "s1" not in tally.runs
    lines = summary(tally, None, 12.0)
    assert "  swaps aborted        1" in lines
    assert "  alarms seen          1: over_temperature x1" in lines


def _descendants(pid: int) -> set[int]:
    """Every process below `pid` (from /proc), the pid of each."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGKILL])
def test_every_child_of_the_demo_dies_with_it(sig: signal.Signals) -> None:
    """Its terminal closed (SIGHUP) or killed outright: no daemon, broker or socat left over."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWAPSTATION_")}
    demo = subprocess.Popen(
        [sys.executable, "-m", "controller", "demo", "--no-traffic"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        assert demo.stdout is not None
        deadline = time.monotonic() + 40
        seen = ""
        while "station I/O online" not in seen:  # the daemon is up, with every part started
            assert time.monotonic() < deadline and demo.poll() is None, seen
            seen += demo.stdout.readline().decode(errors="replace")
        children = _descendants(demo.pid)
        names = {Path(f"/proc/{p}/comm").read_text().strip() for p in children if _alive(p)}
        assert {"mosquitto", "socat"} <= names, names
        demo.send_signal(sig)
        demo.wait(20)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in children):
            left = {p: Path(f"/proc/{p}/cmdline").read_bytes()[:80] for p in children if _alive(p)}
            assert time.monotonic() < deadline, f"left running: {left}"
            time.sleep(0.05)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(10)
        if demo.stdout is not None:
            demo.stdout.close()
