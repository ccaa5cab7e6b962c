"""Charging profiles as the `ocpp` limit: the minimum of what is in force, without a gap.

The grid commands are recorded (their own tests, tests/charging/, cover what a limit does to
the chargers); the journal is a real one.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.charging.gridcmds import GridCommands
from controller.charging.requests import MAX_DURATION_S, ClearPowerLimit, SetPowerLimit
from controller.ocpp.profiles import OVERLAP_S, PURPOSES, Held, StationProfiles
from controller.store.journal import Journal
from drivers import clock
from tests.rig import until


class Grid:
    """The `ocpp` source's limit as the grid commands would hold it."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.kw: float | None = None
        self.until: datetime | None = None
        self.calls: list[str] = []
        self.delay_s = delay_s  # a slow journal commit
        self.control = SimpleNamespace(limits=SimpleNamespace(runtime={}))

    async def set_limit(self, request: SetPowerLimit) -> Any:
        assert request.source == "ocpp"
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        self.kw, self.until = request.kw, request.until
        self.control.limits.runtime["ocpp"] = request
        self.calls.append("set")

    async def clear_limit(self, request: ClearPowerLimit) -> Any:
        assert request.source == "ocpp"
        self.kw = self.until = None
        self.control.limits.runtime.pop("ocpp", None)
        self.calls.append("clear")


def kw_of(grid: Grid) -> float | None:
    return grid.kw


def profiles(grid: Grid, journal: Any = None) -> StationProfiles:
    return StationProfiles(cast("GridCommands", grid), cast("Journal", journal))


periods = st.lists(
    st.tuples(st.integers(0, 3600), st.floats(0, 500_000)), min_size=1, max_size=5
).map(lambda ps: tuple(sorted(dict(ps).items())))
helds = st.builds(
    lambda purpose, offset, steps, length: Held(
        1,
        purpose,
        0,
        tuple((T0 + offset + s, w) for s, w in steps),
        None if length is None else T0 + offset + steps[0][0] + length,
    ),
    st.sampled_from(["ChargingStationMaxProfile", "Other"]),  # the minimum over purposes
    st.integers(-3600, 3600),
    periods,
    st.one_of(st.none(), st.integers(1, 7200)),
)
T0 = 1_800_000_000.0


@settings(max_examples=300, deadline=None)
@given(st.lists(helds, min_size=1, max_size=2), st.integers(-4000, 12000))
def test_the_limit_is_the_lowest_in_force_and_covers_until_the_next_change(
    held: list[Held], offset: int
) -> None:
    book = profiles(Grid())
    for h in held:
        book.held[h.purpose] = h
    at = T0 + offset
    # The value: the lowest of those in force, by a second reading of each schedule.
    in_force = [
        max((s for s in h.steps if s[0] <= at), key=lambda s: s[0])[1]
        for h in book.held.values()
        if h.steps[0][0] <= at and (h.end is None or at < h.end)
    ]
    assert book.value(at) == (min(in_force) if in_force else None)
    # Nothing changes between now and the next change.
    change = book.next_change(at)
    if change is not None:
        assert change > at
        assert book.value((at + change) / 2) == book.value(at)


@settings(max_examples=200, deadline=None)
@given(held=st.lists(helds, min_size=1, max_size=2), offset=st.integers(-4000, 12000))
def test_apply_sets_what_is_in_force_with_an_end_past_its_change(
    held: list[Held], offset: int
) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(clock, "wall", lambda: T0 + offset)
        asyncio.run(_apply_case(held, offset))


async def _apply_case(held: list[Held], offset: int) -> None:
    grid = Grid()
    book = profiles(grid)
    for h in held:
        book.held[h.purpose] = h
    await book.apply()
    now = T0 + offset
    value = book.value(now)
    if value is None:
        assert grid.kw is None
        return
    assert grid.kw == pytest.approx(value / 1000)
    change = book.next_change(now)
    if change is None:
        assert grid.until is None  # for ever, as the profiles say
    elif grid.until is not None:
        # The limit outlives the moment it is replaced (or ends with its profile): no gap.
        ends = book.value(change) is None and book.next_change(change) is None
        assert grid.until.timestamp() == pytest.approx(change if ends else change + OVERLAP_S)
    else:
        assert change + OVERLAP_S - now >= MAX_DURATION_S  # too far to name: the follower ends it


@pytest.mark.asyncio
async def test_profiles_are_kept_and_followed_again_after_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [T0]
    monkeypatch.setattr(clock, "wall", lambda: now[0])
    journal = await Journal.open(tmp_path)
    try:
        grid = Grid()
        book = profiles(grid, journal)
        await book.replace(Held(7, PURPOSES[0], 0, ((T0, 30_000.0),), T0 + 300))
        assert grid.kw == 30.0
        # Replaced by another of its purpose.
        await book.replace(Held(8, PURPOSES[0], 0, ((T0, 40_000.0), (T0 + 600, 20_000.0)), None))
        assert grid.kw == 40.0
        grid.kw = None
        # Restarted 400 s later: the profile's first period is in force, its second comes at
        # T0 + 600.
        now[0] = T0 + 400
        again = profiles(grid, journal)
        await again.load()
        assert [h.id for h in again.held.values()] == [8]
        await again.apply()
        assert kw_of(grid) == 40.0
        assert grid.until is not None and grid.until.timestamp() == T0 + 600 + OVERLAP_S
        await again.clear([PURPOSES[0]])
        assert kw_of(grid) is None and grid.calls[-1] == "clear"
        third = profiles(grid, journal)
        await third.load()
        assert third.held == {}
    finally:
        for opened in (locals().get("book"), locals().get("again"), locals().get("third")):
            if isinstance(opened, StationProfiles):
                opened.close()
        await journal.close()


@pytest.mark.asyncio
async def test_a_change_that_comes_while_a_profile_is_applied_is_not_missed(
    tmp_path: Path,
) -> None:
    journal = await Journal.open(tmp_path)
    grid = Grid(delay_s=0.2)  # the journal's commit outlasts the first period
    book = profiles(grid, journal)
    now = clock.wall()
    try:
        await book.replace(Held(1, PURPOSES[0], 0, ((now, 10_000.0), (now + 0.1, 2_000.0)), None))
        # The 2 kW period began while the 10 kW one was being set: it is applied all the same.
        await until(lambda: kw_of(grid) == 2.0, timeout=5, what="the 2 kW period")
        assert grid.until is None  # the last period, for ever
    finally:
        book.close()
        await journal.close()


@pytest.mark.asyncio
async def test_an_ocpp_limit_nobody_holds_is_lifted_at_start(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path)
    grid = Grid()
    grid.control.limits.runtime["ocpp"] = object()  # left by another CSMS, or an old release
    grid.kw = 3.0
    book = profiles(grid, journal)
    try:
        await book.load()
        await until(lambda: "ocpp" not in grid.control.limits.runtime, timeout=5, what="lifted")
        assert grid.calls == ["clear"]
    finally:
        book.close()
        await journal.close()
