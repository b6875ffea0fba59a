"""The RTE cache as two tiers: this process's LRU in front of Redis, shared by every replica, so
an update on replica B of samples scored on replica A skips the backbone too.

Writes to Redis never run on the model thread: `put_many` fills the local tier and hands the
entries to a writer thread through a bounded buffer, so a slow or absent Redis cannot stall a
score. When the buffer is full, new entries are dropped (a cache may forget) and counted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence

import redis
import torch
from prometheus_client import Counter
from redis.exceptions import RedisError

from r2m_service.rte_cache import LRUCache

log = logging.getLogger(__name__)
_WARN_EVERY_S = 30.0
_MAX_PENDING = 8192  # entries waiting for the writer thread
_FLUSH_ON_CLOSE_S = 2.0


class RedisRTECache:
    """A cache, so Redis trouble only costs recomputation: errors are logged and counted in
    `write_failures` (entries not written), never raised."""

    def __init__(self, local: LRUCache, client: redis.Redis, prefix: str, ttl_s: int, *,
                 write_failures: Counter, max_pending: int = _MAX_PENDING) -> None:
        self._local = local
        self._redis = client
        self._prefix = prefix
        self._ttl_s = ttl_s
        self._write_failures = write_failures
        self._pending: deque[tuple[str, torch.Tensor]] = deque()
        self._max_pending = max_pending
        self._wake = threading.Condition()
        self._closing = False
        self._last_warning = 0.0
        self._writer = threading.Thread(target=self._write_loop, name="r2m-rte-writer",
                                        daemon=True)
        self._writer.start()

    @property
    def bytes(self) -> int:
        return self._local.bytes

    def get_many(self, keys: Sequence[str]) -> list[torch.Tensor | None]:
        found = self._local.get_many(keys)
        missing = [i for i, value in enumerate(found) if value is None]
        if not missing:
            return found
        try:
            raw = self._redis.mget([self._prefix + keys[i] for i in missing])
        except (RedisError, OSError) as exc:
            self._warn(exc)
            return found
        fetched_keys, fetched = [], []
        for i, value in zip(missing, raw, strict=True):
            if value is not None:
                found[i] = torch.frombuffer(bytearray(value), dtype=torch.float32)
                fetched_keys.append(keys[i])
                fetched.append(found[i])
        self._local.put_many(fetched_keys, fetched)
        return found

    def put_many(self, keys: Sequence[str], values: Sequence[torch.Tensor]) -> None:
        """Local tier now; Redis later, from the writer thread (cached RTEs are never mutated,
        so handing over the tensors themselves is safe)."""
        self._local.put_many(keys, values)
        with self._wake:
            room = max(0, self._max_pending - len(self._pending))
            self._pending.extend(zip(keys[:room], values[:room], strict=True))
            self._wake.notify()
        if len(keys) > room:
            self._write_failures.inc(len(keys) - room)

    def close(self) -> None:
        """Stop the writer after it flushed what is pending (bounded in time)."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._writer.join(_FLUSH_ON_CLOSE_S)
        self._redis.close()

    def _write_loop(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._pending or self._closing)
                if not self._pending:
                    return
                batch = list(self._pending)
                self._pending.clear()
            self._write(batch)

    def _write(self, batch: list[tuple[str, torch.Tensor]]) -> None:
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                for key, value in batch:
                    data = value.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
                    pipe.set(self._prefix + key, data, ex=self._ttl_s)
                pipe.execute()
        except (RedisError, OSError) as exc:
            self._write_failures.inc(len(batch))
            self._warn(exc)

    def _warn(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_warning > _WARN_EVERY_S:
            self._last_warning = now
            log.warning("RTE cache in redis unavailable (%s); computing RTEs locally", exc)
