"""The state-store interface: run state, versions, update transactions, notifications.

Stores differ in what they keep (nothing but versions in this process; files; Redis) and whether
other processes change runs too. Those differences live in the store classes: the run directory
above them asks the same questions of every store and never branches on which one it has.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from r2m_service.context_tokens import ContextTokens
from r2m_service.errors import StoreUnavailable
from r2m_service.rte_cache import RTECache

# (run_id, version) on a new version; (run_id, None) when the run was deleted
EventHandler = Callable[[str, int | None], None]
# A run's full state as buffers, views of the run's own tensors where possible (no copy of a
# 400 MB state): valid until the run changes, which its write gate prevents while a store writes.
Buffers = list[memoryview | bytes]

__all__ = ["Buffers", "EventHandler", "RunIdTaken", "StateEncoder", "StateStore",
           "StoreUnavailable", "StoredRun", "UpdateTransaction"]


class StateEncoder(ABC):
    """Serializes a run's current version on demand (on the model thread), in either of two
    forms, so that a store that keeps no copy never pays for it and one that keeps a log of
    steps writes a third of the bytes most of the time."""

    @abstractmethod
    async def snapshot(self) -> Buffers:
        """The full state: weights, AdamW moments, step, version, config (`run_state`)."""

    @abstractmethod
    async def step(self) -> Buffers | None:
        """The optimizer step that made the current version from the one before (`run_steps`),
        or None when it was made otherwise (created, imported): then only a snapshot will do."""


@dataclass(frozen=True)
class StoredRun:
    """A run's version `version` as a store keeps it: a snapshot of an earlier (or the same)
    version and the logged steps after it, oldest first, that lead to `version`. The steps
    always end at `version` and are consecutive. `snapshot` is None only when the caller asked
    for the steps after a version it holds (`load(run_id, since=…)`) and the log has them."""

    version: int
    snapshot: bytes | None
    steps: list[bytes]


class RunIdTaken(Exception):
    """`create`: the id belongs to another run already (here or on another replica)."""


class UpdateTransaction(ABC):
    """One update of one run, holding that run's update lock (across replicas where the store is
    shared). Its `commit` is fenced by the lock: a holder whose lock lapsed cannot commit."""

    @abstractmethod
    async def recorded_response(self, key: str) -> str | None:
        """The response JSON an update with this idempotency key already got."""

    @abstractmethod
    async def commit(self, version: int, state: StateEncoder, response_json: str,
                     idempotency_key: str | None) -> None:
        """Make `version` current, atomically with the idempotency record (`response_json` is
        recorded under `idempotency_key` when there is one).

        Raises `StoreUnavailable` (lock lost, store down): the version did not become current,
        and the store's current version is still the one before (a store that keeps no copy of
        the state cannot fail here)."""


class StateStore(ABC):
    rte_cache: RTECache
    contexts: ContextTokens  # split mode's context tokens (shared by replicas where the store is)
    # Whether `load` brings a run back: only then may the run directory drop a run it holds
    # (evict an idle one, or forget one whose commit failed) and load it again later.
    keeps_state: bool = True

    async def start(self, on_event: EventHandler) -> None:  # noqa: B027 - optional hook
        """Begin delivering version and delete notifications."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and background tasks."""

    @abstractmethod
    async def ping(self) -> None:
        """Raise `StoreUnavailable` unless the store answers."""

    @abstractmethod
    async def create(self, run_id: str, state: StateEncoder) -> None:
        """Record a new run at version 0. Raises `RunIdTaken` (and writes nothing) if the id is
        taken."""

    @abstractmethod
    async def load(self, run_id: str, since: int | None = None) -> StoredRun | None:
        """The current version of a run (None: unknown run, or a store that keeps no state).
        `since`: the caller holds that committed version, so the steps after it suffice when
        the store has them (no snapshot read)."""

    @abstractmethod
    async def head(self, run_id: str) -> int | None:
        """The current version (None: unknown run). Cheap: on the /score path."""

    @abstractmethod
    async def delete(self, run_id: str) -> None:
        """Forget a run."""

    @abstractmethod
    def transaction(self, run_id: str) -> AbstractAsyncContextManager[UpdateTransaction]:
        """Serialize the updates of one run (across replicas for shared stores)."""

    @abstractmethod
    async def stored_run_ids(self) -> list[str]:
        """Runs to load at start-up (a store that this process alone reads from disk)."""

    def usage(self) -> dict[str, int]:
        """Bytes this process holds for the store, by what (shown in metrics): each is bounded
        by a setting."""
        return {"rte_cache": self.rte_cache.bytes, "split_contexts": self.contexts.bytes}
