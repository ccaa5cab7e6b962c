"""Simulated time: runs `speed` times faster than the monotonic clock, never slept through."""

from __future__ import annotations

from drivers import clock


class SimClock:
    """Simulated seconds since start; the speed can change while running."""

    def __init__(self, speed: float = 1.0) -> None:
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self._speed = speed
        self._real0 = clock.monotonic()
        self._sim0 = 0.0

    @property
    def speed(self) -> float:
        """Simulated seconds per real second."""
        return self._speed

    @speed.setter
    def speed(self, value: float) -> None:
        if value <= 0:
            raise ValueError("speed must be > 0")
        self._sim0 = self.now()
        self._real0 = clock.monotonic()
        self._speed = value

    def now(self) -> float:
        """Simulated seconds since the clock started."""
        return self._sim0 + (clock.monotonic() - self._real0) * self._speed

    def real(self, sim_seconds: float) -> float:
        """Real seconds that `sim_seconds` of simulated time take."""
        return sim_seconds / self._speed
