"""The in-process store (the default): runs live in this process and the store records only their
versions. With a checkpoint dir, each new version is also written to disk atomically (temp file +
rename) and the runs are loaded from it at start."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from r2m_service.context_tokens import ContextTokens
from r2m_service.idempotency import IdempotencyStore
from r2m_service.rte_cache import LRUCache
from r2m_service.state.base import (
    Buffers,
    EventHandler,
    RunIdTaken,
    StateEncoder,
    StateStore,
    StoredRun,
    StoreUnavailable,
    UpdateTransaction,
)
from r2m_service.state.blobs import write_file
from r2m_service.tensor_files import read_metadata

log = logging.getLogger(__name__)
_SUFFIX = ".r2m-state"


class MemoryStore(StateStore):
    def __init__(self, *, rte_cache_bytes: int, idempotency_ttl_s: float,
                 idempotency_bytes: int = 64 << 20, checkpoint_dir: str | None = None,
                 fsync: bool = True, split_context_bytes: int = 256 << 20,
                 split_context_ttl_s: float = 600.0) -> None:
        self.rte_cache = LRUCache(rte_cache_bytes)
        self.contexts = ContextTokens(split_context_bytes, split_context_ttl_s)
        self._idempotency = IdempotencyStore(idempotency_ttl_s, idempotency_bytes)
        self._heads: dict[str, int] = {}
        self._on_event: EventHandler | None = None
        self._dir = Path(checkpoint_dir) if checkpoint_dir else None
        self._fsync = fsync
        self.keeps_state = self._dir is not None
        if self._dir is not None:
            self._dir.mkdir(parents=True, exist_ok=True)
            for path in self._dir.glob(f"*{_SUFFIX}"):
                self._heads[path.name.removesuffix(_SUFFIX)] = int(
                    read_metadata(path)["version"])
        self._on_disk = sorted(self._heads)

    async def start(self, on_event: EventHandler) -> None:
        self._on_event = on_event

    async def ping(self) -> None:
        return None

    async def create(self, run_id: str, state: StateEncoder) -> None:
        if run_id in self._heads:
            raise RunIdTaken(run_id)
        self._heads[run_id] = 0  # claimed before the write's await: a concurrent create loses
        try:
            await self._persist(run_id, state)
        except BaseException:
            del self._heads[run_id]
            raise

    async def load(self, run_id: str, since: int | None = None) -> StoredRun | None:
        """Every version on disk is a snapshot (one file per run, replaced atomically)."""
        path, version = self._path(run_id), self._heads.get(run_id)
        if path is None or version is None or not path.is_file():
            return None
        return StoredRun(version, await asyncio.to_thread(path.read_bytes), [])

    async def head(self, run_id: str) -> int | None:
        return self._heads.get(run_id)

    async def delete(self, run_id: str) -> None:
        self._heads.pop(run_id, None)
        path = self._path(run_id)
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self._notify(run_id, None)

    @contextlib.asynccontextmanager
    async def transaction(self, run_id: str) -> AsyncIterator[UpdateTransaction]:
        yield _MemoryTransaction(self, run_id)  # one process: the run's write gate serializes

    async def stored_run_ids(self) -> list[str]:
        return self._on_disk

    def usage(self) -> dict[str, int]:
        return {**super().usage(), "idempotency": self._idempotency.bytes}

    def _path(self, run_id: str) -> Path | None:
        return None if self._dir is None else self._dir / f"{run_id}{_SUFFIX}"

    async def _persist(self, run_id: str, state: StateEncoder) -> None:
        path = self._path(run_id)
        if path is None:
            return
        data: Buffers = await state.snapshot()
        try:
            await asyncio.to_thread(write_file, path, data, self._fsync)
        except OSError as exc:
            raise StoreUnavailable(f"cannot write {path}: {exc}") from exc

    def _notify(self, run_id: str, version: int | None) -> None:
        if self._on_event is not None:
            self._on_event(run_id, version)


class _MemoryTransaction(UpdateTransaction):
    def __init__(self, store: MemoryStore, run_id: str) -> None:
        self._store = store
        self._run_id = run_id

    async def recorded_response(self, key: str) -> str | None:
        return self._store._idempotency.get(self._run_id, key)

    async def commit(self, version: int, state: StateEncoder, response_json: str,
                     idempotency_key: str | None) -> None:
        store = self._store
        await store._persist(self._run_id, state)
        store._heads[self._run_id] = version
        if idempotency_key is not None:
            store._idempotency.put(self._run_id, idempotency_key, response_json)
        store._notify(self._run_id, version)
