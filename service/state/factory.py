"""Settings → the state store they ask for."""

from __future__ import annotations

import logging

from r2m_service.metrics import Metrics
from r2m_service.settings import Settings, redact_url
from r2m_service.state.base import StateStore
from r2m_service.state.memory import MemoryStore

log = logging.getLogger(__name__)


def open_store(settings: Settings, metrics: Metrics) -> StateStore:
    if settings.redis_url:
        from r2m_service.state.redis_store import RedisStore

        log.info("state store: redis (%s, prefix %r)%s", redact_url(settings.redis_url),
                 settings.redis_prefix, f", run state files in {settings.checkpoint_dir}"
                 if settings.checkpoint_dir else "")
        return RedisStore(settings.redis_url, rte_write_failures=metrics.rte_write_failures,
                          prefix=settings.redis_prefix,
                          lock_lease_s=settings.lock_lease_s,
                          idempotency_ttl_s=settings.idempotency_ttl_s,
                          rte_cache_bytes=settings.rte_cache_bytes, rte_ttl_s=settings.rte_ttl_s,
                          retained_versions=settings.retained_versions,
                          snapshot_every=settings.state_snapshot_every,
                          blob_dir=settings.checkpoint_dir,
                          blob_fsync=settings.checkpoint_fsync,
                          split_context_bytes=settings.split_context_bytes,
                          split_context_ttl_s=settings.split_context_ttl_s)
    log.info("state store: in-process%s", f" (checkpoints in {settings.checkpoint_dir})"
             if settings.checkpoint_dir else "")
    return MemoryStore(rte_cache_bytes=settings.rte_cache_bytes,
                       idempotency_ttl_s=settings.idempotency_ttl_s,
                       idempotency_bytes=settings.idempotency_bytes,
                       checkpoint_dir=settings.checkpoint_dir, fsync=settings.checkpoint_fsync,
                       split_context_bytes=settings.split_context_bytes,
                       split_context_ttl_s=settings.split_context_ttl_s)

