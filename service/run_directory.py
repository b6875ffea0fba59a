"""The one owner of a run's lifecycle: create, find (at the newest version), update, delete.

This process keeps a table of runs in front of the state store. Where other replicas share the
store, a run may have moved on elsewhere: each use compares the store's head version (one GET)
and reloads when it is behind, and `min_version` waits on the store's version notifications
(read-your-writes). If the store is unreachable, runs already loaded keep serving; unknown ones
answer 503. An update is one cycle here — catch up with the store, replay a recorded idempotent
answer, apply, commit fenced by the update lock, roll back if the commit fails — so no other
module mutates a run's state or talks to the store about it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import torch

from r2m_proto.schemas import CreateRunRequest, RunConfig, RunInfo, UpdateResponse
from r2m_service.errors import (
    RunExists,
    RunNotFound,
    ServiceError,
    StoreUnavailable,
    VersionNotReached,
)
from r2m_service.run_state import apply_state, decode_run, encode_run, restore_run
from r2m_service.runs import Run, matches, new_run_id, resolve_config
from r2m_service.state import RunIdTaken, StateEncoder, StateStore

T = TypeVar("T")
ModelThread = Callable[..., Awaitable[Any]]
log = logging.getLogger(__name__)
# A version notification can be lost while a replica reconnects to Redis: `min_version` waits
# also re-read the head this often.
_RECHECK_S = 0.25


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
        # set (and replaced) on every store notification: what `min_version` waits on
        self._notified = asyncio.Event()

    def __len__(self) -> int:
        return len(self._runs)

    async def start(self) -> int:
        """Subscribe to the store's notifications; load the runs it keeps for this process."""
        await self.store.start(self._on_store_event)
        ids = await self.store.stored_run_ids()
        for run_id in ids:
            await self._load(run_id)
        return len(ids)

    # ---- create, find, delete -----------------------------------------------------------------

    async def create(self, request: CreateRunRequest,
                     build: Callable[[str, RunConfig], Run]) -> tuple[RunInfo, bool]:
        """(the run, whether it was created now). A caller-chosen id that exists with the same
        settings answers the existing run, so a retried create is harmless; `build` makes the
        fresh run (on the model thread)."""
        if request.run_id is not None:
            existing = await self._find(request.run_id)
            if existing is not None:
                return _same_settings(request, existing), False
        config = resolve_config(request, self._reward_hidden_size)
        run = await self._on_model_thread(build, request.run_id or new_run_id(), config)
        async with self._creating:
            try:
                if run.run_id in self._runs:
                    raise RunIdTaken(run.run_id)
                run.committed_state = await self.store.create(run.run_id, self._encoder(run))
            except RunIdTaken:  # created concurrently under the same id (here or elsewhere)
                existing = await self._find(run.run_id)
                if existing is None:  # its creator has claimed the id but not finished yet
                    raise RunExists(run.run_id, "is being created; retry shortly") from None
                return _same_settings(request, existing), False
            self._runs[run.run_id] = run
        return run.info(), True

    async def delete(self, run_id: str) -> None:
        await self.current(run_id)  # 404 if unknown anywhere
        await self.store.delete(run_id)
        self._forget(run_id)

    async def current(self, run_id: str, min_version: int | None = None) -> Run:
        """The run at the newest version the store knows (and at least `min_version`)."""
        run = self._runs.get(run_id)
        try:
            latest = await self._head(run_id)
            if min_version is not None and latest < min_version:
                latest = await self._wait_for_version(run_id, min_version)
        except StoreUnavailable:
            if run is None or (min_version is not None and run.version < min_version):
                raise
            return run  # serve what this replica has until the store is back
        if run is None or run.version < latest:
            run = await self._refresh(run_id)
        return run

    # ---- update -------------------------------------------------------------------------------

    async def update(self, run: Run, idempotency_key: str | None,
                     train: Callable[[Run], UpdateResponse]) -> UpdateResponse:
        """One update, whole: under the run's write gate and the store's update lock, catch up
        with a version another replica committed, answer a replayed idempotency key with the
        recorded response, else `train` (on the model thread: one optimizer step that changes
        nothing unless it succeeds) and commit; a failed commit rolls the run back."""
        async with run.gate.write(), self.store.transaction(run.run_id) as transaction:
            await self._catch_up(run)
            if idempotency_key is not None:
                recorded = await transaction.recorded_response(idempotency_key)
                if recorded is not None:
                    return UpdateResponse.model_validate_json(recorded)
            response = await self._on_model_thread(train, run)
            try:
                committed = await transaction.commit(run.version, self._encoder(run),
                                                     response.model_dump_json(), idempotency_key)
            except BaseException:
                await self._roll_back(run)
                raise
            run.committed_state = committed
        return response

    async def _catch_up(self, run: Run) -> None:
        latest = await self._head(run.run_id)
        if latest > run.version:
            await self._apply(run, await self._fetch(run.run_id))

    async def _roll_back(self, run: Run) -> None:
        if run.committed_state is None:  # only stores whose commit cannot fail keep no bytes
            log.error("run %s cannot be rolled back: its store keeps no state", run.run_id)
            return
        state = decode_run(run.committed_state)
        await self._on_model_thread(apply_state, run, state)

    def _encoder(self, run: Run) -> StateEncoder:
        async def encode() -> bytes:
            return await self._on_model_thread(encode_run, run)
        return encode

    # ---- loading and notifications ------------------------------------------------------------

    def _on_store_event(self, run_id: str, version: int | None) -> None:
        """A version was committed or a run deleted (here or elsewhere): wake `min_version`
        waiters, and reload a run this replica holds at an older version now, so the next score
        need not wait for it."""
        notified, self._notified = self._notified, asyncio.Event()
        notified.set()
        if version is None:
            self._forget(run_id)
            return
        run = self._runs.get(run_id)
        if run is not None and run.version < version:
            task = asyncio.create_task(self._quiet_refresh(run_id))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _wait_for_version(self, run_id: str, wanted: int) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._min_version_wait_s
        while True:
            notified = self._notified  # before the head: a commit in between still wakes us
            latest = await self._head(run_id)
            remaining = deadline - loop.time()
            if latest >= wanted:
                return latest
            if remaining <= 0:
                raise VersionNotReached(run_id, latest, wanted, self._min_version_wait_s)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(notified.wait(), min(remaining, _RECHECK_S))

    async def _quiet_refresh(self, run_id: str) -> None:
        with contextlib.suppress(ServiceError):
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

    async def _find(self, run_id: str) -> Run | None:
        try:
            return await self.current(run_id)
        except RunNotFound:
            return None

    async def _head(self, run_id: str) -> int:
        latest = await self.store.head(run_id)
        if latest is None:
            self._forget(run_id)
            raise RunNotFound(run_id)
        return latest

    async def _fetch(self, run_id: str) -> bytes:
        data = await self.store.load(run_id)
        if data is None:
            self._forget(run_id)
            raise RunNotFound(run_id)
        return data

    def _forget(self, run_id: str) -> None:
        self._runs.pop(run_id, None)


def _same_settings(request: CreateRunRequest, run: Run) -> RunInfo:
    if not matches(request, run.config):
        raise RunExists(run.run_id)
    return run.info()
