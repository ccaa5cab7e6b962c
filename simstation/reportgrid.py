"""The report page's grid-aware sections: energy and its cost by hour, forecasts, grid events.

HTML tables from `Report` (simstation/reporthtml.py puts them in the page); every text escaped.
"""

from __future__ import annotations

from html import escape

from simstation.report import Report


def _table(names: list[str], rows: list[list[str]]) -> str:
    head = "".join(
        f'<th class="num">{escape(n)}</th>' if i else f"<th>{escape(n)}</th>"
        for i, n in enumerate(names)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{escape(c)}</td>' if i else f"<td>{escape(c)}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def energy_section(report: Report) -> str:
    """Energy bought and the limit that bound, hour by hour; its cost with a tariff."""
    if not report.energy_by_hour:
        return ""
    first = int(report.start_s // 3600)
    priced = report.energy_cost is not None
    names = ["hour", "kWh", "binding limit"]
    rows = []
    for i, kwh in enumerate(report.energy_by_hour):
        hour = first + i
        bound = report.binding_by_hour[i] if i < len(report.binding_by_hour) else "none"
        rows.append([f"{hour % 24:02d}:00" + (f" (day {hour // 24 + 1})" if hour >= 24 else ""),
                     f"{kwh:.1f}", bound])  # fmt: skip
    text = f"<p>{report.energy_kwh:.0f} kWh in all."
    if priced:
        currency = escape(report.currency or "")
        text += f" Cost {report.energy_cost:.2f} {currency}"
        if report.cost_per_swap is not None:
            text += f", {report.cost_per_swap:.2f} {currency} a swap"
        if report.energy_cost_bound is not None:
            text += (
                f"; the cheapest it could have cost (each pack's energy at the lowest price of"
                f" its stay in a slot) {report.energy_cost_bound:.2f} {currency}"
            )
        text += "."
    if report.store_kwh_start is not None and report.store_kwh_end is not None:
        text += (
            f" The store's packs held {report.store_kwh_start:.0f} kWh at the start and"
            f" {report.store_kwh_end:.0f} kWh at the end."
        )
    text += "</p>"
    return (
        '<section id="energy"><h2>Energy and the limit that bound</h2>'
        + text
        + _table(names, rows)
        + "</section>"
    )


def forecast_section(report: Report) -> str:
    """Both ready-pack forecasts against what was ready when their horizon came."""
    if not report.forecast_check:
        return ""
    rows = [
        [
            "nobody arriving" if c.forecast == "static" else "with the cars expected",
            f"{c.horizon_min} min",
            c.hours,
            str(c.n),
            f"{c.mae:.2f}",
            f"{c.bias:+.2f}",
            f"{c.within_one:.0%}",
        ]
        for c in report.forecast_check
    ]
    names = ["forecast", "horizon", "hours", "n", "MAE (packs)", "bias", "within one"]
    return (
        '<section id="forecasts"><h2>Ready-pack forecasts</h2>'
        "<p>Each minute's forecast against the packs ready when its horizon came; busy hours:"
        " the arrival profile expects at least its hourly mean.</p>"
        + _table(names, rows)
        + "</section>"
    )


def grid_events_section(report: Report) -> str:
    """Each grid operator's limit, the station's answer and the cost it predicted."""
    if not report.grid_events:
        return ""
    rows = []
    for e in report.grid_events:
        h, m = divmod(int(e.t_s // 60), 60)
        predicted = (
            "-"
            if e.predicted_turned_away is None
            else f"{e.predicted_turned_away:g} cars, {e.predicted_below_floor or 0:g} packs"
        )
        rows.append([f"{h % 24:02d}:{m:02d}", f"{e.limit_kw:g} kW", f"{e.duration_min:g} min",
                     e.code or "no reply", predicted])  # fmt: skip
    names = ["at", "limit", "for", "answer", "predicted cost"]
    return '<section id="grid-events"><h2>Grid events</h2>' + _table(names, rows) + "</section>"
