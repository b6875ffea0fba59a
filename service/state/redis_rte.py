"""The RTE cache as two tiers: this process's LRU in front of Redis, shared by every replica, so
an update on replica B of samples scored on replica A skips the backbone too."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import redis
import torch
from redis.exceptions import RedisError

from r2m_service.rte_cache import LRUCache

log = logging.getLogger(__name__)
_WARN_EVERY_S = 30.0


class RedisRTECache:
    """A cache, so Redis trouble only costs recomputation: errors are logged, never raised."""

    def __init__(self, local: LRUCache, client: redis.Redis, prefix: str, ttl_s: int) -> None:
        self._local = local
        self._redis = client
        self._prefix = prefix
        self._ttl_s = ttl_s
        self._last_warning = 0.0

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
        self._local.put_many(keys, values)
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                for key, value in zip(keys, values, strict=True):
                    data = value.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
                    pipe.set(self._prefix + key, data, ex=self._ttl_s)
                pipe.execute()
        except (RedisError, OSError) as exc:
            self._warn(exc)

    def close(self) -> None:
        self._redis.close()

    def _warn(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_warning > _WARN_EVERY_S:
            self._last_warning = now
            log.warning("RTE cache in redis unavailable (%s); computing RTEs locally", exc)
