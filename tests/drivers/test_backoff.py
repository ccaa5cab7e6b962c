"""The one backoff every reconnecting link uses: bounded, doubling, jittered, reset."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.backoff import Backoff


@given(
    min_s=st.floats(0.001, 10.0),
    factor=st.floats(1.0, 1000.0),
    jitter=st.floats(0.0, 0.99),
    attempts=st.integers(1, 60),
    seed=st.integers(0, 2**32),
)
def test_pauses_stay_within_their_bounds(
    min_s: float, factor: float, jitter: float, attempts: int, seed: int
) -> None:
    max_s = min_s * factor
    backoff = Backoff(min_s, max_s, jitter=jitter, rng=random.Random(seed))
    step = min_s
    for _ in range(attempts):
        pause = backoff.next()
        assert (1 - jitter) * step * (1 - 1e-9) <= pause <= step * (1 + 1e-9)
        assert pause <= max_s * (1 + 1e-9)
        step = min(step * 2, max_s)
    backoff.reset()
    assert backoff.next() <= min_s * (1 + 1e-9)


def test_without_jitter_it_doubles_to_its_cap() -> None:
    backoff = Backoff(0.5, 10.0, jitter=0.0)
    assert [backoff.next() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


@pytest.mark.parametrize(("min_s", "max_s", "jitter"), [(0, 1, 0.5), (2, 1, 0.5), (1, 2, 1.0)])
def test_nonsense_is_refused(min_s: float, max_s: float, jitter: float) -> None:
    with pytest.raises(ValueError, match=r"backoff|jitter"):
        Backoff(min_s, max_s, jitter=jitter)
