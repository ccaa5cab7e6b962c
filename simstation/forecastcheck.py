"""The station's ready-pack forecasts checked against what was ready later, over a run.

Every minute's sample holds the station's two forecasts (`forecast`: nobody arriving;
`outlook`: with the cars expected) and the packs ready then. A forecast made at `t` for `h`
minutes is compared with the packs ready in the sample at `t + h`, per type, and the errors
are summarised per horizon in busy and quiet hours (busy: the arrival profile expects at least
its hourly mean then). The report's `forecast_check`; docs/power-management.md quotes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from simstation.report import ForecastCheck, Sample

HORIZONS = (5, 15, 30, 60)


def check_forecasts(samples: Sequence[Sample], per_hour: Sequence[float]) -> list[ForecastCheck]:
    """MAE, bias and the share within one pack, per forecast, horizon and kind of hour."""
    if not samples:
        return []
    mean = sum(per_hour) / len(per_hour) if per_hour else 0.0
    by_t = {round(s.t_s): s for s in samples}
    out: list[ForecastCheck] = []
    kinds: tuple[Literal["static", "demand"], ...] = ("static", "demand")
    for kind in kinds:
        for h in HORIZONS:
            errors: dict[str, list[float]] = {"busy": [], "quiet": []}
            for s in samples:
                later = by_t.get(round(s.t_s + h * 60))
                made = s.forecast if kind == "static" else s.outlook
                if later is None or not made:
                    continue
                hour = int(s.t_s // 3600) % 24
                busy = "busy" if per_hour and per_hour[hour] >= mean else "quiet"
                for pack_type, ahead in made.items():
                    if str(h) in ahead:
                        errors[busy].append(ahead[str(h)] - later.ready.get(pack_type, 0))
            for hours_kind in ("busy", "quiet"):
                e = errors[hours_kind]
                if not e:
                    continue
                out.append(
                    ForecastCheck(
                        forecast=kind,
                        horizon_min=h,
                        hours="busy" if hours_kind == "busy" else "quiet",
                        n=len(e),
                        mae=round(sum(abs(x) for x in e) / len(e), 2),
                        bias=round(sum(e) / len(e), 2),
                        within_one=round(sum(1 for x in e if abs(x) <= 1.0) / len(e), 3),
                    )
                )
    return out
