"""A planner's study: station variants x seeds on virtual time, compared with 95 % intervals.

`swapctl simulate SCENARIO --seeds 3 --vary station.packs.STD75=11,13,15 --vary
station.charger_max_a=100,150` runs every combination of the values (a variant) with each of
the seeds (the scenario's seed and the next ones), each run a `run_virtual` in a process of its
own (`--jobs`, one per core by default), and writes `study.json` and `study.md`: per variant the
mean of each figure over its seeds and the half-width of its 95 % confidence interval
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
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from controller.errors import ConfigError, ConfigIssue
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
    from simstation.simulate import run_virtual, write_report

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
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
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


def write_study(study: Study, out: Path) -> list[Path]:
    """study.json and study.md."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(study.model_dump_json(indent=1) + "\n")
    hours = study.duration_s / 3600.0
    text = (
        f"# {study.scenario}: {len(study.variants)} variant(s) x {len(study.seeds)} seed(s),"
        f" {hours:g} h each\n\nMeans over the seeds {study.seeds}, ± the half-width of the 95 %"
        " interval (Student's t).\n\n" + table(study) + "\n"
    )
    (out / "study.md").write_text(text)
    return [out / "study.json", out / "study.md"]
