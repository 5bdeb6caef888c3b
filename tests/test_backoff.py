"""The one backoff schedule of every retry loop (serfbridge.delivery.backoff)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from serfbridge.delivery.backoff import Backoff


@given(
    initial=st.floats(0.001, 10.0),
    extra=st.floats(0.0, 1000.0),
    failures=st.integers(-5, 100_000),
    jitter=st.booleans(),
)
def test_backoff_stays_within_its_bounds(
    initial: float, extra: float, failures: int, jitter: bool
) -> None:
    """Every wait lies in [initial/2, maximum], doubles up to the cap, never overflows."""
    backoff = Backoff(initial, initial + extra, jitter=jitter)
    wait = backoff.delay(failures)
    assert initial / 2 <= wait <= initial + extra
    if not jitter and failures >= 1:
        expected = min(initial + extra, initial * 2.0 ** min(failures - 1, 60))
        assert wait == pytest.approx(expected)


def test_backoff_counts_failures_and_resets() -> None:
    """failed() doubles from initial up to the cap; reset() starts over; Retry-After wins."""
    backoff = Backoff(0.5, 3.0)
    assert [backoff.failed() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.failed() == 0.5
    assert backoff.delay(1, retry_after=99.0) == 3.0
    with pytest.raises(ValueError, match="0 < initial <= maximum"):
        Backoff(0.0, 1.0)
