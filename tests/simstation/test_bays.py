"""Several bays at one site: the cars pick a bay as they arrive; the report adds up."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simstation.dispatch import Dispatch, choose
from simstation.scenario import LoadedScenario, load_scenario
from simstation.simulate import apply_overrides, plan_cars, rack_specs, run_virtual
from simstation.traffic import Car
from tests.support import REPO


@dataclass
class FakeBay:
    """A bay as the dispatch sees it: its cars ahead and its ready packs."""

    bay: int
    ready: dict[str, int] = field(default_factory=dict)
    queue: list[Car] = field(default_factory=list)
    serving: Car | None = None

    def ahead(self) -> list[Car]:
        return list(self.queue)

    def busy(self) -> bool:
        return self.serving is not None

    def ready_of(self, pack_type: str) -> int:
        return self.ready.get(pack_type, 0)

    def take(self, car: Car) -> None:
        self.queue.append(car)


def car(n: int, pack_type: str = "A", at: float = 0.0) -> Car:
    return Car(f"EV-{n}", at, pack_type, 30.0)


def test_a_car_picks_a_bay_with_a_pack_for_it_over_a_shorter_queue() -> None:
    """No pack of its type at the empty bay: it queues where one is (and not taken ahead)."""
    empty = FakeBay(1, ready={"B": 3})
    stocked = FakeBay(2, ready={"A": 2}, queue=[car(1, "A")])
    assert choose([empty, stocked], car(2, "A")) is stocked
    # Two cars of its type ahead for two packs: none left for it, the shorter queue wins.
    stocked.queue.append(car(3, "A"))
    assert choose([empty, stocked], car(4, "A")) is empty


def test_the_car_in_the_bay_is_not_counted_against_the_ready_packs_twice() -> None:
    """The station's ready count leaves out the pack reserved for the swap under way: a bay
    serving a car of the type with one more ready still has a pack for the newcomer."""
    serving = FakeBay(1, ready={"A": 1}, serving=car(1, "A"))
    without = FakeBay(2, ready={"A": 0})
    assert choose([serving, without], car(2, "A")) is serving
    # And a car in the bay counts as one ahead.
    free = FakeBay(3, ready={"A": 1})
    assert choose([serving, free], car(3, "A")) is free


def test_then_the_fewest_cars_ahead_then_the_most_packs_then_the_first() -> None:
    one = FakeBay(1, ready={"A": 1}, queue=[car(1, "B")])
    two = FakeBay(2, ready={"A": 1})
    three = FakeBay(3, ready={"A": 4})
    assert choose([one, two, three], car(2)) is three
    assert choose([one, two], car(3)) is two
    assert choose([two, FakeBay(4, ready={"A": 1})], car(4)) is two


@settings(max_examples=200, deadline=None)
@given(
    arrivals=st.lists(st.tuples(st.floats(0, 3600), st.sampled_from(["A", "B"])), max_size=40),
    stock=st.lists(
        st.dictionaries(st.sampled_from(["A", "B"]), st.integers(0, 5)), min_size=1, max_size=4
    ),
    looks=st.lists(st.floats(0, 4000), max_size=10),
)
def test_every_car_joins_one_bay_once_in_arrival_order_and_not_before_it_comes(
    arrivals: list[tuple[float, str]], stock: list[dict[str, int]], looks: list[float]
) -> None:
    """Whenever the bays look: each arrived car is in exactly one queue, in arrival order,
    with its `bay` set to that bay; none that has not arrived yet."""
    cars = [car(i, t, at) for i, (at, t) in enumerate(arrivals)]
    bays = [FakeBay(i, ready=dict(r)) for i, r in enumerate(stock, 1)]
    dispatch = Dispatch(cars)
    for bay in bays:
        dispatch.join(bay)
    for now in [*sorted(looks), 4000.0]:
        dispatch.admit(now)
        taken = [c for b in bays for c in b.queue]
        assert sorted(id(c) for c in taken) == sorted(id(c) for c in cars if c.arrive_s <= now)
        for b in bays:
            assert all(c.bay == b.bay for c in b.queue)
            assert [c.arrive_s for c in b.queue] == sorted(c.arrive_s for c in b.queue)
        upcoming = dispatch.next_arrival_s()
        assert upcoming is None or upcoming > now


@pytest.fixture(scope="module")
def two_bays() -> LoadedScenario:
    """pss13's saturated station as a site of two bays, for a quarter of an hour."""
    loaded = apply_overrides(
        load_scenario(REPO / "config" / "scenarios" / "pss13-saturated.toml"),
        start_h=8.0,
        duration_h=0.25,
    )
    station = loaded.scenario.station.model_copy(update={"bays": 2})
    return LoadedScenario(loaded.scenario.model_copy(update={"station": station}), loaded.path)


@pytest.mark.timeout(180)
def test_a_site_of_two_bays_serves_from_both_and_its_report_adds_up(
    two_bays: LoadedScenario, tmp_path: Path
) -> None:
    """Both bays serve; the site's counts are the bays' sums; every car is in one bay; both
    bays' swap records verify; the site's hours add the bays' cars."""
    report = run_virtual(two_bays, tmp_path)
    assert report.station.bays == 2
    assert [b.bay for b in report.bays] == [1, 2]
    assert [b.station_id for b in report.bays] == ["sim-b1", "sim-b2"]
    assert all(b.served >= 2 for b in report.bays), report.bays
    assert report.accounted()
    for key in ("arrivals", "served", "failed", "turned_away", "waiting"):
        assert getattr(report, key) == sum(getattr(b, key) for b in report.bays), key
    assert {c.bay for c in report.cars} == {1, 2}
    for b in report.bays:
        assert b.arrivals == sum(1 for c in report.cars if c.bay == b.bay)
        assert b.records is not None
        assert b.records.ok
    assert report.records is not None
    assert report.records.ok
    assert report.records.count >= report.served
    assert sum(h.arrived for h in report.hours) == report.arrivals
    assert sum(h.served for h in report.hours) == report.served
    assert all(s.phase.count(",") == 1 for s in report.samples)
    # The site's peak is taken at every physics step: at least any minute's sum of the bays.
    assert report.peak_grid_kw >= max(s.grid_kw for s in report.samples) - 0.05
    # The cars are the ones a single bay would get (bay 1 draws as a single bay does).
    one = apply_overrides(
        load_scenario(REPO / "config" / "scenarios" / "pss13-saturated.toml"),
        start_h=8.0,
        duration_h=0.25,
    )
    rng = random.Random(one.scenario.seed)
    rack_specs(one, rng)
    end_s = one.scenario.start_s + one.scenario.run_s
    planned = [
        (c.vehicle_id, round(c.arrive_s, 1)) for c in plan_cars(one, rng) if c.arrive_s < end_s
    ]
    assert sorted(planned) == sorted((c.vehicle_id, c.arrived_s) for c in report.cars)
    assert (tmp_path / "bay-1" / "state").is_dir()
    assert (tmp_path / "bay-2" / "state").is_dir()


def test_a_scenario_refuses_true_for_its_number_of_bays(tmp_path: Path) -> None:
    """Planners' files are outside input too: `bays = true` is not one bay."""
    from controller.errors import ConfigError

    text = (REPO / "config" / "scenarios" / "pss13.toml").read_text()
    path = tmp_path / "s.toml"
    path.write_text(text.replace("[station]\n", "[station]\nbays = true\n", 1))
    with pytest.raises(ConfigError) as err:
        load_scenario(path)
    assert err.value.lines() == [f"{path}: station.bays: must be an integer (got 'true')"]
