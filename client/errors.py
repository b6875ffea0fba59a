"""The client's exceptions: one hierarchy, so a caller catches exactly the level it cares about.

```
R2MError
├── R2MTransportError       no answer: connection refused or dropped, timeout (retryable)
├── R2MProtocolError        an answer that is not the r2m contract (wrong service, a proxy page)
└── R2MStatusError          the server answered with an error status
    ├── R2MClientError      4xx: the caller's mistake; resending the same request cannot help
    │   └── RunNotFoundError
    ├── R2MOverloadedError  429 / 503: the server is busy; try again after Retry-After
    └── R2MServerError      other 5xx
```

Mistakes found before anything is sent (a float64 array, mismatched lengths) are plain
`TypeError` / `ValueError`, as for any Python call.
"""

from __future__ import annotations


class R2MError(Exception):
    """Base of every error the client raises after it started talking to the server."""

    @property
    def retryable(self) -> bool:
        """Whether sending the same request again may succeed."""
        return False


class R2MTransportError(R2MError):
    """The request got no HTTP answer; the original httpx exception is `__cause__`."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self._retryable = retryable

    @property
    def retryable(self) -> bool:
        return self._retryable


class R2MProtocolError(R2MError):
    """A 2xx answer whose body does not parse as the expected r2m response."""


class R2MStatusError(R2MError):
    """An error status; `code`, `message` and `field` come from the `{"error": ...}` body."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        code: str | None = None,
        field: str | None = None,
        retry_after: float | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.code = code
        self.field = field
        self.retry_after = retry_after
        self.request_id = request_id

    def __str__(self) -> str:
        where = f" (field {self.field})" if self.field else ""
        return f"HTTP {self.status_code} {self.code or 'error'}: {self.message}{where}"

    @staticmethod
    def for_status(status_code: int, code: str | None) -> type[R2MStatusError]:
        """The most specific class for an error status and its r2m error code."""
        if status_code in (429, 503):
            return R2MOverloadedError
        if status_code >= 500:
            return R2MServerError
        if status_code == 404 and code == "run_not_found":
            return RunNotFoundError
        return R2MClientError


class R2MClientError(R2MStatusError):
    """4xx: bad input, auth, unknown run, version conflict or a body over the server's limit."""


class RunNotFoundError(R2MClientError):
    """404 `run_not_found`: the run id is unknown (never created, deleted, or another server)."""


class R2MOverloadedError(R2MStatusError):
    """429 / 503: the server sheds load instead of queueing without bound."""

    @property
    def retryable(self) -> bool:
        return True


class R2MServerError(R2MStatusError):
    """5xx other than 503: the server failed; a retry may land on a healthy replica."""

    @property
    def retryable(self) -> bool:
        return True
