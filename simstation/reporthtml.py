"""The report of a simulated day as one self-contained HTML page: inline CSS and SVG charts.

No script, no external resource: the page can be mailed, archived or printed as it is. Every text
that comes from a file (scenario, alarm messages, reasons) is escaped. The same report always
renders to the same page.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html import escape

from controller.swap.phase import ACTIVE, ordered
from simstation.report import Car, Percentiles, Report
from simstation.reportgrid import energy_section, forecast_section, grid_events_section

# Swap phases in the order a swap goes through them; others present follow alphabetically.
PHASE_ORDER = ordered(ACTIVE)
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f")
OUTCOMES = (  # key, label, colour
    ("served", "served", "#59a14f"),
    ("failed", "failed", "#e15759"),
    ("turned_away", "turned away", "#f28e2b"),
    ("waiting", "still waiting", "#9aa5b1"),
)
SEVERITY_COLOUR = {"critical": "#c0392b", "alarm": "#e15759", "warning": "#f28e2b"}
FAULT_COLOUR = "#7b4fa0"
Span = tuple[float, float]  # a time axis: first and last simulated second of the day
WIDTH = 1160  # SVG user units; the page scales every chart to its column width

CSS = """
:root { --ink: #1f2933; --muted: #616e7c; --rule: #d9dee3; --panel: #f7f9fb; }
* { box-sizing: border-box; }
body { margin: 0; background: #eef1f4; color: var(--ink);
  font: 14px/1.45 "DejaVu Sans", "Segoe UI", Helvetica, Arial, sans-serif; }
main { max-width: 1220px; margin: 0 auto; padding: 20px 28px 28px; background: #fff; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 0 0 6px; }
h3 { font-size: 15px; margin: 12px 0 4px; }
p.lead { margin: 0 0 6px; color: var(--muted); }
section { margin: 16px 0 0; padding-top: 12px; border-top: 1px solid var(--rule);
  break-inside: avoid; }
.meta { display: flex; flex-wrap: wrap; gap: 4px 22px; margin: 8px 0 0; padding: 0;
  color: var(--muted); font-size: 13px; list-style: none; }
.meta b { color: var(--ink); font-weight: 600; }
.cards { display: grid; grid-template-columns: repeat(6, 1fr); gap: 10px; margin: 4px 0 12px; }
.card { background: var(--panel); border: 1px solid var(--rule); border-radius: 6px;
  padding: 8px 12px; border-top: 4px solid var(--accent, #9aa5b1); }
.card .label { font-size: 12px; color: var(--muted); text-transform: uppercase;
  letter-spacing: .04em; }
.card .value { font-size: 24px; font-weight: 700; line-height: 1.2; }
.card .unit { font-size: 13px; font-weight: 400; color: var(--muted); }
.note { color: var(--muted); font-size: 12.5px; margin: 4px 0 0; }
.warn { color: #b03a2e; font-weight: 600; }
/* On the root, inherited: an element's own fill or font-size attribute still wins. */
svg { display: block; width: 100%; height: auto; fill: var(--ink); font-size: 12px; }
svg text { font-family: inherit; }
svg .axis-label { font-size: 12.5px; fill: var(--muted); }
svg .tick { fill: var(--muted); }
svg .grid { stroke: #e6e9ed; stroke-width: 1; }
svg .axis { stroke: #9aa5b1; stroke-width: 1; }
svg .empty { font-size: 15px; fill: var(--muted); }
svg .halo { paint-order: stroke; stroke: #fff; stroke-width: 3px; stroke-linejoin: round; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 3px 8px; border-bottom: 1px solid var(--rule);
  vertical-align: top; }
th { background: var(--panel); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.tag { display: inline-block; padding: 0 6px; border-radius: 3px; color: #fff; font-size: 12px; }
details summary { cursor: pointer; color: var(--muted); margin: 6px 0; }
@media print {
  body { background: #fff; }
  main { max-width: none; padding: 0; }
  section { break-inside: avoid; page-break-inside: avoid; }
  .cards { grid-template-columns: repeat(6, 1fr); }
  details { display: none; }
}
@page { size: A4 landscape; margin: 12mm; }
"""


def render(report: Report) -> str:
    """The whole page for `report`: same report, same text."""
    marks = _marks(report)
    span = _time_span(report)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Simulated day: {escape(report.scenario)}</title>",
        f"<style>{CSS}</style>",
        "</head>",
        "<body><main>",
        _header(report),
        _summary(report),
        _waits_chart(report),
        _steps_chart(report),
        _hours_table(report),
        _bays_table(report),
        _life_table(report),
        _ready_chart(report, span, marks),
        _grid_chart(report, span, marks),
        energy_section(report),
        grid_events_section(report),
        forecast_section(report),
        _queue_chart(report, span, marks),
        _events(report, span, marks),
        _cars(report),
        "</main></body>",
        "</html>",
    ]
    return "\n".join(parts) + "\n"


# --- formatting ---------------------------------------------------------------------------


def _num(value: float, digits: int = 1) -> str:
    """A number for people: no trailing `.0`, a dash for NaN or infinity."""
    if not math.isfinite(value):
        return "&#8211;"  # an en dash (text here is markup)
    text = f"{value:,.{digits}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _clock(t_s: float, *, seconds: bool = False) -> str:
    """Simulated time of day, `HH:MM` (hours past 24 go on counting)."""
    total = round(t_s) if seconds else round(t_s / 60) * 60
    h, rest = divmod(max(total, 0), 3600)
    m, s = divmod(rest, 60)
    return f"{h:02d}:{m:02d}:{s:02d}" if seconds else f"{h:02d}:{m:02d}"


def _duration_parts(seconds: float, digits: int = 1) -> tuple[str, str]:
    """A duration in the unit that reads best: (number, unit)."""
    if not math.isfinite(seconds) or abs(seconds) < 120:
        return _num(seconds, digits), "s"
    if abs(seconds) < 7200:
        return _num(seconds / 60, digits), "min"
    return _num(seconds / 3600, digits), "h"


def _duration(seconds: float) -> str:
    """A duration in the unit that reads best."""
    return " ".join(_duration_parts(seconds))


def _f(value: float) -> str:
    """An SVG coordinate."""
    return f"{value:.1f}"


def _clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, an ellipsis marking the cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _attr(text: str) -> str:
    return escape(text, quote=True)


# --- chart primitives ---------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """A plot area in an SVG of WIDTH x height, and the data ranges it maps."""

    height: int
    x0: float
    x1: float
    y0: float
    y1: float
    left: int = 70
    right: int = 24
    top: int = 30
    bottom: int = 50

    def x(self, v: float) -> float:
        """The SVG x of data value `v`."""
        span = self.x1 - self.x0 or 1.0
        return self.left + (v - self.x0) / span * (WIDTH - self.left - self.right)

    def y(self, v: float) -> float:
        """The SVG y of data value `v`."""
        span = self.y1 - self.y0 or 1.0
        return self.height - self.bottom - (v - self.y0) / span * self.plot_h

    @property
    def plot_h(self) -> float:
        """The plot area's height."""
        return self.height - self.top - self.bottom

    @property
    def plot_right(self) -> float:
        """The plot area's right edge."""
        return WIDTH - self.right


def _nice_step(span: float, target: int) -> float:
    """A round step (1, 2, 2.5 or 5 times a power of ten) giving about `target` intervals."""
    if span <= 0 or not math.isfinite(span):
        return 1.0
    raw = span / target
    mag = 10.0 ** math.floor(math.log10(raw))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if raw <= m * mag * 1.0000001:
            return m * mag
    return 10 * mag


def _value_ticks(
    top: float, target: int = 5, *, integer: bool = False
) -> tuple[float, list[float]]:
    """A rounded-up axis maximum and its ticks from 0, for data up to `top`."""
    top = top if top > 0 and math.isfinite(top) else 1.0
    step = _nice_step(top, target)
    if integer:
        step = max(1.0, math.ceil(step))
    n = max(1, math.ceil(top / step - 1e-9))
    return n * step, [i * step for i in range(n + 1)]


def _hour_ticks(frame: Frame) -> list[tuple[float, str]]:
    """Ticks on a frame's time-of-day axis: round times of day, whole hours where there is room."""
    hours = (frame.x1 - frame.x0) / 3600
    step_h = next(
        (s for s in (1 / 6, 0.25, 0.5, 1, 2, 3, 4, 6, 12, 24, 48, 168) if hours / s <= 24),
        math.ceil(hours / 24),
    )
    step = step_h * 3600
    first = math.ceil(frame.x0 / step - 1e-9)
    last = math.floor(frame.x1 / step + 1e-9)
    every = 2 if last - first > 13 else 1  # a grid line each step, a label where there is room
    return [(i * step, _clock(i * step) if i % every == 0 else "") for i in range(first, last + 1)]


def _svg(title: str, height: int, body: Iterable[str], desc: str = "") -> str:
    ident = "c-" + "".join(ch if ch.isalnum() else "-" for ch in title.lower())
    head = (
        f'<svg viewBox="0 0 {WIDTH} {height}" '
        f'role="img" aria-labelledby="{ident}" data-chart="{_attr(title)}">'
        f'<title id="{ident}">{escape(title)}</title>'
    )
    if desc:
        head += f"<desc>{escape(desc)}</desc>"
    return head + "".join(body) + "</svg>"


def _axes(
    frame: Frame,
    xticks: Sequence[tuple[float, str]],
    yticks: Sequence[float],
    xlabel: str,
    ylabel: str,
) -> list[str]:
    out = []
    for v in yticks:
        y = _f(frame.y(v))
        out.append(
            f'<line class="grid" x1="{frame.left}" x2="{_f(frame.plot_right)}" y1="{y}" y2="{y}"/>'
        )
        out.append(
            f'<text class="tick" x="{frame.left - 8}" y="{y}" text-anchor="end" '
            f'dominant-baseline="middle">{_num(v)}</text>'
        )
    base = _f(frame.height - frame.bottom)
    for v, label in xticks:
        x = _f(frame.x(v))
        out.append(f'<line class="grid" x1="{x}" x2="{x}" y1="{frame.top}" y2="{base}"/>')
        if label:
            out.append(
                f'<text class="tick" x="{x}" y="{frame.height - frame.bottom + 18}" '
                f'text-anchor="middle">{escape(label)}</text>'
            )
    out.append(
        f'<line class="axis" x1="{frame.left}" x2="{_f(frame.plot_right)}" y1="{base}" '
        f'y2="{base}"/>'
        f'<line class="axis" x1="{frame.left}" x2="{frame.left}" y1="{frame.top}" y2="{base}"/>'
    )
    mid_x = _f((frame.left + frame.plot_right) / 2)
    mid_y = _f(frame.top + frame.plot_h / 2)
    out.append(
        f'<text class="axis-label" x="{mid_x}" y="{frame.height - 10}" '
        f'text-anchor="middle">{escape(xlabel)}</text>'
        f'<text class="axis-label" transform="translate(18 {mid_y}) rotate(-90)" '
        f'text-anchor="middle">{escape(ylabel)}</text>'
    )
    return out


def _legend(items: Sequence[tuple[str, str, str]], x: float, y: float) -> list[str]:
    """Legend entries (label, colour, kind: line, dash or box) in a row ending at `x`."""
    widths = [30 + 7.2 * len(label) + 18 for label, _, _ in items]
    cursor = x - sum(widths)
    out = []
    for (label, colour, kind), w in zip(items, widths, strict=True):
        if kind == "box":
            out.append(
                f'<rect x="{_f(cursor)}" y="{_f(y - 6)}" width="20" height="12" rx="2" '
                f'fill="{colour}"/>'
            )
        else:
            dash = ' stroke-dasharray="6 4"' if kind == "dash" else ""
            out.append(
                f'<line x1="{_f(cursor)}" x2="{_f(cursor + 20)}" y1="{_f(y)}" y2="{_f(y)}" '
                f'stroke="{colour}" stroke-width="2.5"{dash}/>'
            )
        out.append(
            f'<text x="{_f(cursor + 26)}" y="{_f(y)}" dominant-baseline="middle">'
            f"{escape(label)}</text>"
        )
        cursor += w
    return out


def _empty(frame: Frame, text: str) -> str:
    return (
        f'<text class="empty" x="{_f((frame.left + frame.plot_right) / 2)}" '
        f'y="{_f(frame.top + frame.plot_h / 2)}" text-anchor="middle">{escape(text)}</text>'
    )


def _step_path(frame: Frame, points: Sequence[tuple[float, float]]) -> str:
    """A step line through `points`, each value held until the next, the last to the end."""
    if not points:
        return ""
    cmds = [f"M{_f(frame.x(points[0][0]))},{_f(frame.y(points[0][1]))}"]
    last = points[0][1]
    for t, v in points[1:]:
        cmds.append(f"H{_f(frame.x(t))}")
        if v != last:
            cmds.append(f"V{_f(frame.y(v))}")
            last = v
    cmds.append(f"H{_f(frame.x(max(frame.x1, points[-1][0])))}")
    return "".join(cmds)


def _line_path(frame: Frame, points: Sequence[tuple[float, float]]) -> str:
    return "".join(
        f"{'M' if i == 0 else 'L'}{_f(frame.x(t))},{_f(frame.y(v))}"
        for i, (t, v) in enumerate(points)
    )


# --- alarms and faults on the time axis ---------------------------------------------------


@dataclass(frozen=True)
class Mark:
    """An alarm raised or a fault injected, numbered for the table (A1, F1, ...)."""

    t_s: float
    label: str
    colour: str


@dataclass(frozen=True)
class Episode:
    """One alarm from raised to cleared (`end_s` None: still raised at the end)."""

    number: int
    scope: str
    code: str
    severity: str
    start_s: float
    end_s: float | None


def _episodes(report: Report) -> tuple[list[Episode], dict[int, int]]:
    """Alarm episodes, and for each alarm entry (by index) its episode number."""
    episodes: list[Episode] = []
    numbers: dict[int, int] = {}
    open_: dict[tuple[str, str], int] = {}
    order = sorted(range(len(report.alarms)), key=lambda i: (report.alarms[i].t_s, i))
    for i in order:
        a = report.alarms[i]
        key = (a.scope, a.code)
        if a.kind == "cleared" and key in open_:
            n = open_.pop(key)
            e = episodes[n - 1]
            episodes[n - 1] = Episode(n, e.scope, e.code, e.severity, e.start_s, a.t_s)
        else:
            n = len(episodes) + 1
            start = a.t_s
            episodes.append(Episode(n, a.scope, a.code, a.severity, start, None))
            if a.kind == "raised":
                open_[key] = n
            else:  # cleared without a raise in the report: an instant
                episodes[n - 1] = Episode(n, a.scope, a.code, a.severity, start, start)
        numbers[i] = n
    return episodes, numbers


def _marks(report: Report) -> list[Mark]:
    episodes, _ = _episodes(report)
    marks = [Mark(e.start_s, f"A{e.number}", _severity_colour(e.severity)) for e in episodes]
    marks += [Mark(f.t_s, f"F{i}", FAULT_COLOUR) for i, f in enumerate(report.faults, 1)]
    return sorted(marks, key=lambda m: (m.t_s, m.label))


def _severity_colour(severity: str) -> str:
    return SEVERITY_COLOUR.get(severity.lower(), "#4e79a7")


def _label_rows(
    spans: Sequence[tuple[float, float]],
    rows: int,
    obstacles: Sequence[tuple[float, float]] = (),
) -> list[int]:
    """A row for each label (x, width), in order, so that none overlaps another where possible.

    `obstacles` (x0, x1) are taken in the first row: a label there may not cover them.
    """
    ends = [-math.inf] * rows
    chosen = []
    for x, width in spans:
        blocked = any(a < x + width and x < b for a, b in obstacles)
        free = [r for r in range(rows) if x > ends[r] + 3 and not (r == 0 and blocked)]
        row = free[0] if free else ends.index(min(ends))
        ends[row] = x + width
        chosen.append(row)
    return chosen


def _label_width(text: str, font_px: float = 11) -> float:
    return len(text) * font_px * 0.62


def _draw_marks(frame: Frame, marks: Sequence[Mark]) -> list[str]:
    """Thin dashed verticals with their labels along the top of a time chart."""
    out = []
    xs = [frame.x(m.t_s) for m in marks]
    rows = _label_rows([(x, _label_width(m.label) + 3) for x, m in zip(xs, marks, strict=True)], 3)
    for m, x, row in zip(marks, xs, rows, strict=True):
        out.append(
            f'<line x1="{_f(x)}" x2="{_f(x)}" y1="{frame.top - 4}" '
            f'y2="{_f(frame.height - frame.bottom)}" stroke="{m.colour}" stroke-width="1.2" '
            f'stroke-dasharray="3 3" opacity="0.8"/>'
            f'<text class="halo" x="{_f(x + 3)}" y="{frame.top - 8 + 11 * row}" font-size="11" '
            f'fill="{m.colour}">{escape(m.label)}</text>'
        )
    return out


# --- sections -----------------------------------------------------------------------------


def _time_span(report: Report) -> Span:
    """The time axis: the run (at least an hour), widened to any sample or event outside it."""
    times = [s.t_s for s in report.samples] + [a.t_s for a in report.alarms]
    times = [t for t in [*times, *(f.t_s for f in report.faults)] if math.isfinite(t)]
    start = report.start_s if math.isfinite(report.start_s) else 0.0
    run = report.duration_s if math.isfinite(report.duration_s) else 0.0
    lo = min([start, *times])
    hi = max([start + max(run, 0.0), *times])
    return lo, max(hi, lo + 3600.0)


def _header(report: Report) -> str:
    st = report.station
    packs = ", ".join(f"{escape(k)} {v}" for k, v in st.packs.items()) or "none"
    limit = f"{_num(st.grid_limit_kw)} kW" if st.grid_limit_kw is not None else "none"
    items = [
        ("slots", str(st.slots)),
        ("packs", packs),
        ("charger", f"{_num(st.charger_kw)} kW"),
        ("grid limit", limit),
        ("power policy", escape(st.policy)),
        ("simulated", _duration(report.duration_s)),
        ("speed", f"{_num(report.speed)}&#215;"),
        ("wall clock", _duration(report.wall_s)),
    ]
    if report.load:
        start, peak, end = report.load
        load = f"{start:.2f} / {peak:.2f} / {end:.2f} (start / max / end), {report.cores} cores"
        items.append(("machine load", load))
    if report.clock == "wall":
        items.append(
            (
                "overruns",
                f"{report.overruns} (the loop woke up to {report.overrun_max_s:.3f} s late)",
            )
        )
    if report.records is not None:
        verdict = "chain intact" if report.records.ok else escape(report.records.problem or "?")
        items.append(("swap records", f"{report.records.count}, {verdict}"))
    desc = f'<p class="lead">{escape(report.description)}</p>' if report.description else ""
    meta = "".join(f"<li>{k}: <b>{v}</b></li>" for k, v in items)
    return (
        f"<header><h1>Simulated day: {escape(report.scenario)}</h1>{desc}"
        f'<ul class="meta">{meta}</ul></header>'
    )


def _card(
    key: str, label: str, value: str, unit: str = "", *, accent: str = "#9aa5b1", exact: str = ""
) -> str:
    """A figure; `exact` (data-value) holds the report's number when the text rounds it."""
    unit_html = f' <span class="unit">{escape(unit)}</span>' if unit else ""
    data = f' data-value="{_attr(exact)}"' if exact else ""
    return (
        f'<div class="card" style="--accent: {accent}" data-key="{key}"{data}>'
        f'<div class="label">{escape(label)}</div>'
        f'<div class="value"><span class="n">{value}</span>{unit_html}</div></div>'
    )


def _duration_card(key: str, label: str, seconds: float) -> str:
    value, unit = _duration_parts(seconds, 2)
    return _card(key, label, value, unit, exact=repr(seconds))


def _summary(report: Report) -> str:
    counts = {key: getattr(report, key) for key, _, _ in OUTCOMES}
    cards = [_card("arrivals", "arrivals", str(report.arrivals), accent="#4e79a7")]
    cards += [_card(key, label, str(counts[key]), accent=c) for key, label, c in OUTCOMES]
    cards += [
        _duration_card("wait_p50", "wait p50", report.waits.p50),
        _duration_card("wait_p90", "wait p90", report.waits.p90),
        _duration_card("swap_mean", "swap time mean", report.swap_times.mean),
        _duration_card("swap_p90", "swap time p90", report.swap_times.p90),
        _card("energy", "energy", _num(report.energy_kwh, 2), "kWh"),
        _card("peak_grid", "peak grid", _num(report.peak_grid_kw, 2), "kW"),
        _card("alarms", "alarms / faults", f"{len(_episodes(report)[0])} / {len(report.faults)}"),
    ]
    # The outcome bar: one segment per outcome, proportional to its count.
    total = sum(counts.values())
    height = 92
    left, right = 20, WIDTH - 20
    body: list[str] = []
    if total == 0:
        body.append(
            f'<rect x="{left}" y="14" width="{right - left}" height="34" fill="#eef1f4" rx="4"/>'
            f'<text class="empty" x="{WIDTH / 2}" y="36" text-anchor="middle">no arrivals</text>'
        )
    else:
        x = float(left)
        for key, label, colour in OUTCOMES:
            n = counts[key]
            if n <= 0:
                continue
            w = n / total * (right - left)
            share = n / total * 100
            body.append(
                f'<rect x="{_f(x)}" y="14" width="{_f(w)}" height="34" fill="{colour}">'
                f"<title>{escape(label)}: {n} ({_num(share)} %)</title></rect>"
            )
            text = f"{n} {label} ({_num(share)} %)"
            if w > 7.2 * len(text) + 12:
                body.append(
                    f'<text x="{_f(x + 8)}" y="31" dominant-baseline="middle" '
                    f'fill="#fff" font-weight="600">{escape(text)}</text>'
                )
            elif w > 30:
                body.append(
                    f'<text x="{_f(x + w / 2)}" y="31" dominant-baseline="middle" '
                    f'text-anchor="middle" fill="#fff" font-weight="600">{n}</text>'
                )
            x += w
    body += _legend([(label, c, "box") for _, label, c in OUTCOMES], right, 72)
    accounted = (
        ""
        if report.accounted()
        else (
            '<p class="note warn">The outcomes do not add up to the arrivals: '
            f"{report.arrivals} arrived, {total} accounted for.</p>"
        )
    )
    return (
        '<section id="summary"><h2>Swaps served, failed, turned away and still waiting</h2>'
        f'<div class="cards">{"".join(cards)}</div>'
        + _svg("Outcome of every arrival", height, body, "Cars by outcome, share of arrivals")
        + accounted
        + "</section>"
    )


def _waits_chart(report: Report) -> str:
    waits = [c.wait_s for c in report.cars if c.outcome == "served" and c.wait_s is not None]
    waits = [w for w in waits if math.isfinite(w)]
    lines = [("p50", report.waits.p50), ("p90", report.waits.p90), ("p99", report.waits.p99)]
    top = max([*waits, *(v for _, v in lines)], default=0.0)
    minutes = top > 180
    scale = 60.0 if minutes else 1.0
    unit = "min" if minutes else "s"
    top_u = top / scale
    width = _nice_step(top_u, 24) if top_u > 0 else 1.0
    if not minutes:
        width = max(width, 1.0)
    n_bins = max(1, math.ceil(top_u / width + 1e-9) + (1 if top_u > 0 else 0))
    # Each wait goes in the bin [k*width, (k+1)*width): a zero wait is in the first one.
    bins = [0] * n_bins
    for w in waits:
        bins[min(n_bins - 1, int(w / scale / width + 1e-9))] += 1
    x_max = n_bins * width
    y_max, yticks = _value_ticks(max(bins), integer=True)
    frame = Frame(height=290, x0=0.0, x1=x_max, y0=0.0, y1=y_max, top=44)
    xt_step = _nice_step(x_max, 12)
    xticks = [(i * xt_step, _num(i * xt_step)) for i in range(int(x_max / xt_step + 1e-9) + 1)]
    body = _axes(frame, xticks, yticks, f"wait from arrival to swap start ({unit})", "cars")
    if not waits:
        body.append(_empty(frame, "no served cars"))
    for k, count in enumerate(bins):
        if count == 0:
            continue
        x0, x1 = frame.x(k * width), frame.x((k + 1) * width)
        y = frame.y(count)
        lo, hi = _num(k * width), _num((k + 1) * width)
        body.append(
            f'<rect x="{_f(x0 + 1)}" y="{_f(y)}" width="{_f(max(x1 - x0 - 2, 1))}" '
            f'height="{_f(frame.y(0) - y)}" fill="#4e79a7">'
            f"<title>{lo}&#8211;{hi} {unit}: {count} cars</title></rect>"
        )
    colours = {"p50": "#59a14f", "p90": "#f28e2b", "p99": "#e15759"}
    for row, (name, value) in enumerate(lines):
        x = frame.x(value / scale)
        # Near the right edge the label goes left of its line.
        anchor = 'text-anchor="end" ' if x > frame.plot_right - 140 else ""
        label_x = x - 5 if anchor else x + 5
        body.append(
            f'<line x1="{_f(x)}" x2="{_f(x)}" y1="{frame.top}" y2="{_f(frame.y(0))}" '
            f'stroke="{colours[name]}" stroke-width="2" stroke-dasharray="6 4"/>'
            f'<text class="halo" x="{_f(label_x)}" y="{frame.top + 12 + 15 * row}" {anchor}'
            f'fill="{colours[name]}" font-weight="600">{name} {_num(value)} s</text>'
        )
    legend = [("served cars", "#4e79a7", "box")]
    legend += [(f"{name} (all started swaps)", colours[name], "dash") for name, _ in lines]
    body += _legend(legend, frame.plot_right, 16)
    return (
        '<section id="waits"><h2>Wait-time distribution</h2>'
        + _svg("Wait-time distribution", frame.height, body, "Histogram of served cars' waits")
        + f'<p class="note">{len(waits)} served cars; percentiles over the {report.waits.n} '
        f"cars whose swap started (served or failed), max {_num(report.waits.max)} s.</p>"
        "</section>"
    )


def _hours_table(report: Report) -> str:
    """Per hour: arrivals, outcomes, the bay's shares and what held the swaps back."""
    if not report.hours:
        return ""
    head = "".join(
        f'<th class="num">{h}</th>' if i else f"<th>{h}</th>"
        for i, h in enumerate(
            [
                "hour",
                "arrived",
                "served",
                "failed",
                "turned away",
                "bay busy",
                "waiting for a pack",
                "bay idle",
                "grid kW",
            ]
        )
    )
    rows = []
    for h in report.hours:
        cells = [
            _clock(h.start_s),
            str(h.arrived),
            str(h.served),
            str(h.failed),
            str(h.turned_away),
            f"{h.busy:.0%}",
            f"{h.waiting_for_pack:.0%}",
            f"{h.idle:.0%}",
            _num(h.grid_kw, 0),
        ]
        tds = "".join(
            f'<td class="num">{escape(c)}</td>' if i else f"<td>{escape(c)}</td>"
            for i, c in enumerate(cells)
        )
        rows.append(f"<tr>{tds}<td>{escape(h.binding)}</td></tr>")
    return (
        '<section id="hours"><h2>Hour by hour: what held the swaps back</h2>'
        f"<table><thead><tr>{head}<th>limit</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></section>"
    )


def _bays_table(report: Report) -> str:
    """A site of several bays: each bay's cars and shares (the figures above are the site's)."""
    if not report.bays:
        return ""
    names = ["bay", "station", "cars", "served", "failed", "turned away", "still waiting"]
    names += ["busy", "waiting for a pack", "time idle", "kWh", "swap p50"]
    head = "".join(
        f'<th class="num">{h}</th>' if i > 1 else f"<th>{h}</th>" for i, h in enumerate(names)
    )
    rows = []
    for b in report.bays:
        cells = [str(b.bay), b.station_id, str(b.arrivals), str(b.served), str(b.failed)]
        cells += [str(b.turned_away), str(b.waiting), f"{b.busy:.0%}", f"{b.waiting_for_pack:.0%}"]
        cells += [f"{b.idle:.0%}", _num(b.energy_kwh, 0), f"{_num(b.swap_p50_s / 60)} min"]
        tds = "".join(
            f'<td class="num">{escape(c)}</td>' if i > 1 else f"<td>{escape(c)}</td>"
            for i, c in enumerate(cells)
        )
        rows.append(f"<tr>{tds}</tr>")
    return (
        '<section id="bays"><h2>Bay by bay</h2>'
        "<p>Each car picks a bay when it arrives (one with a charged pack for it, then the"
        " shortest queue) and stays in its queue.</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></section>"
    )


def _life_table(report: Report) -> str:
    """The daemon's process and journal over the run (a day a row when it runs for days)."""
    life = report.life
    if not life:
        return ""
    every = 24 if report.duration_s > 2 * 86400 else 1
    picked = life[every - 1 :: every] if len(life) > every else life[-1:]
    if picked[-1] is not life[-1]:
        picked.append(life[-1])
    names = ["time", "served", "RSS MiB", "simulator's MiB", "files", "threads", "journal MiB"]
    head = "".join(
        f'<th class="num">{n}</th>' if i else f"<th>{n}</th>" for i, n in enumerate(names)
    )
    rows = []
    for s in picked:
        cells = [
            _clock(s.t_s),
            str(s.served),
            _num(s.rss_kib / 1024),
            _num(s.sim_kib / 1024),
            str(s.fds),
            str(s.threads),
            _num(s.journal_kib / 1024),
        ]
        rows.append(
            "<tr>"
            + "".join(
                f'<td class="num">{escape(c)}</td>' if i else f"<td>{escape(c)}</td>"
                for i, c in enumerate(cells)
            )
            + "</tr>"
        )
    return (
        '<section id="life"><h2>The daemon over the run</h2>'
        "<p>Its process (on virtual time shared with the simulator, whose own records are"
        " the simulator's column) and its journal on disk.</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></section>"
    )


def _ordered_phases(names: Iterable[str]) -> list[str]:
    names = set(names)
    known = [p for p in PHASE_ORDER if p in names]
    return known + sorted(names - set(known))


def _steps_chart(report: Report) -> str:
    phases = _ordered_phases(report.step_s)
    row_h = 34
    top, bottom = 34, 50
    height = top + bottom + max(1, len(phases)) * row_h
    stats: list[Percentiles] = [report.step_s[p] for p in phases]
    longest = max([max(s.mean, s.p90) for s in stats], default=0.0)
    x_max, xticks = _value_ticks(longest * 1.08, 8)  # room for the value labels
    frame = Frame(height=height, x0=0.0, x1=x_max, y0=0.0, y1=1.0, left=170, top=top, bottom=bottom)
    body = _axes(frame, [(v, _num(v)) for v in xticks], [], "simulated seconds", "")
    if not phases:
        body.append(_empty(frame, "no swap steps recorded"))
    for i, (phase, s) in enumerate(zip(phases, stats, strict=True)):
        y = top + i * row_h + 3
        for j, (name, value, colour) in enumerate(
            (("mean", s.mean, "#4e79a7"), ("p90", s.p90, "#a0cbe8"))
        ):
            w = max(frame.x(value) - frame.left, 0.0)
            by = y + j * 14
            body.append(
                f'<rect x="{frame.left}" y="{_f(by)}" width="{_f(w)}" height="13" '
                f'fill="{colour}"><title>{escape(phase)} {name}: {_num(value)} s</title></rect>'
                f'<text x="{_f(frame.left + w + 5)}" y="{_f(by + 7)}" font-size="11" '
                f'dominant-baseline="middle">{_num(value)} s</text>'
            )
        body.append(
            f'<text x="{frame.left - 10}" y="{_f(y + 8)}" text-anchor="end" '
            f'dominant-baseline="middle">{escape(_clip(phase, 24))}</text>'
            f'<text class="tick" x="{frame.left - 10}" y="{_f(y + 22)}" text-anchor="end" '
            f'dominant-baseline="middle" font-size="10.5">n={s.n}</text>'
        )
    body += _legend([("mean", "#4e79a7", "box"), ("p90", "#a0cbe8", "box")], frame.plot_right, 14)
    return (
        '<section id="steps"><h2>Swap time per step</h2>'
        + _svg("Swap time per step", height, body, "Mean and p90 duration of each swap phase")
        + f'<p class="note">Whole swap: mean {_num(report.swap_times.mean)} s, '
        f"p90 {_num(report.swap_times.p90)} s, max {_num(report.swap_times.max)} s over "
        f"{report.swap_times.n} completed swaps.</p></section>"
    )


def _time_frame(height: int, span: Span, y_max: float) -> Frame:
    return Frame(height=height, x0=span[0], x1=span[1], y0=0.0, y1=y_max, top=40)


def _time_section(
    key: str, title: str, desc: str, frame: Frame, body: list[str], *, note: str = ""
) -> str:
    note_html = f'<p class="note">{note}</p>' if note else ""
    return (
        f'<section id="{key}"><h2>{escape(title)}</h2>'
        + _svg(title, frame.height, body, desc)
        + note_html
        + "</section>"
    )


def _pack_types(report: Report) -> list[str]:
    types = list(report.station.packs)
    extra = sorted({t for s in report.samples for t in s.ready} - set(types))
    return types + extra


def _ready_chart(report: Report, span: Span, marks: Sequence[Mark]) -> str:
    types = _pack_types(report)
    top = max((v for s in report.samples for v in s.ready.values()), default=0)
    top = max(top, *report.station.packs.values(), 1) if report.station.packs else max(top, 1)
    y_max, yticks = _value_ticks(top, 6, integer=True)
    frame = _time_frame(270, span, y_max)
    body = _axes(frame, _hour_ticks(frame), yticks, "time of day (h)", "ready packs")
    if not report.samples:
        body.append(_empty(frame, "no samples"))
    legend = []
    for i, pack_type in enumerate(types):
        colour = PALETTE[i % len(PALETTE)]
        points = [(s.t_s, float(s.ready.get(pack_type, 0))) for s in report.samples]
        path = _step_path(frame, points)
        if path:
            body.append(
                f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="2" '
                f'stroke-linejoin="round"/>'
            )
        stocked = report.station.packs.get(pack_type)
        label = f"{pack_type} ({stocked} stocked)" if stocked is not None else pack_type
        legend.append((label, colour, "line"))
    body += _draw_marks(frame, marks)
    body += _legend(legend, frame.plot_right, 14)
    return _time_section(
        "ready",
        "Ready packs per type",
        "Dispensable packs of each type, sampled through the day",
        frame,
        body,
    )


def _grid_chart(report: Report, span: Span, marks: Sequence[Mark]) -> str:
    limit = report.station.grid_limit_kw
    top = max([s.grid_kw for s in report.samples if math.isfinite(s.grid_kw)], default=0.0)
    top = max(top, report.peak_grid_kw if math.isfinite(report.peak_grid_kw) else 0.0)
    if limit is not None and math.isfinite(limit):
        top = max(top, limit * 1.08)
    y_max, yticks = _value_ticks(top, 6)
    frame = _time_frame(290, span, y_max)
    body = _axes(frame, _hour_ticks(frame), yticks, "time of day (h)", "grid power (kW)")
    legend = [("charging power", "#4e79a7", "line")]
    points = [(s.t_s, s.grid_kw) for s in report.samples if math.isfinite(s.grid_kw)]
    if points:
        line = _line_path(frame, points)
        base = _f(frame.y(0))
        area = f"{line}L{_f(frame.x(points[-1][0]))},{base}L{_f(frame.x(points[0][0]))},{base}Z"
        body.append(
            f'<path d="{area}" fill="#4e79a7" fill-opacity="0.22" stroke="none"/>'
            f'<path d="{line}" fill="none" stroke="#4e79a7" stroke-width="1.6" '
            f'stroke-linejoin="round"/>'
        )
    else:
        body.append(_empty(frame, "no samples"))
    if limit is not None and math.isfinite(limit):
        y = _f(frame.y(limit))
        body.append(
            f'<line x1="{frame.left}" x2="{_f(frame.plot_right)}" y1="{y}" y2="{y}" '
            f'stroke="#e15759" stroke-width="2" stroke-dasharray="8 5"/>'
            f'<text x="{frame.left + 6}" y="{_f(frame.y(limit) - 6)}" fill="#e15759" '
            f'font-weight="600">grid limit {_num(limit)} kW</text>'
        )
        legend.append(("grid limit", "#e15759", "dash"))
    body += _draw_marks(frame, marks)
    body += _legend(legend, frame.plot_right, 14)
    return _time_section(
        "grid",
        "Grid power",
        "Total charging power through the day",
        frame,
        body,
        note=f"Peak {_num(report.peak_grid_kw)} kW, {_num(report.energy_kwh)} kWh drawn over "
        "the day.",
    )


def _queue_chart(report: Report, span: Span, marks: Sequence[Mark]) -> str:
    top = max((s.queue for s in report.samples), default=0)
    y_max, yticks = _value_ticks(max(top, 1), 5, integer=True)
    frame = _time_frame(200, span, y_max)
    body = _axes(frame, _hour_ticks(frame), yticks, "time of day (h)", "cars waiting")
    points = [(s.t_s, float(s.queue)) for s in report.samples]
    path = _step_path(frame, points)
    if path:
        base = _f(frame.y(0))
        body.append(
            f'<path d="{path}V{base}H{_f(frame.x(points[0][0]))}Z" fill="#f28e2b" '
            f'fill-opacity="0.25" stroke="none"/>'
            f'<path d="{path}" fill="none" stroke="#f28e2b" stroke-width="1.8"/>'
        )
    else:
        body.append(_empty(frame, "no samples"))
    body += _draw_marks(frame, marks)
    body += _legend([("queue (not yet authorised)", "#f28e2b", "line")], frame.plot_right, 14)
    return _time_section(
        "queue",
        "Queue length",
        "Cars waiting for a swap through the day",
        frame,
        body,
        note=f"Longest queue {top} cars.",
    )


def _events(report: Report, span: Span, marks: Sequence[Mark]) -> str:
    episodes, numbers = _episodes(report)
    lanes: list[tuple[str, str]] = []
    for e in episodes:
        if (e.scope, e.code) not in lanes:
            lanes.append((e.scope, e.code))
    fault_h, row_h = 46, 30  # the faults' lane stacks its labels in three rows
    frame = Frame(
        height=40 + 50 + fault_h + len(lanes) * row_h,
        x0=span[0],
        x1=span[1],
        y0=0.0,
        y1=1.0,
        left=250,
        top=40,
    )
    body = _axes(frame, _hour_ticks(frame), [], "time of day (h)", "")
    centres = [frame.top + fault_h / 2]
    centres += [frame.top + fault_h + i * row_h + row_h / 2 for i in range(len(lanes))]
    labels = ["injected faults", *(f"{scope} {code}" for scope, code in lanes)]
    for i, (label, y) in enumerate(zip(labels, centres, strict=True)):
        body.append(
            f'<text x="{frame.left - 10}" y="{_f(y)}" text-anchor="end" '
            f'dominant-baseline="middle">{escape(_clip(label, 34))}</text>'
        )
        if i:
            top = _f(y - row_h / 2)
            body.append(
                f'<line class="grid" x1="{frame.left}" x2="{_f(frame.plot_right)}" '
                f'y1="{top}" y2="{top}"/>'
            )
    xs = [frame.x(f.t_s) for f in report.faults]
    rows = _label_rows(
        [(x + 9, _label_width(f"F{i}", 12)) for i, x in enumerate(xs, 1)],
        3,
        obstacles=[(x - 8, x + 8) for x in xs],  # the diamonds, on the first row
    )
    for i, (f, x, row) in enumerate(zip(report.faults, xs, rows, strict=True), 1):
        y = centres[0]
        body.append(
            f'<path d="M{_f(x)},{_f(y - 7)}L{_f(x + 7)},{_f(y)}L{_f(x)},{_f(y + 7)}'
            f'L{_f(x - 7)},{_f(y)}Z" fill="{FAULT_COLOUR}" stroke="#fff" stroke-width="1">'
            f"<title>F{i} {_clock(f.t_s, seconds=True)} {escape(f.what)}</title></path>"
            f'<text class="halo" x="{_f(x + 9)}" y="{_f(y + (0, -13, 13)[row])}" '
            f'dominant-baseline="middle" fill="{FAULT_COLOUR}" font-weight="600">F{i}</text>'
        )
    for e in episodes:
        y = centres[lanes.index((e.scope, e.code)) + 1]
        x0 = frame.x(e.start_s)
        x1 = frame.x(e.end_s if e.end_s is not None else frame.x1)
        colour = _severity_colour(e.severity)
        until = _clock(e.end_s, seconds=True) if e.end_s is not None else "the end"
        body.append(
            f'<rect x="{_f(x0)}" y="{_f(y - 8)}" width="{_f(max(x1 - x0, 3))}" height="16" '
            f'rx="3" fill="{colour}" fill-opacity="0.85"><title>A{e.number} '
            f"{escape(e.severity)} {_clock(e.start_s, seconds=True)} to {until}</title></rect>"
            f'<text x="{_f(max(x1, x0 + 3) + 5)}" y="{_f(y)}" dominant-baseline="middle" '
            f'fill="{colour}" font-weight="600">A{e.number}</text>'
        )
    legend = [("fault injected", FAULT_COLOUR, "box")]
    legend += [
        (f"alarm {sev}", colour, "box")
        for sev, colour in SEVERITY_COLOUR.items()
        if any(e.severity.lower() == sev for e in episodes)
    ]
    body += _legend(legend, frame.plot_right, 14)
    if not marks:
        body.append(_empty(frame, "no alarms, no injected faults"))
    return (
        '<section id="events"><h2>Alarms and injected faults</h2>'
        + _svg(
            "Alarms and injected faults",
            frame.height,
            body,
            "Alarms from raised to cleared, and injected faults, on the time axis",
        )
        + _events_tables(report, numbers)
        + "</section>"
    )


def _events_tables(report: Report, numbers: dict[int, int]) -> str:
    rows = []
    order = sorted(range(len(report.alarms)), key=lambda i: (report.alarms[i].t_s, i))
    for i in order:
        a = report.alarms[i]
        colour = _severity_colour(a.severity)
        rows.append(
            f"<tr><td>A{numbers[i]}</td><td>{_clock(a.t_s, seconds=True)}</td>"
            f"<td>{escape(a.kind)}</td>"
            f'<td><span class="tag" style="background: {colour}">{escape(a.severity)}</span></td>'
            f"<td>{escape(a.scope)}</td><td>{escape(a.code)}</td><td>{escape(a.message)}</td></tr>"
        )
    alarms = (
        "<h3>Alarms</h3><table><thead><tr><th>#</th><th>time</th><th>event</th><th>severity</th>"
        "<th>scope</th><th>code</th><th>message</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
        if rows
        else '<p class="note">No alarms.</p>'
    )
    faults_rows = "".join(
        f"<tr><td>F{i}</td><td>{_clock(f.t_s, seconds=True)}</td><td>{escape(f.what)}</td></tr>"
        for i, f in enumerate(report.faults, 1)
    )
    faults = (
        "<h3>Injected faults</h3><table><thead><tr><th>#</th>"
        f"<th>time</th><th>what</th></tr></thead><tbody>{faults_rows}</tbody></table>"
        if faults_rows
        else '<p class="note">No injected faults.</p>'
    )
    return alarms + faults


def _car_row(car: Car) -> str:
    wait = _num(car.wait_s) if car.wait_s is not None else ""
    swap = _num(car.swap_s) if car.swap_s is not None else ""
    colour = next(c for key, _, c in OUTCOMES if key == car.outcome)
    label = next(lab for key, lab, _ in OUTCOMES if key == car.outcome)
    return (
        f"<tr><td>{escape(car.vehicle_id)}</td><td>{escape(car.pack_type)}</td>"
        f'<td class="num">{_num(car.soc)}</td><td>{_clock(car.arrived_s, seconds=True)}</td>'
        f'<td><span class="tag" style="background: {colour}">{label}</span></td>'
        f'<td class="num">{wait}</td><td class="num">{swap}</td>'
        f"<td>{escape(car.swap_id or '')}</td><td>{escape(car.reason or '')}</td></tr>"
    )


def _cars(report: Report) -> str:
    head = (
        '<table><thead><tr><th>vehicle</th><th>pack type</th><th class="num">SoC (%)</th>'
        '<th>arrived</th><th>outcome</th><th class="num">wait (s)</th>'
        '<th class="num">swap (s)</th><th>swap</th><th>reason</th></tr></thead><tbody>'
    )
    cars = sorted(report.cars, key=lambda c: (c.arrived_s, c.vehicle_id))
    unserved = [c for c in cars if c.outcome != "served"]
    parts = ['<section id="cars"><h2>Cars not served</h2>']
    if unserved:
        parts.append(head + "".join(_car_row(c) for c in unserved) + "</tbody></table>")
    else:
        parts.append(f'<p class="note">{"Every car was served." if cars else "No cars."}</p>')
    if cars:
        parts.append(
            f"<details><summary>All {len(cars)} cars</summary>"
            + head
            + "".join(_car_row(c) for c in cars)
            + "</tbody></table></details>"
        )
    parts.append("</section>")
    return "".join(parts)
