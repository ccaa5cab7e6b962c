"""A planner's study: station variants x seeds on virtual time, compared with 95 % intervals.

`swapctl simulate SCENARIO --seeds 3 --vary station.packs.STD75=11,13,15 --vary
station.charger_max_a=100,150` runs every combination of the values (a variant) with each of
the seeds (the scenario's seed and the next ones), each run a `run_virtual` in a process of its
own (`--jobs`, one per core by default), and writes `study.json`, `study.md` and `study.html`
(the table, and bar charts with interval whiskers of the swaps an hour and the wait p90): per
variant the mean of each figure over its seeds and the half-width of its 95 % confidence interval
(Student's t; with one seed there is no interval). Each run's own report is in
`<out>/<variant>/seed-<n>/`.
"""

from __future__ import annotations

import itertools
import math
import os
import statistics
import tomllib
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from html import escape
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from controller.errors import ConfigError, ConfigIssue
from simstation.children import worker_dies_with_parent
from simstation.report import Report
from simstation.scenario import LoadedScenario, Scenario, _issue

# Two-sided 95 % quantiles of Student's t by degrees of freedom (beyond 30: the normal's).
T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
       2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
       2.060, 2.056, 2.052, 2.048, 2.045, 2.042]  # fmt: skip
MAX_RUNS = 500

METRICS: dict[str, Callable[[Report], float]] = {
    "served": lambda r: float(r.served),
    "served_per_h": lambda r: r.served / (r.duration_s / 3600.0),
    "turned_away": lambda r: float(r.turned_away),
    "failed": lambda r: float(r.failed),
    "wait_p50_min": lambda r: r.waits.p50 / 60.0,
    "wait_p90_min": lambda r: r.waits.p90 / 60.0,
    "swap_p50_s": lambda r: r.swap_times.p50,
    "energy_kwh": lambda r: r.energy_kwh,
    "peak_grid_kw": lambda r: r.peak_grid_kw,
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Interval(_Model):
    """A mean over seeds and the half-width of its 95 % interval (None with one seed)."""

    mean: float
    half: float | None


class VariantResult(_Model):
    """One variant: what it changed, each seed's figures, and their intervals."""

    name: str
    changes: dict[str, Any]
    seeds: list[int]
    runs: list[dict[str, float]]
    figures: dict[str, Interval]


class Study(_Model):
    """The whole study."""

    scenario: str
    duration_s: float
    seeds: list[int]
    vary: dict[str, list[Any]]
    variants: list[VariantResult]
    wall_s: float


def interval(values: Sequence[float]) -> Interval:
    """Mean and 95 % half-width (Student's t) of `values`."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return Interval(mean=round(mean, 3), half=None)
    t = T95[len(values) - 2] if len(values) - 1 <= len(T95) else 1.96
    half = t * statistics.stdev(values) / math.sqrt(len(values))
    return Interval(mean=round(mean, 3), half=round(half, 3))


def parse_vary(items: Sequence[str]) -> dict[str, list[Any]]:
    """`KEY=V1,V2,...` items (TOML values) as {key: values}; ConfigError naming the bad one."""
    out: dict[str, list[Any]] = {}
    for item in items:
        key, sep, rhs = item.partition("=")
        key = key.strip()
        if not sep or not key or not rhs.strip():
            raise ConfigError("command line", [ConfigIssue(f"--vary {item}", "must be KEY=V1,V2")])
        try:
            values = tomllib.loads(f"v = [{rhs}]")["v"]
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(
                "command line", [ConfigIssue(f"--vary {key}", f"values are not TOML: {exc}")]
            ) from None
        if key in out:
            raise ConfigError("command line", [ConfigIssue(f"--vary {key}", "given twice")])
        out[key] = values
    return out


def variants(vary: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the values (one variant, the scenario as it is, without `vary`)."""
    keys = list(vary)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*vary.values())]


