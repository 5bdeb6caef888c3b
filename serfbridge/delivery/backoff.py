"""Exponential backoff, the one schedule every retry loop uses: the deliverer between
attempts at a sink, and the relay's reconnects to Serf, Redis and MQTT.

The n-th consecutive failure waits ``initial * 2**(n-1)`` seconds, capped at ``maximum``.
With ``jitter`` the wait is drawn from the upper half of that, so that many retriers that
failed together do not come back together; a receiver's ``Retry-After`` replaces the
computed wait (still capped).
"""

from __future__ import annotations

import random


class Backoff:
    """The schedule, plus a failure count for loops that keep one (``failed``/``reset``)."""

    def __init__(self, initial: float, maximum: float, *, jitter: bool = False) -> None:
        if initial <= 0 or maximum < initial:
            raise ValueError(f"backoff needs 0 < initial <= maximum, got {initial}, {maximum}")
        self.initial, self.maximum, self.jitter = initial, maximum, jitter
        self.failures = 0

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        """The wait after ``failures`` consecutive failures (1 for the first)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.maximum)
        # min() before the power would overflow: 2.0 ** 1100 is an OverflowError.
        ceiling = min(self.maximum, self.initial * 2.0 ** min(max(failures - 1, 0), 60))
        if self.jitter:
            return ceiling * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not security
        return ceiling

    def failed(self) -> float:
        """Count one more failure and return the wait before the next try."""
        self.failures += 1
        return self.delay(self.failures)

    def reset(self) -> None:
        self.failures = 0
