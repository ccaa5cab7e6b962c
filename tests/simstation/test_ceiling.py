"""A saturated station against its capacity on paper (`simstation.ceiling`, docs/simulator.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from simstation.ceiling import ceiling, charge_curve
from simstation.scenario import load_scenario
from simstation.simulate import apply_overrides, run_virtual
from tests.support import REPO

# Two small packs and cars always waiting: the packs' charging binds, a swap every ~3 minutes.
PAPER = """
name = "paper"
seed = 7
start_h = 8
duration_h = 1.25
max_wait_min = 600

[station]
slots = 3
rack_slots = 3
packs = { S10 = 2 }
pack_kwh = { S10 = 10.0 }
initial_soc = [95, 100]
charger_max_a = 150
min_dispense_soc = 85

[arrivals]
kind = "poisson"
per_day = 2400
hourly = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]

[soc]
range = [40, 40]
"""


@pytest.mark.timeout(20)
def test_the_charge_curve_is_constant_current_then_tapers() -> None:
    curve = charge_curve(75.0, 150.0)  # 208 Ah at 96 % health: 2 Ah a percent, 48 s at 150 A
    assert curve[41] - curve[40] == pytest.approx(2.0 / 150 * 3600, rel=0.01)
    assert curve[99] - curve[98] > 2 * (curve[41] - curve[40])  # the taper, near full


@pytest.mark.timeout(20)
def test_the_ceilings_of_the_shipped_station() -> None:
    """pss13: the bay does a swap in about two minutes; its grid limit binds the packs."""
    paper = ceiling(load_scenario(REPO / "config" / "scenarios" / "pss13.toml"))
    assert 120.0 < paper.bay_s < 135.0
    assert paper.binding == "charged packs: grid"
    assert paper.grid_per_h < paper.current_per_h < paper.bay_per_h
    assert 17.0 < paper.lower < 20.0


@pytest.mark.timeout(180)
def test_a_saturated_station_lands_within_3_percent_of_its_paper_ceiling(tmp_path: Path) -> None:
    (tmp_path / "paper.toml").write_text(PAPER)
    loaded = load_scenario(tmp_path / "paper.toml")
    paper = ceiling(loaded)
    assert paper.binding == "charged packs: chargers", paper
    assert paper.bay_per_h > 1.3 * paper.lower  # the bay has time to spare
    report = run_virtual(apply_overrides(loaded), tmp_path / "run")
    ends = sorted(
        c.arrived_s + (c.wait_s or 0.0) + (c.swap_s or 0.0)
        for c in report.cars
        if c.outcome == "served"
    )
    # The two packs in stock at the start go at once; from the third swap on, every pack was
    # charged here: the steady state. Two packs come ready in turn, a bay's cycle apart then
    # the rest of a charge apart: whole pairs of intervals are counted.
    steady = ends[2:]
    steady = steady[: len(steady) - (len(steady) - 1) % 2]
    assert len(steady) >= 12, ends
    per_h = (len(steady) - 1) * 3600.0 / (steady[-1] - steady[0])
    print(f"steady state {per_h:.2f} swaps an hour, paper {paper.lower:.2f}: {paper}")
    assert per_h == pytest.approx(paper.lower, rel=0.03), (per_h, paper)
    assert report.failed == 0 and report.turned_away == 0
    # The long-life figures: an hourly sample and one at the end, the records verified.
    assert [round(s.t_s) for s in report.life][:1] == [9 * 3600]
    last = report.life[-1]
    assert last.served == report.served and last.rss_kib > 10_000 and last.journal_kib > 0
    assert last.fds > 5 and last.threads >= 2  # the journal's checkpointer thread
    assert report.records is not None and report.records.ok, report.records
    assert report.records.count >= report.served
    assert 0 < report.sim_records_kib < 5_000
