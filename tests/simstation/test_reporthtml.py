"""The HTML report of a simulated day: self-contained, escaped, deterministic, true to the data."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from simstation.report import (
    AlarmEntry,
    Car,
    FaultEntry,
    ForecastCheck,
    GridEventResult,
    Percentiles,
    Report,
    Sample,
    StationSummary,
    percentiles,
)
from simstation.reporthtml import render

SAMPLE = Path(__file__).parent.parent / "data" / "sample-report.json"
CHARTS = [
    "Outcome of every arrival",
    "Wait-time distribution",
    "Swap time per step",
    "Ready packs per type",
    "Grid power",
    "Queue length",
    "Alarms and injected faults",
]
HOSTILE = "<script>alert('x')</script> & \"co\""


@pytest.fixture(scope="module")
def sample() -> Report:
    return Report.model_validate_json(SAMPLE.read_text())


def _empty(**changes: object) -> Report:
    fields: dict[str, object] = {
        "scenario": "empty",
        "station": StationSummary(
            slots=0, packs={}, charger_kw=0.0, grid_limit_kw=None, policy="demand"
        ),
        "speed": 1.0,
        "duration_s": 0.0,
        "wall_s": 0.0,
        "arrivals": 0,
        "served": 0,
        "turned_away": 0,
        "waiting": 0,
        "waits": percentiles([]),
        "swap_times": percentiles([]),
        "step_s": {},
        "cars": [],
        "samples": [],
    }
    fields.update(changes)
    return Report.model_validate(fields)


def _svgs(page: str) -> list[str]:
    return re.findall(r"<svg\b.*?</svg>", page, flags=re.DOTALL)


def _chart(page: str, title: str) -> str:
    found = [s for s in _svgs(page) if f'data-chart="{title}"' in s]
    assert len(found) == 1, title
    return found[0]


@pytest.mark.timeout(10)
def test_the_sample_is_a_plausible_day(sample: Report) -> None:
    assert sample.accounted()
    assert 100 <= sample.arrivals <= 140
    assert sample.turned_away > 0
    assert len(sample.samples) == 1440
    assert len(sample.station.packs) == 2
    assert sample.station.grid_limit_kw is not None
    assert len({(a.scope, a.code) for a in sample.alarms}) == 2
    assert len(sample.faults) == 1


@pytest.mark.timeout(10)
def test_page_is_self_contained(sample: Report) -> None:
    page = render(sample)
    assert page.startswith("<!DOCTYPE html>")
    assert "http://" not in page
    assert "https://" not in page
    assert "<script" not in page.lower()
    assert not re.search(r"\b(src|href)\s*=", page)
    assert "@import" not in page
    assert "url(" not in page
    assert "<style>" in page


@pytest.mark.timeout(10)
def test_one_svg_per_chart_with_its_title(sample: Report) -> None:
    page = render(sample)
    svgs = _svgs(page)
    titles = [re.search(r'data-chart="([^"]*)"', s).group(1) for s in svgs]  # type: ignore[union-attr]
    assert titles == CHARTS
    for svg, title in zip(svgs, CHARTS, strict=True):
        root = ET.fromstring(svg)  # well-formed: every text escaped
        assert root.findtext("title") == title
    for label in ("time of day (h)", "grid power (kW)", "ready packs", "cars waiting", "cars"):
        assert f">{label}</text>" in page


@pytest.mark.timeout(10)
def test_time_charts_carry_hour_ticks_legends_and_markers(sample: Report) -> None:
    page = render(sample)
    for title in ("Ready packs per type", "Grid power", "Queue length"):
        svg = _chart(page, title)
        for hour in ("00:00", "06:00", "12:00", "18:00", "24:00"):
            assert f">{hour}</text>" in svg, (title, hour)
        assert ">F1</text>" in svg and ">A1</text>" in svg and ">A2</text>" in svg
    ready = _chart(page, "Ready packs per type")
    assert "STD75 (12 stocked)" in ready and "LR100 (6 stocked)" in ready
    grid = _chart(page, "Grid power")
    assert "grid limit 450 kW" in grid and 'stroke-dasharray="8 5"' in grid


@pytest.mark.timeout(10)
def test_steps_follow_the_swap_order(sample: Report) -> None:
    shuffled = sample.model_copy(update={"step_s": dict(reversed(sample.step_s.items()))})
    svg = _chart(render(shuffled), "Swap time per step")
    order = ["lifting", "removing", "storing", "fetching", "installing", "locking", "lowering"]
    positions = [svg.index(f">{phase}</text>") for phase in [*order, "releasing"]]
    assert positions == sorted(positions)


@pytest.mark.timeout(10)
def test_summary_numbers_match_the_report(sample: Report) -> None:
    page = render(sample)
    cards = {
        key: exact or text
        for key, exact, text in re.findall(
            r'data-key="(\w+)"(?: data-value="([^"]*)")?>.*?<span class="n">([^<]*)</span>',
            page,
            flags=re.DOTALL,
        )
    }
    assert cards["arrivals"] == str(sample.arrivals)
    assert cards["served"] == str(sample.served)
    assert cards["failed"] == str(sample.failed)
    assert cards["turned_away"] == str(sample.turned_away)
    assert cards["waiting"] == str(sample.waiting)
    assert float(cards["wait_p50"]) == sample.waits.p50
    assert float(cards["wait_p90"]) == sample.waits.p90
    assert float(cards["swap_mean"]) == sample.swap_times.mean
    assert float(cards["swap_p90"]) == sample.swap_times.p90
    assert float(cards["energy"].replace(",", "")) == round(sample.energy_kwh, 2)
    assert float(cards["peak_grid"].replace(",", "")) == round(sample.peak_grid_kw, 2)
    assert cards["alarms"] == "2 / 1"
    # Durations read in the unit that suits them; the text agrees with the exact value.
    for key, seconds in (("wait_p90", sample.waits.p90), ("swap_mean", sample.swap_times.mean)):
        text, unit = re.search(
            rf'data-key="{key}".*?"n">([^<]*)</span> <span class="unit">(\w+)<', page, re.DOTALL
        ).groups()  # type: ignore[union-attr]
        scale = {"s": 1, "min": 60, "h": 3600}[unit]
        assert float(text) * scale == pytest.approx(seconds, abs=0.01 * scale)
    outcome = _chart(page, "Outcome of every arrival")
    share = round(sample.served / sample.arrivals * 100, 1)
    assert f"served: {sample.served} ({share:g} %)" in outcome
    # The histogram holds every served car once.
    waits = _chart(page, "Wait-time distribution")
    counts = [int(n) for n in re.findall(r": (\d+) cars</title>", waits)]
    assert sum(counts) == sample.served
    assert f"p90 {sample.waits.p90:g} s" in waits


@pytest.mark.timeout(10)
def test_hostile_text_is_escaped(sample: Report) -> None:
    car = Car(
        vehicle_id="<blink>EV</blink>",
        pack_type="<marquee>T</marquee>",
        soc=10.0,
        arrived_s=60.0,
        outcome="turned_away",
        reason=HOSTILE,
    )
    report = sample.model_copy(
        update={
            "scenario": HOSTILE,
            "description": HOSTILE,
            "station": sample.station.model_copy(
                update={
                    "policy": HOSTILE,
                    "packs": {**sample.station.packs, "<marquee>T</marquee>": 1},
                }
            ),
            "cars": [*sample.cars, car],
            "alarms": [
                *sample.alarms,
                AlarmEntry(
                    t_s=100.0,
                    kind="raised",
                    scope="<x>",
                    code="<y>",
                    severity="<z>",
                    message=HOSTILE,
                ),
            ],
            "faults": [*sample.faults, FaultEntry(t_s=200.0, what=HOSTILE)],
            "samples": [
                s.model_copy(update={"ready": {**s.ready, "<marquee>T</marquee>": 1}})
                for s in sample.samples
            ],
        }
    )
    page = render(report)
    assert "<script" not in page.lower()
    for tag in ("<blink", "<marquee", "<x>", "<y>", "<z>"):
        assert tag not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;co&quot;" in page
    for svg in _svgs(page):
        ET.fromstring(svg)


@pytest.mark.timeout(10)
def test_an_empty_report_renders() -> None:
    page = render(_empty())
    assert len(_svgs(page)) == len(CHARTS)
    for svg in _svgs(page):
        ET.fromstring(svg)
    assert "no arrivals" in page
    assert "no served cars" in page
    assert "no swap steps recorded" in page
    assert page.count(">no samples</text>") == 3
    assert "no alarms, no injected faults" in page
    assert "grid limit" not in _chart(page, "Grid power")
    assert not re.search(r"(?i)\b(nan|inf)\b", page)


@pytest.mark.timeout(10)
def test_zero_waits_and_a_single_sample_render() -> None:
    cars = [
        Car(
            vehicle_id=f"EV-{i}",
            pack_type="STD75",
            soc=20.0,
            arrived_s=i * 600.0,
            outcome="served",
            wait_s=0.0,
            swap_s=90.0,
        )
        for i in range(5)
    ]
    zero = Percentiles(n=5, mean=0.0, p50=0.0, p90=0.0, p99=0.0, max=0.0)
    report = _empty(
        arrivals=5,
        served=5,
        cars=cars,
        waits=zero,
        swap_times=percentiles([90.0] * 5),
        step_s={"lifting": percentiles([8.0] * 5)},
        samples=[Sample(t_s=0.0, grid_kw=0.0, ready={}, queue=0, phase="idle")],
        duration_s=3000.0,
    )
    page = render(report)
    waits = _chart(page, "Wait-time distribution")
    assert re.findall(r": (\d+) cars</title>", waits) == ["5"]
    for svg in _svgs(page):
        ET.fromstring(svg)


@pytest.mark.timeout(10)
def test_a_long_run_keeps_the_hour_axis_readable() -> None:
    report = _empty(
        duration_s=3 * 86_400.0,
        samples=[
            Sample(t_s=t * 3600.0, grid_kw=10.0, ready={"A": 1}, queue=0, phase="idle")
            for t in range(72)
        ],
    )
    svg = _chart(render(report), "Grid power")
    labels = re.findall(r'class="tick" x="[\d.]+" y="[\d.]+" text-anchor="middle">([^<]+)<', svg)
    assert 4 <= len(labels) <= 25
    assert labels[0] == "00:00" and labels[-1] == "72:00"


@pytest.mark.timeout(10)
def test_rendering_is_deterministic(sample: Report) -> None:
    again = Report.model_validate_json(sample.model_dump_json())
    assert render(sample) == render(again)
    assert render(_empty()) == render(_empty())


@pytest.mark.timeout(10)
def test_the_time_axis_spans_the_run_from_its_start_hour() -> None:
    report = _empty(
        start_s=6 * 3600.0,
        duration_s=4 * 3600.0,
        samples=[
            Sample(t_s=6 * 3600.0 + m * 60.0, grid_kw=5.0, ready={"A": 2}, queue=1, phase="idle")
            for m in range(240)
        ],
        faults=[FaultEntry(t_s=7 * 3600.0, what="robot jam")],
    )
    page = render(report)
    for title in (
        "Ready packs per type",
        "Grid power",
        "Queue length",
        "Alarms and injected faults",
    ):
        svg = _chart(page, title)
        labels = re.findall(
            r'class="tick" x="[\d.]+" y="[\d.]+" text-anchor="middle">([^<]+)<', svg
        )
        assert labels[0] == "06:00" and labels[-1] == "10:00", (title, labels)
        assert ">F1</text>" in svg


def test_energy_cost_forecasts_and_grid_events_are_tables_with_hostile_text_escaped(
    sample: Report,
) -> None:
    hours = len(sample.hours) or 1
    report = sample.model_copy(
        update={
            "energy_by_hour": [10.0] * hours,
            "energy_cost": 123.45,
            "cost_per_swap": 6.5,
            "currency": "<marquee>CNY</marquee>",
            "energy_cost_bound": 100.0,
            "store_kwh_start": 900.0,
            "store_kwh_end": 850.0,
            "binding_by_hour": [HOSTILE] * hours,
            "forecast_check": [
                ForecastCheck(
                    forecast="demand",
                    horizon_min=30,
                    hours="busy",
                    n=10,
                    mae=1.2,
                    bias=-0.3,
                    within_one=0.6,
                ),
            ],
            "grid_events": [
                GridEventResult(
                    t_s=64_800.0,
                    limit_kw=375.0,
                    duration_min=60.0,
                    code="done",
                    message=HOSTILE,
                    predicted_turned_away=2.5,
                    predicted_below_floor=0.4,
                ),
            ],
        }
    )
    page = render(report)
    for section in ('id="energy"', 'id="forecasts"', 'id="grid-events"'):
        assert section in page
    assert "123.45" in page and "6.50" in page and "100.00" in page
    assert "18:00" in page and "2.5 cars, 0.4 packs" in page
    assert "<marquee" not in page and "<script" not in page.lower()
    assert render(report) == page
