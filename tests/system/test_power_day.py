"""A simulated day under a grid limit: the limit always holds, and the policy beats equal sharing.

The real daemon (slot control and its allocator, over Modbus) runs a 13-slot simulated rack
through the busiest shipped sample day (137 cars) at 2000x; the grid limit is about a quarter
of what the chargers could draw together.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simstation.arrivals import read_day, sample_day
from simstation.charger import SimPack
from simstation.station import SimRackSpec
from tests.powerday import DayResult, run_day
from tests.rig import running, until

SPEED = 2000.0
LIMIT_KW = 200.0
SLOTS = list(range(1, 14))


def sections(policy: str) -> str:
    return (
        "[swap]\nmin_dispense_soc = 90\n"
        f"[supervision]\nfast_rise_c_per_min = {2.0 * SPEED}\n"
        f'[power]\ngrid_limit_kw = {LIMIT_KW}\npolicy = "{policy}"\n'
        "min_ready = {STD75 = 2}\n"
    )


def rack() -> SimRackSpec:
    # Twelve packs charged overnight, one empty slot for the first returned pack.
    packs = {n: SimPack(f"PK-{n:02d}", soc=95.0) for n in SLOTS[:-1]}
    return SimRackSpec("r1", SLOTS, packs=packs, poll_period_s=0.05)


async def one_day(tmp_path: Path, policy: str) -> DayResult:
    arrivals = read_day(sample_day("urban_day17_137"))
    async with running(tmp_path / policy, None, [rack()], speed=SPEED,
                       sections=sections(policy)) as rig:  # fmt: skip
        control = rig.station.control
        await until(lambda: bool(control.demands), what="a first allocation")
        return await run_day(rig, arrivals, limit_w=LIMIT_KW * 1000.0)


@pytest.mark.asyncio
@pytest.mark.timeout(300)
async def test_a_day_under_the_grid_limit_policy_against_equal_sharing(tmp_path: Path) -> None:
    results = {policy: await one_day(tmp_path, policy) for policy in ("demand", "equal")}
    print(json.dumps({p: r.summary() for p, r in results.items()}))
    for policy, r in results.items():
        # The measured total never exceeded the limit, sampled after every physics tick.
        assert r.samples > 500, policy
        assert not r.over, f"{policy}: over the limit at {r.over[:5]}"
        assert r.peak_w > 0.8 * LIMIT_KW * 1000.0, f"{policy}: the budget was not used"
        # Every car is accounted for.
        assert r.arrivals == r.served + r.turned_away + r.waiting, policy
    demand, equal = results["demand"], results["equal"]
    assert (demand.turned_away, demand.mean_wait_s) <= (equal.turned_away, equal.mean_wait_s)
