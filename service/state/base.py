"""The state-store interface: run state, versions, update locks, idempotency, notifications."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from r2m_proto.errors import ErrorCode, WireError
from r2m_service.rte_cache import RTECache

# (run_id, version) on a new version; (run_id, None) when the run was deleted
EventHandler = Callable[[str, int | None], None]


class StoreUnavailable(WireError):
    """503: the shared store cannot be reached; nothing was changed."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"the state store is unreachable ({detail}); nothing was changed",
                         None, ErrorCode.UNAVAILABLE, retry_after_s=1)


class RunLock:
    """Proof of holding a run's update lock; `token` fences the commit."""

    def __init__(self, token: str = "") -> None:
        self.token = token


class StateStore(ABC):
    """`shared`: other processes may change runs (check versions, reload). `persistent`: commits
    carry the run's serialized state (and a failed commit must be rolled back locally)."""

    shared: bool = False
    persistent: bool = False
    rte_cache: RTECache

    async def start(self, on_event: EventHandler) -> None:  # noqa: B027 - optional hook
        """Begin delivering change notifications (shared stores)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and background tasks."""

    @abstractmethod
    async def ping(self) -> None:
        """Raise `StoreUnavailable` unless the store answers."""

    @abstractmethod
    async def create(self, run_id: str, state: bytes | None) -> bool:
        """Record a new run at version 0; False (and nothing written) if the id is taken."""

    @abstractmethod
    async def load(self, run_id: str) -> bytes | None:
        """The current state of a run (None: unknown run)."""

    @abstractmethod
    async def head(self, run_id: str) -> int | None:
        """The current version (None: unknown run). Cheap: on the /score path."""

    @abstractmethod
    async def delete(self, run_id: str) -> None:
        """Forget a run."""

    @abstractmethod
    def update_lock(self, run_id: str) -> AbstractAsyncContextManager[RunLock]:
        """Serialize updates of one run (across replicas for shared stores)."""

    @abstractmethod
    async def recorded_response(self, run_id: str, key: str) -> str | None:
        """The response JSON an update with this idempotency key already got."""

    @abstractmethod
    async def commit(self, run_id: str, version: int, state: bytes | None, response_json: str,
                     idempotency_key: str | None, lock: RunLock) -> None:
        """Make `version` current, atomically with the idempotency record. Raises
        `StoreUnavailable` (or loses the lock) → the version did not become current."""

    @abstractmethod
    async def stored_run_ids(self) -> list[str]:
        """Runs to restore at start-up (persistent stores)."""
