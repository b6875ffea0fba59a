"""Where the engine gets its runs: this process's table in front of the state store.

With a shared store (Redis) a run may have moved on elsewhere: each use checks the store's head
version (one GET) and reloads when it is behind; `min_version` waits briefly for a version
another replica is writing (read-your-writes). If the store is unreachable, runs already loaded
keep serving; unknown ones answer 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import torch

from r2m_proto.errors import ErrorCode, WireError
from r2m_service.run_state import apply_state, decode_run, encode_run, restore_run
from r2m_service.runs import Run, RunNotFound
from r2m_service.state import StateStore, StoreUnavailable

log = logging.getLogger(__name__)

ModelThread = Callable[..., Awaitable[Any]]
_POLL_S = 0.02


class VersionNotReached(WireError):
    def __init__(self, run_id: str, version: int, wanted: int, waited_s: float) -> None:
        super().__init__(f"run {run_id} is at version {version}; min_version {wanted} was not "
                         f"reached within {waited_s:g}s", "min_version",
                         ErrorCode.VERSION_CONFLICT)


class RunDirectory:
    def __init__(self, store: StateStore, on_model_thread: ModelThread, *,
                 reward_hidden_size: int, device: torch.device,
                 min_version_wait_s: float) -> None:
        self.store = store
        self._on_model_thread = on_model_thread
        self._reward_hidden_size = reward_hidden_size
        self._device = device
        self._min_version_wait_s = min_version_wait_s
        self._runs: dict[str, Run] = {}
        self._loading: dict[str, asyncio.Task[Run]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._creating = asyncio.Lock()

    def __len__(self) -> int:
        return len(self._runs)

    async def restore_stored(self) -> int:
        """Load every run a persistent store holds for this process (checkpoint dir)."""
        ids = await self.store.stored_run_ids()
        for run_id in ids:
            await self._load(run_id)
        return len(ids)

    async def find(self, run_id: str) -> Run | None:
        """The run if it exists here or in the store, else None."""
        try:
            return await self.current(run_id)
        except RunNotFound:
            return None

    async def add(self, run: Run) -> bool:
        """Persist a new run, then serve it; False if its id was taken meanwhile (by a
        concurrent create here or on another replica)."""
        async with self._creating:
            if run.run_id in self._runs:
                return False
            if self.store.persistent:
                run.committed_state = await self._on_model_thread(encode_run, run)
            if not await self.store.create(run.run_id, run.committed_state):
                return False
            self._runs[run.run_id] = run
            return True

    async def delete(self, run_id: str) -> None:
        await self.current(run_id)  # 404 if unknown anywhere
        await self.store.delete(run_id)
        self.forget(run_id)

    def forget(self, run_id: str) -> None:
        self._runs.pop(run_id, None)

    async def current(self, run_id: str, min_version: int | None = None) -> Run:
        """The run at the newest version the store knows (and at least `min_version`)."""
        run = self._runs.get(run_id)
        if not self.store.shared:
            if run is None:
                raise RunNotFound(run_id)
            await self._wait_for(run_id, min_version, lambda: _const(run.version))
            return run
        try:
            latest = await self.store.head(run_id)
        except StoreUnavailable:
            if run is None or (min_version is not None and run.version < min_version):
                raise
            return run  # serve what this replica has until the store is back
        if latest is None:
            self.forget(run_id)
            raise RunNotFound(run_id)
        if min_version is not None and latest < min_version:
            latest = await self._wait_for(run_id, min_version, self._store_version(run_id))
        if run is None or run.version < latest:
            run = await self._refresh(run_id)
        return run

    async def catch_up(self, run: Run) -> None:
        """Inside an update (write gate + store lock held): load a newer version another
        replica committed, so this update applies on top of it."""
        if not self.store.shared:
            return
        latest = await self.store.head(run.run_id)
        if latest is None:
            raise RunNotFound(run.run_id)
        if latest > run.version:
            await self._apply(run, await self._fetch(run.run_id))

    async def commit(self, run: Run, response_json: str, idempotency_key: str | None,
                     lock: Any) -> None:
        """Make the run's new version durable/visible; on failure roll the run back."""
        try:
            state = (await self._on_model_thread(encode_run, run) if self.store.persistent
                     else None)
            await self.store.commit(run.run_id, run.version, state, response_json,
                                    idempotency_key, lock)
        except BaseException:
            if run.committed_state is not None:
                await self._on_model_thread(apply_state, run, decode_run(run.committed_state))
            raise
        run.committed_state = state

    def on_store_event(self, run_id: str, version: int | None) -> None:
        """Notification from the store: reload eagerly, so the next score need not wait."""
        if version is None:
            self.forget(run_id)
            return
        run = self._runs.get(run_id)
        if run is not None and run.version < version:
            task = asyncio.create_task(self._quiet_refresh(run_id))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _quiet_refresh(self, run_id: str) -> None:
        with contextlib.suppress(WireError):
            await self._refresh(run_id)

    async def _refresh(self, run_id: str) -> Run:
        """Load or reload a run; concurrent callers share one load."""
        task = self._loading.get(run_id)
        if task is None:
            task = asyncio.create_task(self._load(run_id))
            self._loading[run_id] = task
            task.add_done_callback(lambda _: self._loading.pop(run_id, None))
        return await asyncio.shield(task)

    async def _load(self, run_id: str) -> Run:
        data = await self._fetch(run_id)
        run = self._runs.get(run_id)
        if run is None:
            state = await self._on_model_thread(decode_run, data)
            run = await self._on_model_thread(restore_run, state, self._reward_hidden_size,
                                              self._device)
            run.committed_state = bytes(data)
            self._runs[run_id] = run
            return run
        async with run.gate.write():
            await self._apply(run, data)
        return run

    async def _apply(self, run: Run, data: bytes) -> None:
        state = await self._on_model_thread(decode_run, data)
        if state.version > run.version:
            await self._on_model_thread(apply_state, run, state)
            run.committed_state = bytes(data)

    async def _fetch(self, run_id: str) -> bytes:
        data = await self.store.load(run_id)
        if data is None:
            self.forget(run_id)
            raise RunNotFound(run_id)
        return data

    def _store_version(self, run_id: str) -> Callable[[], Awaitable[int]]:
        async def version() -> int:
            latest = await self.store.head(run_id)
            if latest is None:
                raise RunNotFound(run_id)
            return latest
        return version

    async def _wait_for(self, run_id: str, wanted: int | None,
                        version: Callable[[], Awaitable[int]]) -> int:
        current = await version()
        if wanted is None or current >= wanted:
            return current
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._min_version_wait_s
        while loop.time() < deadline:
            await asyncio.sleep(_POLL_S)
            current = await version()
            if current >= wanted:
                return current
        raise VersionNotReached(run_id, current, wanted, self._min_version_wait_s)


async def _const(value: int) -> int:
    return value
