"""Idempotency keys for `/v1/update`: a retried request returns the first answer, applies once."""

from __future__ import annotations

import time
from collections import OrderedDict


class IdempotencyStore:
    """In-process `(run_id, key) → response JSON` with a TTL. Checked and written under the
    run's update lock, so two concurrent retries cannot both apply."""

    def __init__(self, ttl_s: float, capacity: int = 100_000) -> None:
        self.ttl_s = ttl_s
        self.capacity = capacity
        self._entries: OrderedDict[tuple[str, str], tuple[float, str]] = OrderedDict()

    def get(self, run_id: str, key: str) -> str | None:
        self._expire()
        entry = self._entries.get((run_id, key))
        return entry[1] if entry else None

    def put(self, run_id: str, key: str, response: str) -> None:
        self._entries[(run_id, key)] = (time.monotonic() + self.ttl_s, response)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def _expire(self) -> None:
        now = time.monotonic()
        while self._entries:
            first = next(iter(self._entries.values()))
            if first[0] > now:
                break
            self._entries.popitem(last=False)
