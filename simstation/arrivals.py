"""Car arrivals for simulated days: the sample days shipped in `data/arrivals/`, or Poisson.

The sample days are public (MIT; `data/arrivals/SOURCE.txt` and `LICENSE`): arrival
timestamps at an urban swap station, one per line (`YYYY-M-D H:MM:SS`).
"""

from __future__ import annotations

import random
from datetime import datetime
from pathlib import Path

DATA = Path(__file__).parent / "data" / "arrivals"


def sample_day(name: str = "urban_day17_137") -> Path:
    """Path of a shipped sample day."""
    path = DATA / f"{name}.dat"
    if not path.is_file():
        shipped = sorted(p.stem for p in DATA.glob("*.dat"))
        raise FileNotFoundError(f"no sample day {name!r} (shipped: {', '.join(shipped)})")
    return path


def read_day(path: Path) -> list[float]:
    """Arrival times in seconds after the day's midnight, sorted."""
    times: list[float] = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            at = datetime.strptime(text, "%Y-%m-%d %H:%M:%S")  # noqa: DTZ007 - local day
        except ValueError as exc:
            raise ValueError(f"{path}:{n}: not 'YYYY-M-D H:MM:SS': {text!r}") from exc
        times.append(at.hour * 3600.0 + at.minute * 60.0 + at.second)
    return sorted(times)


def returned_soc(rng: random.Random) -> float:
    """SoC of a returned pack: Gamma(k=3, theta=12) %, mean 36 % (DOMAIN.md), within 3-85 %."""
    return min(85.0, max(3.0, rng.gammavariate(3.0, 12.0)))
