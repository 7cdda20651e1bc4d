"""Per-source token buckets: an INVITE flood from one address is answered 503 and dropped."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

#: Sources remembered at once; the least recently seen is forgotten first.
MAX_SOURCES = 4096


class RateLimiter:
    """A token bucket per source (``rate`` tokens a second, at most ``burst`` saved)."""

    def __init__(
        self,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_sources: int = MAX_SOURCES,
    ) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self.max_sources = max_sources
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self.limited = 0

    def allow(self, source: str) -> bool:
        now = self.clock()
        tokens, last = self._buckets.pop(source, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        else:
            self.limited += 1
        self._buckets[source] = (tokens, now)
        while len(self._buckets) > self.max_sources:
            self._buckets.popitem(last=False)
        return allowed
