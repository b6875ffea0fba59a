"""The client's exceptions: one hierarchy, so a caller catches exactly the level it cares about.

```
R2MError
├── R2MInputError           the call's arguments break an API rule; nothing was sent (a ValueError)
├── R2MTransportError       no answer: connection refused or dropped, timeout (retryable)
├── R2MProtocolError        an answer that is not the r2m contract (wrong service, a proxy page)
└── R2MStatusError          the server answered with an error status
    ├── R2MClientError      4xx: the caller's mistake; resending the same request cannot help
    │   └── RunNotFoundError
    ├── R2MOverloadedError  429 / 503: the server is busy; try again after Retry-After
    └── R2MServerError      other 5xx
```

Mistakes found before anything is sent are raised before any I/O: a wrong Python type (a float64
array, one string where a list of them belongs) is a plain `TypeError`, as for any Python call; a
value that breaks a rule of the API (a group with one response, mismatched lengths, a negative
step) is an `R2MInputError`, which is also a `ValueError` and names the argument and the rule.
Messages of errors raised after sending name the method and the full URL of the request.
"""

from __future__ import annotations


class R2MError(Exception):
    """Base of the client's own errors, so one `except R2MError` covers every failed call."""

    @property
    def retryable(self) -> bool:
        """Whether sending the same request again may succeed."""
        return False


class R2MInputError(R2MError, ValueError):
    """The call's arguments break a rule of the API; found before anything was sent.

    `field` names the argument in the caller's terms (`groups[1]`, `hidden_states[3]`), not the
    wire request's, and the message states the rule, so the fix is clear without the schema.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.message = message
        self.field = field


class R2MTransportError(R2MError):
    """The request got no HTTP answer; the original httpx exception is `__cause__`.

    `method` and `url` say which request failed: with several servers, replicas or a proxy in
    play, "connection refused" alone does not say where.
    """

    def __init__(self, message: str, *, retryable: bool = True, method: str | None = None,
                 url: str | None = None) -> None:
        super().__init__(message)
        self._retryable = retryable
        self.method = method
        self.url = url

    @property
    def retryable(self) -> bool:
        return self._retryable


class R2MProtocolError(R2MError):
    """A 2xx answer whose body does not parse as the expected r2m response."""


class R2MStatusError(R2MError):
    """An error status; `code`, `message` and `field` come from the `{"error": ...}` body.

    `method` and `url` are the request's, so a 404 from a wrong base URL shows the path that was
    actually requested.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        code: str | None = None,
        field: str | None = None,
        retry_after: float | None = None,
        request_id: str | None = None,
        method: str | None = None,
        url: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.code = code
        self.field = field
        self.retry_after = retry_after
        self.request_id = request_id
        self.method = method
        self.url = url

    def __str__(self) -> str:
        on = f" on {self.method} {self.url}" if self.method and self.url else ""
        where = f" (field {self.field})" if self.field else ""
        return f"HTTP {self.status_code} {self.code or 'error'}{on}: {self.message}{where}"

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