def variant_name(changes: dict[str, Any]) -> str:
    """A folder-safe name for a variant."""
    if not changes:
        return "as-is"
    parts = [f"{k.rsplit('.', 1)[-1]}-{v}" for k, v in changes.items()]
    return "_".join(parts).replace("/", "-").replace(" ", "")


def with_changes(loaded: LoadedScenario, changes: dict[str, Any], seed: int) -> LoadedScenario:
    """The scenario with `changes` (dotted keys) and `seed`, validated again."""
    data = loaded.scenario.model_dump(mode="json", exclude_none=True)
    for key, value in changes.items():
        node = data
        *path, last = key.split(".")
        for part in path:
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                nxt = node[part] = {}
            node = nxt
        node[last] = value
    data["seed"] = seed
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("command line", [_issue(e) for e in exc.errors()]) from None
    return LoadedScenario(scenario, loaded.path)


def _one(job: tuple[LoadedScenario, Path]) -> str:
    """One run in a worker process; its report as JSON."""
    from simstation.runreport import write_report
    from simstation.simulate import run_virtual

    loaded, out = job
    report = run_virtual(loaded, out)
    write_report(report, out, html=False)
    return report.model_dump_json()


def run_study(
    loaded: LoadedScenario,
    out: Path,
    *,
    seeds: int,
    vary: dict[str, list[Any]],
    jobs: int | None = None,
    say: Callable[[str], None] = lambda _: None,
) -> Study:
    """Every variant with every seed; the study (written to `out`)."""
    import time

    base = loaded.scenario.seed
    seed_list = [base + i for i in range(seeds)]
    combos = variants(vary)
    if len(combos) * seeds > MAX_RUNS:
        raise ConfigError(
            "command line",
            [ConfigIssue("--vary", f"{len(combos) * seeds} runs; at most {MAX_RUNS}")],
        )
    runs: list[tuple[dict[str, Any], int, LoadedScenario, Path]] = []
    for changes in combos:
        for seed in seed_list:
            folder = out.absolute() / variant_name(changes) / f"seed-{seed}"
            runs.append((changes, seed, with_changes(loaded, changes, seed), folder))
    wall0 = time.monotonic()
    workers = max(1, min(jobs or os.cpu_count() or 1, len(runs)))
    reports: list[Report] = []
    with ProcessPoolExecutor(
        workers,
        mp_context=get_context("spawn"),
        initializer=worker_dies_with_parent,
        initargs=(os.getpid(),),
    ) as pool:
        for i, text in enumerate(pool.map(_one, [(r[2], r[3]) for r in runs]), 1):
            reports.append(Report.model_validate_json(text))
            changes, seed = runs[i - 1][0], runs[i - 1][1]
            name, served = variant_name(changes), reports[-1].served
            say(f"run {i}/{len(runs)}: {name} seed {seed}: served {served}")
    results = []
    for changes in combos:
        mine = [rep for (c, _, _, _), rep in zip(runs, reports, strict=True) if c == changes]
        figures = [{k: round(f(rep), 3) for k, f in METRICS.items()} for rep in mine]
        results.append(
            VariantResult(
                name=variant_name(changes),
                changes=changes,
                seeds=seed_list,
                runs=figures,
                figures={k: interval([f[k] for f in figures]) for k in METRICS},
            )
        )
    study = Study(
        scenario=loaded.scenario.name,
        duration_s=loaded.scenario.run_s,
        seeds=seed_list,
        vary=vary,
        variants=results,
        wall_s=round(time.monotonic() - wall0, 1),
    )
    write_study(study, out)
    return study


def table(study: Study, metrics: Sequence[str] = tuple(METRICS)) -> str:
    """The comparison table (Markdown): a row per variant, mean +- 95 % half-width."""

    def cell(iv: Interval) -> str:
        return f"{iv.mean:g}" if iv.half is None else f"{iv.mean:g} ± {iv.half:g}"

    head = "| variant | " + " | ".join(metrics) + " |"
    rule = "|---|" + "---|" * len(metrics)
    rows = [
        f"| {v.name} | " + " | ".join(cell(v.figures[m]) for m in metrics) + " |"
        for v in study.variants
    ]
    return "\n".join([head, rule, *rows])


