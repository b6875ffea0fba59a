"""The in-process store (the default): runs live in this process; with a checkpoint dir, each new
version is also written to disk atomically (temp file + rename) and reloaded at start."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

from r2m_service.idempotency import IdempotencyStore
from r2m_service.rte_cache import LRUCache
from r2m_service.state.base import RunLock, StateStore, StoreUnavailable

log = logging.getLogger(__name__)
_SUFFIX = ".r2m-state"


class MemoryStore(StateStore):
    shared = False

    def __init__(self, *, rte_cache_size: int, idempotency_ttl_s: float,
                 checkpoint_dir: str | None = None) -> None:
        self.rte_cache = LRUCache(rte_cache_size)
        self._idempotency = IdempotencyStore(idempotency_ttl_s)
        self._dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.persistent = self._dir is not None
        if self._dir is not None:
            self._dir.mkdir(parents=True, exist_ok=True)

    async def ping(self) -> None:
        return None

    async def create(self, run_id: str, state: bytes | None) -> bool:
        await self._write(run_id, state)  # one process: the run directory checked the id
        return True

    async def load(self, run_id: str) -> bytes | None:
        path = self._path(run_id)
        if path is None or not path.is_file():
            return None
        return await asyncio.to_thread(path.read_bytes)

    async def head(self, run_id: str) -> int | None:
        return None  # not shared: the engine's own run table is the truth

    async def delete(self, run_id: str) -> None:
        path = self._path(run_id)
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    @contextlib.asynccontextmanager
    async def update_lock(self, run_id: str) -> AsyncIterator[RunLock]:
        yield RunLock()  # one process: the run's write gate already serializes updates

    async def recorded_response(self, run_id: str, key: str) -> str | None:
        return self._idempotency.get(run_id, key)

    async def commit(self, run_id: str, version: int, state: bytes | None, response_json: str,
                     idempotency_key: str | None, lock: RunLock) -> None:
        await self._write(run_id, state)
        if idempotency_key is not None:
            self._idempotency.put(run_id, idempotency_key, response_json)

    async def stored_run_ids(self) -> list[str]:
        if self._dir is None:
            return []
        return sorted(p.name.removesuffix(_SUFFIX) for p in self._dir.glob(f"*{_SUFFIX}"))

    def _path(self, run_id: str) -> Path | None:
        return None if self._dir is None else self._dir / f"{run_id}{_SUFFIX}"

    async def _write(self, run_id: str, state: bytes | None) -> None:
        path = self._path(run_id)
        if path is None or state is None:
            return
        try:
            await asyncio.to_thread(_atomic_write, path, state)
        except OSError as exc:
            raise StoreUnavailable(f"cannot write {path}: {exc}") from exc


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
