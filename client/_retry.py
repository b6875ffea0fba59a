"""When to resend a failed request and how long to wait first.

Only failures where the server did not act are worth a resend: no answer (connection, timeout),
429 and 5xx (the service rejects a request atomically, and updates carry an idempotency key).
Waits grow exponentially with jitter so that many trainers behind one overloaded server do not
come back in lockstep; the server's Retry-After wins because it knows when it will have room.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from r2m_client.errors import R2MError, R2MStatusError


@dataclass(frozen=True)
class RetryPolicy:
    """`retries` resends at most; waits of `backoff`·2ⁿ seconds, capped at `max_backoff`.

    `jitter` is the fraction of each wait drawn at random. A Retry-After longer than
    `max_backoff` is not waited for: the error is raised at once, with its `retry_after`.
    """

    retries: int = 3
    backoff: float = 0.5
    max_backoff: float = 60.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.retries < 0 or self.backoff < 0 or self.max_backoff < 0:
            raise ValueError("retries, backoff and max_backoff must be non-negative")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"jitter must be in [0, 1], got {self.jitter}")

    def delay(self, attempt: int, error: R2MError, rand: float) -> float | None:
        """Seconds to wait before resending after try number `attempt` (0-based) failed with
        `error`, or None to give up; `rand` in [0, 1) draws the jitter."""
        if attempt >= self.retries or not error.retryable:
            return None
        retry_after = error.retry_after if isinstance(error, R2MStatusError) else None
        if retry_after is not None:
            return retry_after if retry_after <= self.max_backoff else None
        wait = min(self.max_backoff, self.backoff * 2.0**attempt)
        return wait * (1.0 - self.jitter * rand)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError):
            return None
        seconds = when - (time.time() if now is None else now)
    return max(0.0, seconds) if math.isfinite(seconds) else None
