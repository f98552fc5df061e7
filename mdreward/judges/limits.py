"""Client-side rate limits (requests and tokens per minute) and retry backoff for judge clients."""
from __future__ import annotations

import asyncio
import random
import time


class MinuteBudget:
    """A token bucket refilled continuously at ``per_minute`` units a minute (burst: one minute's worth).

    ``acquire(n)`` waits until ``n`` units are available; a request larger than the whole bucket
    waits for a full bucket and then drives it negative, so it still goes out.
    """

    def __init__(self, per_minute: float, *, clock=time.monotonic) -> None:
        if per_minute <= 0:
            raise ValueError(f"a per-minute limit must be positive, got {per_minute}")
        self.per_minute = float(per_minute)
        self._clock = clock
        self._level = self.per_minute
        self._stamp = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._level = min(self.per_minute, self._level + (now - self._stamp) * self.per_minute / 60.0)
        self._stamp = now

    async def acquire(self, units: float = 1.0) -> None:
        async with self._lock:  # first come, first served
            need = min(units, self.per_minute)
            self._refill()
            while self._level < need:
                await asyncio.sleep((need - self._level) * 60.0 / self.per_minute)
                self._refill()
            self._level -= units

    def refund(self, units: float) -> None:
        """Give back units charged by an estimate that turned out too high (or charge more if negative)."""
        self._refill()
        self._level = min(self.per_minute, self._level + units)


def backoff_delay(attempt: int, *, base_s: float, cap_s: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
    ceiling = min(cap_s, base_s * (2 ** attempt))
    return (rng or random).uniform(0.0, ceiling)