CHARTS = (("served_per_h", "swaps served per hour"), ("wait_p90_min", "wait p90, minutes"))


def chart(study: Study, metric: str, title: str) -> str:
    """A bar per variant (the mean) with its 95 % interval as a whisker, as inline SVG."""
    rows = [(v.name, v.figures[metric]) for v in study.variants]
    top = max((iv.mean + (iv.half or 0.0) for _, iv in rows), default=0.0) or 1.0
    label_w, bar_w, row_h = 220, 420, 22
    height = 30 + row_h * len(rows)
    width = label_w + bar_w + 90
    parts = [
        (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"'
            f' role="img" aria-label="{escape(title)}">'
        ),
        f'<text x="0" y="16" font-size="13" font-weight="bold">{escape(title)}</text>',
    ]
    for i, (name, iv) in enumerate(rows):
        y = 26 + i * row_h
        w = bar_w * iv.mean / top
        parts += [
            (
                f'<text x="{label_w - 6}" y="{y + 14}" font-size="12" text-anchor="end">'
                f"{escape(name)}</text>"
            ),
            f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 8}" fill="#47b"/>',
        ]
        if iv.half:
            lo = label_w + bar_w * max(0.0, iv.mean - iv.half) / top
            hi = label_w + bar_w * (iv.mean + iv.half) / top
            mid = y + row_h / 2 - 1
            parts.append(
                f'<path d="M{lo:.1f},{mid} H{hi:.1f} M{lo:.1f},{mid - 5} V{mid + 5}'
                f' M{hi:.1f},{mid - 5} V{mid + 5}" stroke="#222" fill="none"/>'
            )
        text = f"{iv.mean:g}" + ("" if iv.half is None else f" ± {iv.half:g}")
        parts.append(
            f'<text x="{label_w + bar_w + 6}" y="{y + 14}" font-size="12">{escape(text)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def html(study: Study) -> str:
    """The study as one self-contained page: the table and a chart per headline figure."""
    head = "".join(f"<th>{escape(m)}</th>" for m in METRICS)
    rows = "".join(
        f"<tr><td>{escape(v.name)}</td>"
        + "".join(
            f"<td>{iv.mean:g}" + ("" if iv.half is None else f" ± {iv.half:g}") + "</td>"
            for iv in (v.figures[m] for m in METRICS)
        )
        + "</tr>"
        for v in study.variants
    )
    charts = "".join(f"<p>{chart(study, m, t)}</p>" for m, t in CHARTS)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Study: {escape(study.scenario)}</title>"
        "<style>body{font:14px sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
        "td:first-child{text-align:left}</style></head><body>"
        f"<h1>{escape(study.scenario)}: {len(study.variants)} variant(s) x"
        f" {len(study.seeds)} seed(s), {study.duration_s / 3600:g} h each</h1>"
        f"<p>Means over the seeds {escape(str(study.seeds))}, ± the half-width of the 95 %"
        " interval (Student's t).</p>"
        f"<table><thead><tr><th>variant</th>{head}</tr></thead><tbody>{rows}</tbody></table>"
        f"{charts}</body></html>\n"
    )


def write_study(study: Study, out: Path) -> list[Path]:
    """study.json, study.md and study.html."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(study.model_dump_json(indent=1) + "\n")
    hours = study.duration_s / 3600.0
    text = (
        f"# {study.scenario}: {len(study.variants)} variant(s) x {len(study.seeds)} seed(s),"
        f" {hours:g} h each\n\nMeans over the seeds {study.seeds}, ± the half-width of the 95 %"
        " interval (Student's t).\n\n" + table(study) + "\n"
    )
    (out / "study.md").write_text(text)
    (out / "study.html").write_text(html(study))
    return [out / "study.json", out / "study.md", out / "study.html"]
