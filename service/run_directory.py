"""The one owner of a run's lifecycle: create, find (at the newest version), update, delete.

This process keeps a table of runs in front of the state store. Where other replicas share the
store, a run may have moved on elsewhere: each use compares the store's head version (one GET)
and reloads when it is behind, and `min_version` waits on the store's version notifications
(read-your-writes). If the store is unreachable, runs already loaded keep serving; unknown ones
answer 503. An update is one cycle here — catch up with the store, replay a recorded idempotent
answer, apply, commit fenced by the update lock, roll back if the commit fails — so no other
module mutates a run's state or talks to the store about it. A checkpoint import is the same
cycle with another change in the middle.

The table is bounded: by run count and by the runs' state bytes (`RunLimits`). Past either, the
least recently used runs are dropped from this process when the store keeps their state (they
load again on next use); otherwise a new run is refused (429).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import torch

from r2m_proto.schemas import CreateRunRequest, RunConfig, RunInfo, UpdateResponse
from r2m_service.errors import (
    CapacityExceeded,
    RunExists,
    RunNotFound,
    ServiceError,
    StoreUnavailable,
    VersionNotReached,
)
from r2m_service.run_limits import RunLimits, state_bytes
from r2m_service.run_state import catch_up, decode_run, encode_run, reset, restore_run
from r2m_service.run_steps import encode_step
from r2m_service.runs import Run, matches, new_run_id, resolve_config
from r2m_service.state import (
    Buffers,
    RunIdTaken,
    StateEncoder,
    StateStore,
    StoredRun,
    UpdateTransaction,
)

T = TypeVar("T")
ModelThread = Callable[..., Awaitable[Any]]
log = logging.getLogger(__name__)
# A version notification can be lost while a replica reconnects to Redis: `min_version` waits
# also re-read the head this often.
_RECHECK_S = 0.25


class RunDirectory:
    def __init__(self, store: StateStore, on_model_thread: ModelThread, *,
                 reward_hidden_size: int, device: torch.device,
                 min_version_wait_s: float, limits: RunLimits | None = None,
                 on_forget: Callable[[str], None] = lambda run_id: None) -> None:
        self.store = store
        self._on_model_thread = on_model_thread
        self._reward_hidden_size = reward_hidden_size
        self._device = device
        self._min_version_wait_s = min_version_wait_s
        self.limits = limits or RunLimits.from_settings()
        self._on_forget = on_forget  # a run left this process: drop what is kept per run
        self._runs: OrderedDict[str, Run] = OrderedDict()  # least recently used first
        self._reserved: list[int] = []  # state bytes of runs being built or loaded now
        self._loading: dict[str, asyncio.Task[Run]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._creating = asyncio.Lock()
        # set (and replaced) on every store notification: what `min_version` waits on
        self._notified = asyncio.Event()

    def __len__(self) -> int:
        return len(self._runs)

    @property
    def held_bytes(self) -> int:
        """State bytes of the runs this process holds (bounded by `runs_memory_bytes`)."""
        return sum(self._size(run.config) for run in self._runs.values())

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
        async with self._room(self.limits.check(config, self._reward_hidden_size)):
            run = await self._on_model_thread(build, request.run_id or new_run_id(), config)
            async with self._creating:
                try:
                    if run.run_id in self._runs:
                        raise RunIdTaken(run.run_id)
                    await self.store.create(run.run_id, _Encoder(run, self._on_model_thread))
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
        if run_id in self._runs:
            self._runs.move_to_end(run_id)
        return run

    # ---- update -------------------------------------------------------------------------------

    async def update(self, run: Run, idempotency_key: str | None,
                     train: Callable[[Run], UpdateResponse]) -> UpdateResponse:
        """One update, whole: catch up (see `_cycle`), answer a replayed idempotency key with
        the recorded response, else `train` (on the model thread: one optimizer step that
        changes nothing unless it succeeds) and commit."""
        async with self._cycle(run) as transaction:
            if idempotency_key is not None:
                recorded = await transaction.recorded_response(idempotency_key)
                if recorded is not None:
                    return UpdateResponse.model_validate_json(recorded)
            response = await self._on_model_thread(train, run)
            await self._commit(run, transaction, response.model_dump_json(), idempotency_key,
                               stepped=True)
        return response

    async def replace(self, run: Run, change: Callable[[Run], None]) -> RunInfo:
        """A new version made by `change` (on the model thread; it raises before changing
        anything it refuses, and advances the version), e.g. loading a checkpoint: the same
        lock, catch-up, fenced commit and roll-back as an update."""
        async with self._cycle(run) as transaction:
            await self._on_model_thread(change, run)
            await self._commit(run, transaction, "", None, stepped=False)
            return run.info()

    @contextlib.asynccontextmanager
    async def _cycle(self, run: Run) -> AsyncIterator[UpdateTransaction]:
        """Under the run's write gate and the store's update lock, at the store's version."""
        async with run.gate.write(), self.store.transaction(run.run_id) as transaction:
            latest = await self._head(run.run_id)
            if latest > run.version:
                await self._on_model_thread(catch_up, run,
                                            await self._fetch(run.run_id, run.version))
            yield transaction

    async def _commit(self, run: Run, transaction: UpdateTransaction, response_json: str,
                      idempotency_key: str | None, *, stepped: bool) -> None:
        """`stepped`: the new version is the optimizer step the run just took (an update), so
        the store may log that step instead of the full state."""
        try:
            await transaction.commit(run.version, _Encoder(run, self._on_model_thread, stepped),
                                     response_json, idempotency_key)
        except BaseException:
            await self._roll_back(run)
            raise

    async def _roll_back(self, run: Run) -> None:
        """Back to the store's version after a failed commit: reload it into the run in place,
        or — the store unreachable too — drop the run from this process, so that it loads again
        once the store answers. (A store that keeps no copy cannot fail a commit.)"""
        try:
            await self._on_model_thread(reset, run, await self._fetch(run.run_id))
        except (StoreUnavailable, RunNotFound) as exc:
            log.warning("run %s: the failed commit could not be rolled back in place; it "
                        "reloads from the store on next use", run.run_id)
            self._forget(run.run_id)
            # requests already waiting for this object must not see its uncommitted step
            run.gate.retire(exc if isinstance(exc, StoreUnavailable) else StoreUnavailable(
                f"run {run.run_id} changed while an update failed to commit; retry"))

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
        """Build the run from its snapshot and steps, or bring the one held here forward
        (reading only the steps after its version when the store has them)."""
        run = self._runs.get(run_id)
        stored = await self._fetch(run_id, None if run is None else run.version)
        if run is None:
            assert stored.snapshot is not None  # fetched without `since`
            state = await self._on_model_thread(decode_run, stored.snapshot)
            async with self._room(self._size(state.config)):
                run = await self._on_model_thread(restore_run, state, stored.steps,
                                                  self._reward_hidden_size, self._device)
                self._runs[run_id] = run
            return run
        async with run.gate.write():
            await self._on_model_thread(catch_up, run, stored)
        return run

    # ---- capacity -----------------------------------------------------------------------------

    def _size(self, config: RunConfig) -> int:
        return state_bytes(config, self._reward_hidden_size)

    @contextlib.asynccontextmanager
    async def _room(self, size: int) -> AsyncIterator[None]:
        """Room for one more run of `size` bytes, kept while it is built or loaded (concurrent
        arrivals cannot overshoot the budget together): evict least recently used runs that
        the store can bring back, else `CapacityExceeded`."""
        limits = self.limits
        while (len(self._runs) + len(self._reserved) >= limits.max_runs
               or self.held_bytes + sum(self._reserved) + size > limits.runs_memory_bytes):
            if not self.store.keeps_state or not self._runs:
                raise CapacityExceeded(
                    f"this server holds {len(self._runs)} runs of {self.held_bytes} state bytes "
                    f"and cannot add one of {size} bytes within its limits max_runs = "
                    f"{limits.max_runs} and runs_memory_bytes = {limits.runs_memory_bytes} "
                    "(no run can be evicted: the store keeps no copy, or the room is being "
                    "taken by runs loading now); delete a run or raise the limits")
            evicted = next(iter(self._runs))
            log.info("run %s evicted from this process (least recently used); it reloads from "
                     "the store on next use", evicted)
            self._forget(evicted)
        self._reserved.append(size)
        try:
            yield
        finally:
            self._reserved.remove(size)

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

    async def _fetch(self, run_id: str, since: int | None = None) -> StoredRun:
        stored = await self.store.load(run_id, since)
        if stored is None:
            self._forget(run_id)
            raise RunNotFound(run_id)
        return stored

    def _forget(self, run_id: str) -> None:
        if self._runs.pop(run_id, None) is not None:
            self._on_forget(run_id)


def _same_settings(request: CreateRunRequest, run: Run) -> RunInfo:
    if not matches(request, run.config):
        raise RunExists(run.run_id)
    return run.info()


class _Encoder(StateEncoder):
    """A run's current version for the store, serialized on the model thread only if the store
    asks. `stepped`: the version is the optimizer step the run just took, so a step will do."""

    def __init__(self, run: Run, on_model_thread: ModelThread, stepped: bool = False) -> None:
        self._run = run
        self._on_model_thread = on_model_thread
        self._stepped = stepped

    async def snapshot(self) -> Buffers:
        return await self._on_model_thread(encode_run, self._run)

    async def step(self) -> Buffers | None:
        return await self._on_model_thread(encode_step, self._run) if self._stepped else None
