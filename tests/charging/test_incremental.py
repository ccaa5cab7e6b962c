"""The event-driven step does what a full step would: nothing is left for a full step to do.

Two identical stations (the independent peer rack, a virtual clock) take the same moves: one
is stepped as the daemon steps it (a poll's snapshot names its slots; deadlines add theirs),
the other looks at every slot on every step. Their chargers must end every step in the same
state: the same switch, the same current limit.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.stepped import SteppedStation, station_config

N = 3

moves = st.one_of(
    st.tuples(st.just("insert"), st.integers(0, N - 1), st.floats(0, 100),
              st.sampled_from([0.0, 0.05, 30.0, 200.0])),
    st.tuples(st.just("remove"), st.integers(0, N - 1)),
    st.tuples(st.just("bms"), st.integers(0, N - 1), st.sampled_from([0.0, 10.0, 80.0, 200.0])),
    st.tuples(st.just("status"), st.integers(0, N - 1),
              st.sampled_from([None, "full", "fault", "disabled"])),
    st.tuples(st.just("heartbeat"), st.integers(0, N - 1), st.booleans()),
    st.tuples(st.just("wait"), st.sampled_from([0.1, 1.0, 2.0, 5.0, 31.0])),
    st.tuples(st.just("quiet"), st.sampled_from([0.5, 3.0, 6.0])),  # no poll: deadlines only
)  # fmt: skip


def apply(station: SteppedStation, move: tuple[Any, ...], serial: int) -> float:
    """Make the move on the station's rack; the time it takes (then a poll and a step)."""
    rack, kind = station.rack, move[0]
    if kind == "insert":
        rack.set_pack(move[1], f"PK-{move[1]}-{serial}", soc=round(move[2], 1),
                      bms_current_max=move[3])  # fmt: skip
    elif kind == "remove":
        rack.set_pack(move[1], None)
    elif kind == "bms":
        rack.set_value(move[1], "bms_current_max", move[2])
    elif kind == "status":
        rack.set_status(move[1], move[2])
    elif kind == "heartbeat":
        rack.freeze_heartbeat(move[1], move[2])
    return float(move[1]) if kind in {"wait", "quiet"} else 1.0


def event_step(station: SteppedStation, dt: float, *, poll: bool) -> None:
    """As the daemon: a poll wakes its rack's slots; without one, only the deadlines due."""
    if poll:
        station.step(dt)
        return
    station.clock.t += dt
    station.rack.tick(dt)
    station.run(station.slot_control.step_pending(station.clock.t))


def full_step(station: SteppedStation, dt: float, *, poll: bool) -> None:
    """Every slot looked at, poll or not (what the old control did on its timer)."""
    station.clock.t += dt
    station.rack.tick(dt)
    if poll:
        station.run(station.poller.poll_once())
    control = station.slot_control
    control._pending.clear()  # the full step below covers every slot
    station.run(control.step(station.clock.t))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("grid_kw", [None, 60.0])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=st.lists(moves, min_size=1, max_size=14))
def test_the_event_driven_step_leaves_nothing_a_full_step_would_do(
    grid_kw: float | None, script: list[tuple[Any, ...]]
) -> None:
    config = station_config(grid_kw, min_on_s=5.0, min_off_s=5.0)
    # Long timeouts: a reply late on a loaded machine must not fail one station's poll only.
    events = SteppedStation(N, config, timeout_min_s=0.5, timeout_max_s=2.0)
    full = SteppedStation(N, config, timeout_min_s=0.5, timeout_max_s=2.0)
    try:
        for station in (events, full):
            for i in range(N):
                station.rack.set_pack(i, f"PK-{i}", soc=30.0 + 20 * i)
        event_step(events, 1.0, poll=True)
        full_step(full, 1.0, poll=True)
        for n, move in enumerate(script):
            dt = apply(events, move, n)
            apply(full, move, n)
            event_step(events, dt, poll=move[0] != "quiet")
            full_step(full, dt, poll=move[0] != "quiet")
            for i in range(N):
                seen = (events.rack.charger_on(i), events.rack.limit_a(i))
                want = (full.rack.charger_on(i), full.rack.limit_a(i))
                assert seen == want, f"after {script[: n + 1]}: charger {i}"
    finally:
        events.close()
        full.close()
