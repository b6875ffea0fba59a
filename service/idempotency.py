"""Idempotency keys for `/v1/update`: a retried request returns the first answer, applies once."""

from __future__ import annotations

import time
from collections import OrderedDict

# Bytes a record costs beyond its strings: the tuple key, the (deadline, response) tuple, the
# dict slot.
RECORD_OVERHEAD_BYTES = 256


class IdempotencyStore:
    """In-process `(run_id, key) → response JSON` with a TTL and a byte budget (oldest dropped
    first: a record older than a trainer's retry window is no use). Checked and written under
    the run's update lock, so two concurrent retries cannot both apply."""

    def __init__(self, ttl_s: float, capacity_bytes: int) -> None:
        self.ttl_s = ttl_s
        self.capacity_bytes = capacity_bytes
        self.bytes = 0
        self._entries: OrderedDict[tuple[str, str], tuple[float, str]] = OrderedDict()

    def get(self, run_id: str, key: str) -> str | None:
        self._expire()
        entry = self._entries.get((run_id, key))
        return entry[1] if entry else None

    def put(self, run_id: str, key: str, response: str) -> None:
        self._drop((run_id, key))
        self._entries[(run_id, key)] = (time.monotonic() + self.ttl_s, response)
        self.bytes += _size((run_id, key), response)
        while self.bytes > self.capacity_bytes and self._entries:
            self._drop(next(iter(self._entries)))

    def __len__(self) -> int:
        return len(self._entries)

    def _expire(self) -> None:
        now = time.monotonic()
        while self._entries:
            key, (deadline, _) = next(iter(self._entries.items()))
            if deadline > now:
                break
            self._drop(key)

    def _drop(self, key: tuple[str, str]) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= _size(key, entry[1])


def _size(key: tuple[str, str], response: str) -> int:
    return len(key[0]) + len(key[1]) + len(response) + RECORD_OVERHEAD_BYTES
