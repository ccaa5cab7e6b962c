"""`swapctl simulate`: scenario validation, and short simulated days against the real daemon."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.errors import ConfigError
from simstation.report import Report
from simstation.runreport import write_report
from simstation.scenario import load_scenario
from simstation.simulate import apply_overrides, main, simulate
from tests.support import REPO

SCENARIOS = REPO / "config" / "scenarios"

GOOD = """
name = "t"
[station]
slots = 4
packs = {STD75 = 3}
[arrivals]
kind = "poisson"
per_day = 100
"""


@pytest.mark.timeout(10)
@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.toml")), ids=lambda p: p.stem)
def test_the_shipped_scenarios_load(path: Path) -> None:
    assert load_scenario(path).scenario.name == path.stem


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD.replace("slots = 4", "slots = 3"), "station: 3 packs need at least 4 slots"),
        (GOOD.replace("per_day = 100", "per_day = -1"), "arrivals.per_day: must be > 0 (got -1)"),
        (GOOD.replace('"poisson"', '"dice"'), "arrivals: kind must be one of 'poisson', 'file'"),
        (GOOD + "speed = 2\n", "arrivals.speed: unknown key (got 2)"),  # after a table: in it
        (
            GOOD.replace('name = "t"', 'name = "t"\nsped = 2'),
            ": sped: unknown key (did you mean 'speed'?) (got 2)",
        ),
        (GOOD.replace("slots = 4", "slots = 4\npack = 1"), "station.pack: unknown key (did you"),
        (GOOD + "[[faults]]\nat_h = 30\nkind = 'estop'\n", "faults[0].at_h: must be within"),
        (
            GOOD + "[[faults]]\nat_h = 1\nkind = 'charger_fault'\nslot = 9\n",
            "faults[0].slot: the station has 4 slots (got 9)",
        ),
        (GOOD + "[[faults]]\nat_h = 1\nkind = 'flood'\n", "faults[0]: kind must be one of"),
        (GOOD + "[pack_mix]\nLR100 = 1\n", ": pack_mix: the station stocks no LR100"),
        (GOOD.replace("[station]", "duration_h = 2\nend_h = 3\n[station]"), "not both"),
        (
            GOOD.replace('"poisson"\nper_day = 100', '"file"\npath = "nowhere.dat"'),
            "arrivals.path: no sample day 'nowhere.dat'",
        ),
        ("name = \n", "not valid TOML"),
    ],
)
def test_scenario_errors_name_the_file_the_key_and_the_rule(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_scenario(path)
    lines = caught.value.lines()
    assert all(line.startswith(f"{path}: ") for line in lines), lines
    assert any(expected in line for line in lines), lines


@pytest.mark.timeout(10)
def test_a_bad_scenario_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(GOOD.replace("slots = 4", "slots = 0"))
    assert main([str(path), "--out", str(tmp_path / "out")]) == 2
    assert f"{path}: station.slots: must be >= 2 (got 0)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def check_report(report: Report, out: Path) -> None:
    assert report.accounted(), report.model_dump(exclude={"cars", "samples"})
    assert report.arrivals == len(report.cars) > 0
    # Written and read back: the JSON is the model.
    write_report(report, out, html=False)
    again = Report.model_validate(json.loads((out / "report.json").read_text()))
    assert again == report
    assert report.samples, "a sample every simulated minute"
    start, peak, end = report.load  # the machine's load while it ran is in the report
    assert 0 <= start <= peak and 0 <= end <= peak and report.cores >= 1
    assert len(report.samples) >= report.duration_s / 60 - 2
    for car in report.cars:
        if car.outcome in {"served", "failed"}:
            assert car.wait_s is not None and car.wait_s >= 0, car
        if car.outcome == "served":
            assert car.swap_s is not None and 60 < car.swap_s < 1800, car
        if car.outcome == "turned_away":
            assert car.swap_id is None and car.reason, car
            # Its wait is its time to give up: never served after it.
            assert car.waited_s is not None and car.waited_s >= 0, car
        assert car.waited_s is not None, car  # every car's wait, whatever became of it
    assert report.waits_all is not None and report.waits_all.n == report.arrivals
    # Per hour: every arrival and outcome once, in the hour it happened; the bay's shares add up.
    hours = report.hours
    assert hours and hours[0].start_s == report.start_s
    assert sum(h.arrived for h in hours) == report.arrivals
    assert sum(h.served for h in hours) == report.served
    assert sum(h.failed for h in hours) == report.failed
    assert sum(h.turned_away for h in hours) == report.turned_away
    for h in hours:
        assert abs(h.busy + h.waiting_for_pack + h.idle - 1.0) < 0.01, h
        assert h.binding in {"bay", "charged packs: grid", "charged packs: chargers", "none"}, h


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_the_fault_injection_scenario_runs_and_reports_its_faults(tmp_path: Path) -> None:
    loaded = load_scenario(SCENARIOS / "fault-injection.toml")
    report = await simulate(loaded, tmp_path)
    check_report(report, tmp_path)
    what = "\n".join(f.what for f in report.faults)
    for injected in (
        "robot jam: the next FETCH jams",
        "rack rack-2 offline for 10 min",
        "rack rack-2 back",
        "a door opened mid-swap",
        "slot 3: charger fault 7 for 30 min",
        "slot 3: charger fault cleared",
        "E-stop pressed for 2 min",
        "E-stop released",
    ):
        assert injected in what, what
    # The jam stopped a swap; the simulated operator reset it, and that car left without a new
    # pack (its swap aborted); the day went on.
    assert "operator: reset_fault (fault): accepted" in what, what
    assert report.failed >= 1
    assert report.served >= 5
    alarms = {(a.kind, a.code) for a in report.alarms}
    for code in ("rack_offline", "charger_fault"):
        assert ("raised", code) in alarms, alarms
        assert ("cleared", code) in alarms, alarms
    assert "removing" in report.step_s and report.step_s["removing"].n >= report.served


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_the_busy_peak_hours_of_pss13_are_accounted(tmp_path: Path) -> None:
    loaded = apply_overrides(load_scenario(SCENARIOS / "pss13.toml"), start_h=7, duration_h=2)
    report = await simulate(loaded, tmp_path)
    check_report(report, tmp_path)
    assert report.start_s == 7 * 3600 and report.duration_s == 2 * 3600
    assert all(7 * 3600 <= c.arrived_s < 9 * 3600 for c in report.cars)
    # Busy: the bay works without pause, more cars come than it can take.
    assert report.arrivals > 30
    assert report.served >= 20
    assert report.waits.p90 > 0
    limit = report.station.grid_limit_kw
    assert limit is not None
    # The two simulated racks apply new setpoints at their own physics ticks (50 ms apart at
    # most, 36 simulated seconds at 720x): a limit lowered in one rack and raised in the other
    # can overlap for one tick, which a real charger does not do. Hence the 5 %.
    assert 0.5 * limit < report.peak_grid_kw <= 1.05 * limit, report.peak_grid_kw
    assert max(s.grid_kw for s in report.samples) <= 1.05 * limit
    assert report.energy_kwh > 0


@pytest.mark.timeout(60)
def test_a_relative_out_is_where_the_user_meant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--out run-60` from a folder: the report lands in that folder's run-60 (issue 16 item 7:
    the robot was looked for at run-60/run-60/sim/robot and the run failed after 60 s)."""
    monkeypatch.chdir(tmp_path)
    scenario = str(SCENARIOS / "fault-injection.toml")
    assert main([scenario, "--out", "run-60", "--duration-h", "0.05"]) == 0
    assert (tmp_path / "run-60" / "report.json").is_file()
    assert not (tmp_path / "run-60" / "run-60").exists()
