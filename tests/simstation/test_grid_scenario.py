"""A simulated station under a tariff, a circuit tree and a grid operator's curtailment.

The scenario gives the daemon its tariff, circuits and arrival profile; the grid event is sent
over MQTT as `set_power_limit`; the report prices the energy at every physics step
(docs/power-management.md, "In the simulator").
"""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.charging.tariff import minute_prices
from controller.errors import ConfigError
from simstation.scenario import load_scenario
from simstation.simulate import run_virtual

SCENARIO = """
name = "grid-test"
seed = 5
start_h = 9.75
duration_h = 0.75
max_wait_min = 15

[station]
slots = 8
rack_slots = 4
packs = { STD75 = 7 }
initial_soc = [40, 60]
charger_max_a = 150
grid_limit_kw = 300
policy = "demand"
min_ready = { STD75 = 1 }
min_dispense_soc = 85

[station.tariff]
currency = "CNY"
periods = [
  { start = "00:00", end = "10:00", price = 0.5 },
  { start = "10:00", end = "00:00", price = 1.0 },
]

[[station.circuits]]
name = "feeder-1"
limit_kw = 100
racks = [1]

[[station.circuits]]
name = "feeder-2"
limit_kw = 250
racks = [2]

[arrivals]
kind = "poisson"
per_day = 120

[[grid_events]]
at_h = 10
duration_min = 20
kw = 90
source = "grid_operator"
"""


@pytest.mark.timeout(180)
def test_a_curtailment_a_tree_and_a_tariff_in_a_simulated_day(tmp_path: Path) -> None:
    path = tmp_path / "grid.toml"
    path.write_text(SCENARIO)
    loaded = load_scenario(path)
    report = run_virtual(loaded, tmp_path / "run")
    assert report.records is not None and report.records.ok
    (event,) = report.grid_events
    assert event.code == "done", event
    assert event.limit_kw == 90.0 and event.t_s == pytest.approx(36_000.0, abs=2.0)
    assert event.predicted_turned_away is not None  # the daemon was told the profile
    # The limit bound while it held: the samples inside it are under 90 kW (as budgeted).
    inside = [s for s in report.samples if 36_060 <= s.t_s < 37_200]
    assert inside and all(s.binding == "grid_operator" for s in inside), inside[:3]
    assert all(s.budget_kw <= 90.0 for s in inside), [s.budget_kw for s in inside]
    assert report.binding_by_hour == ["grid connection", "grid_operator"]
    # Before it, the site stays under its grid limit (the feeders below it are the
    # allocator's: tests/charging/test_grid.py).
    before = [s for s in report.samples if s.t_s < 36_000]
    assert max(s.budget_kw for s in before) <= 300.0
    # The energy priced at the tariff: 0.5 before 10:00, 1.0 after; the hours add up.
    prices = minute_prices(loaded.scenario.station.tariff)  # type: ignore[arg-type]
    assert prices[9 * 60 + 59] == 0.5 and prices[10 * 60] == 1.0
    assert sum(report.energy_by_hour) == pytest.approx(report.energy_kwh, abs=0.2)
    first, second = report.energy_by_hour
    cost = report.energy_cost
    assert cost is not None
    assert cost == pytest.approx(0.5 * first + 1.0 * second, rel=0.01)
    assert report.energy_cost_bound is not None
    assert report.energy_cost_bound <= cost + 1e-6
    assert report.store_kwh_start is not None and report.store_kwh_end is not None
    assert report.currency == "CNY"
    served = report.served
    assert report.cost_per_swap == (None if not served else pytest.approx(cost / served, rel=1e-3))
    checks = {(c.forecast, c.horizon_min) for c in report.forecast_check}
    assert ("demand", 5) in checks and ("static", 5) in checks


def test_a_circuit_on_a_rack_the_station_has_not_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "grid.toml"
    path.write_text(SCENARIO.replace("racks = [2]", "racks = [3]"))
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    assert info.value.lines() == [
        f"{path}: station.circuits[1].racks: the station has 2 simulated racks (got [3])"
    ]
