"""Reconnection pauses: capped exponential backoff with jitter, in one place.

Every link that reconnects (the MQTT link, the robot's serial link, `swapctl status`, the
simulator's fleet) waits `next()` between attempts: from `min_s`, doubling to `max_s`, each
pause drawn between `(1 - jitter)` and 1 times the current step so that many clients that lost
one broker do not come back in step. `reset()` after a connection that held.
"""

from __future__ import annotations

import random


class Backoff:
    """The pauses between attempts of one link."""

    def __init__(
        self,
        min_s: float,
        max_s: float,
        *,
        jitter: float = 0.5,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 < min_s <= max_s:
            raise ValueError(f"backoff needs 0 < min_s <= max_s (got {min_s}, {max_s})")
        if not 0 <= jitter < 1:
            raise ValueError(f"jitter must be in [0, 1) (got {jitter})")
        self.min_s, self.max_s, self.jitter = min_s, max_s, jitter
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self.step = min_s  # the next pause, before its jitter

    def next(self) -> float:
        """The pause before the next attempt (and the step doubles, up to `max_s`)."""
        pause = self.step * self._rng.uniform(1 - self.jitter, 1.0)
        self.step = min(self.step * 2, self.max_s)
        return pause

    def reset(self) -> None:
        """A connection held: start over at the shortest pause."""
        self.step = self.min_s
