"""The service's own failures, in domain terms: what went wrong, not which HTTP status it is.

The engine, runs and stores raise these; `http/errors.py` alone turns them into status codes and
the wire's error shape. (`WireError` stays for decoding the wire: bodies, media types, auth.)
"""

from __future__ import annotations


class ServiceError(Exception):
    """A request the service refuses. `field` names the part of the request at fault."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidInput(ServiceError):
    """The request is well-formed but its content cannot be served (names the field)."""


class TooManyItems(ServiceError):
    """More samples in one request than the server takes: split the batch."""


class RunNotFound(ServiceError):
    def __init__(self, run_id: str) -> None:
        super().__init__(f"no run with id {run_id!r}", "run_id")


class RunExists(ServiceError):
    """A caller-chosen run id that is taken by a run with other settings (or still being
    created)."""

    def __init__(self, run_id: str, detail: str = "already exists with other settings") -> None:
        super().__init__(f"run {run_id!r} {detail}", "run_id")


class VersionNotReached(ServiceError):
    """`min_version` asked for a version the run did not reach in time."""

    def __init__(self, run_id: str, version: int, wanted: int, waited_s: float) -> None:
        super().__init__(f"run {run_id} is at version {version}; min_version {wanted} was not "
                         f"reached within {waited_s:g}s", "min_version")


class VersionConflict(ServiceError):
    """A split-mode phase computed at a version the run has moved past: start again from the
    query phase."""

    def __init__(self, run_id: str, version: int, phase_version: int) -> None:
        super().__init__(f"run {run_id} is at version {version}, not {phase_version} as in the "
                         "query phase; restart from /v1/split/query", "version")


class StaleContextToken(ServiceError):
    """A split-mode phase names a context token the server no longer holds (expired, evicted,
    never made here) or one made for another run or version: start again from the query with
    the contexts inline."""


class RetryLater(ServiceError):
    """A refusal that passes: the caller should retry after `retry_after_s` (None: not soon)."""

    def __init__(self, message: str, retry_after_s: int | None = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Overloaded(RetryLater):
    """The score queue is full."""

    def __init__(self, queued: int, limit: int, retry_after_s: int = 1) -> None:
        super().__init__(f"the score queue is full ({queued} items queued, limit {limit}); retry "
                         f"after {retry_after_s}s", retry_after_s)


class CapacityExceeded(RetryLater):
    """This process holds as many runs, or run bytes, as its settings allow and none can be
    evicted to the store (it keeps no copy, or every run is in use)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retry_after_s=5)


class Unavailable(RetryLater):
    """The service cannot serve yet (backbone loading, or failed to load)."""


class StoreUnavailable(Unavailable):
    """The shared store cannot be reached; nothing was changed."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"the state store is unreachable ({detail}); nothing was changed", 1)
