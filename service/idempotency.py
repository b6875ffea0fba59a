"""Idempotency keys for `/v1/update`: a retried request returns the first answer, applies once."""

from __future__ import annotations

import time
from collections import OrderedDict

from r2m_proto.schemas import UpdateResponse


class IdempotencyStore:
    """In-process `(run_id, key) → response` with a TTL. Checked and written under the run's lock,
    so two concurrent retries cannot both apply."""

    def __init__(self, ttl_s: float, capacity: int = 100_000) -> None:
        self.ttl_s = ttl_s
        self.capacity = capacity
        self._entries: OrderedDict[tuple[str, str], tuple[float, UpdateResponse]] = OrderedDict()

    def get(self, run_id: str, key: str) -> UpdateResponse | None:
        self._expire()
        entry = self._entries.get((run_id, key))
        return entry[1] if entry else None

    def put(self, run_id: str, key: str, response: UpdateResponse) -> None:
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
