"""A small sliding-window rate limiter for abuse-prone routes (login, access requests, lookups).

State is per process; with several API replicas each enforces its own window, which still bounds
the total by replicas × limit.  Account lockout after repeated failures is stored in the database
and therefore holds across replicas.
"""

from __future__ import annotations

import time
from collections import deque
from threading import Lock

from flip_api.core.errors import TooManyRequests


class RateLimiter:
    def __init__(self, max_keys: int = 100_000) -> None:
        self._hits: dict[tuple[str, str], deque[float]] = {}
        self._lock = Lock()
        self._max_keys = max_keys

    def check(self, bucket: str, key: str, limit: int, window_s: float = 60.0) -> None:
        """Record one hit; raise 429 (with Retry-After) when ``limit`` hits fall inside the window."""
        now = time.monotonic()
        with self._lock:
            if len(self._hits) > self._max_keys:
                self._hits.clear()
            hits = self._hits.setdefault((bucket, key), deque())
            while hits and hits[0] <= now - window_s:
                hits.popleft()
            if len(hits) >= limit:
                retry = max(1, int(hits[0] + window_s - now) + 1)
                raise TooManyRequests(
                    f"too many {bucket} requests; retry in {retry} s", headers={"Retry-After": str(retry)}
                )
            hits.append(now)

    def reset(self) -> None:
        with self._lock:
            self._hits.clear()
