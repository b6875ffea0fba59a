"""Closed-loop HTTP load: N concurrent clients, each sending its next request as soon as its last
one is answered, for a fixed window.

Each worker owns its own client (one connection), like N separate trainers; httpx's shared pool
would otherwise cap concurrency at 100 connections. The client is an `AsyncR2MClient`, or with
`raw=True` a plain `httpx.AsyncClient` (for other servers, such as OpenRLHF's `serve_rm`).
Requests started before the deadline all finish, and throughput is items ÷ (last answer −
start), so a slow tail is counted rather than cut off. Retries are off: an overload shows up as
errors, not as hidden waits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from r2m_bench.common import latency_stats
from r2m_client import AsyncR2MClient, R2MError

# one request: given the worker's client (`AsyncR2MClient`, or `httpx.AsyncClient` when raw),
# send it and return the number of items it scored (raise on an error answer)
Send = Callable[[Any], Awaitable[int]]


@dataclass
class LoadResult:
    concurrency: int
    seconds: float = 0.0
    items: int = 0
    requests: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)

    def merge(self, other: LoadResult) -> LoadResult:
        """Two windows of the same load as one (throughput over their summed time)."""
        return LoadResult(self.concurrency, self.seconds + other.seconds,
                          self.items + other.items, self.requests + other.requests,
                          self.errors + other.errors, self.latencies + other.latencies,
                          self.error_samples + other.error_samples)

    def summary(self) -> dict[str, Any]:
        stats = latency_stats(self.latencies) if self.latencies else {}
        return {"concurrency": self.concurrency, "seconds": self.seconds, "items": self.items,
                "requests": self.requests, "errors": self.errors,
                "items_per_s": self.items / self.seconds if self.seconds else 0.0,
                "requests_per_s": self.requests / self.seconds if self.seconds else 0.0,
                "latency_s": stats, "error_samples": self.error_samples[:3]}


async def closed_loop(url: str, concurrency: int, duration_s: float, send: Send,
                      timeout_s: float = 600.0, raw: bool = False) -> LoadResult:
    """Run `concurrency` workers for `duration_s` (each sends at least one request)."""
    result = LoadResult(concurrency)
    clients = [httpx.AsyncClient(base_url=url, timeout=timeout_s) if raw
               else AsyncR2MClient(url, retries=0, timeout=timeout_s)
               for _ in range(concurrency)]
    try:
        started = time.perf_counter()
        deadline = started + duration_s
        last_done = started

        async def worker(rm: AsyncR2MClient) -> None:
            nonlocal last_done
            while True:
                sent = time.perf_counter()
                try:
                    items = await send(rm)
                except (R2MError, httpx.HTTPError) as exc:
                    result.errors += 1
                    result.error_samples.append(f"{type(exc).__name__}: {exc}"[:200])
                else:
                    done = time.perf_counter()
                    result.latencies.append(done - sent)
                    result.items += items
                    result.requests += 1
                    last_done = max(last_done, done)
                if time.perf_counter() >= deadline:
                    return

        await asyncio.gather(*(worker(rm) for rm in clients))
        result.seconds = last_done - started
    finally:
        await asyncio.gather(*(rm.aclose() if raw else rm.close() for rm in clients))
    return result


def run_load(url: str, concurrency: int, duration_s: float, send: Send, raw: bool = False
             ) -> LoadResult:
    return asyncio.run(closed_loop(url, concurrency, duration_s, send, raw=raw))
