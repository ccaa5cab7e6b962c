"""Rack polls on a fixed grid: racks in spread phases, an early poll does not move the grid."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from drivers.rack import PollResult, RackPoller, RackSnapshot

PERIOD = 0.5  # wide enough that a loaded machine's scheduling jitter stays inside PERIOD / 4


class _Instant:
    """A rack that answers at once with nothing (only the poll times matter here)."""

    def __init__(self, name: str) -> None:
        self.name, self.slots = name, [1]
        self.clock = time.monotonic

    async def poll(self) -> PollResult:
        return PollResult({}, {})


async def _polls(pollers: list[RackPoller], n: int, during: Any = None) -> dict[str, list[float]]:
    seen: dict[str, list[float]] = {p.driver.name: [] for p in pollers}
    done = asyncio.Event()

    def on_snapshot(snap: RackSnapshot) -> None:
        seen[snap.rack].append(time.monotonic())
        if all(len(v) >= n for v in seen.values()):
            done.set()

    for p in pollers:
        p._on_snapshot = on_snapshot  # the test's probe
    tasks = [asyncio.create_task(p.run()) for p in pollers]
    try:
        if during is not None:
            await during(seen)
        async with asyncio.timeout(10):
            await done.wait()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return seen


def _poller(name: str, phase: float) -> RackPoller:
    return RackPoller(
        _Instant(name),  # type: ignore[arg-type]
        poll_period_s=PERIOD, offline_after=3, on_snapshot=lambda _s: None, phase_s=phase,
    )  # fmt: skip


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_racks_of_one_period_are_polled_in_spread_phases() -> None:
    seen = await _polls([_poller("a", 0.0), _poller("b", PERIOD / 2)], 6)
    a, b = seen["a"], seen["b"]
    assert abs(b[0] - a[0]) < PERIOD / 4  # the first poll of each goes at once
    # Afterwards b polls half a period after a: its n-th poll lies between a's.
    offsets = [(tb - a[0]) % PERIOD for tb in b[1:5]]
    assert all(PERIOD / 4 < o < 3 * PERIOD / 4 for o in offsets), offsets


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_an_early_poll_does_not_move_the_grid() -> None:
    poller = _poller("a", 0.0)

    async def early(seen: dict[str, list[float]]) -> None:
        while len(seen["a"]) < 2:  # noqa: ASYNC110 - the poller's own schedule drives it
            await asyncio.sleep(0.01)
        await asyncio.sleep(PERIOD * 0.5)
        poller.poll_soon()

    seen = await _polls([poller], 7, during=early)
    t = seen["a"]
    grid = [x for x in t if abs(((x - t[0]) % PERIOD) - PERIOD / 2) > PERIOD / 4]
    assert len(t) - len(grid) == 1, t  # one early poll, off the grid
    for x in grid:  # every other poll on the grid of the first
        off = (x - t[0]) % PERIOD
        assert min(off, PERIOD - off) < PERIOD / 4, t
