"""`r2m bench soak [--minutes N]`: sustained mixed traffic, and whether anything grows.

Several runs and clients send 1–8-item scores with hidden states, and an update every ~10
requests, paced at about 70% of the capacity measured first (closed loop), for N minutes (quick:
1). Every window reports p50/p99 latency, errors, the server's RSS, its allocator's bytes
(`r2m_allocator_bytes`: live bytes, and what the allocator holds) and Redis's memory, so the
curve shows a leak as a slope, and whether live bytes grew or only what the allocator keeps.
Goals (issue 13): 0 errors, RSS ≤ 5% above its value after the warm-up, p99 of the last window
≤ 1.2× the first.

The server runs with the allocator the image ships (`ALLOCATOR_ENV`: jemalloc, keeping freed
pages for reuse; docs/deploy.md, "Memory") and a 16 MiB RTE cache, so that the cache, which fills
up to its byte bound by design, is (nearly) full within the warm-up and the curve after it shows
what is not bounded. tracemalloc over such a soak found the Python heap flat (+0.6 MB in two
minutes, the RTE cache's keys); with glibc's malloc RSS still grew in steps (native: body buffers
and tensors freed on several threads, fragmenting its arenas), with jemalloc it stays flat
(docs/measurements.md, "Soak"). Without jemalloc installed the soak runs on glibc with two arenas
and says so in its settings.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from r2m_bench.allocator import ALLOCATOR_ENV
from r2m_bench.common import Headline, TextSource, latency_stats, write_result
from r2m_bench.servers import ServerPool, scrape
from r2m_client import Group, R2MClient, R2MError
from r2m_service.launch import LocalServer, start_local_server

D_P = 64
RUNS = 3
CLIENTS = 6
UPDATE_EVERY = 10
LOAD_FRACTION = 0.7
SOAK_ENV = {**ALLOCATOR_ENV, "R2M_RTE_CACHE_BYTES": str(16 << 20), "R2M_LOG_LEVEL": "warning"}


@dataclass
class Window:
    """What happened between two samples."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)


class Traffic:
    """`CLIENTS` threads, each its own trainer: scores of 1–8 items with hidden states and an
    update every `UPDATE_EVERY` requests, at `rate` requests/s in all (None: as fast as
    answered). Stops by itself at `deadline`."""

    def __init__(self, url: str, run_ids: list[str], rate: float | None, deadline: float) -> None:
        self._url, self._runs, self._deadline = url, run_ids, deadline
        self._interval = None if rate is None else CLIENTS / rate
        self._window = Window()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True)
                         for i in range(CLIENTS)]

    def start(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def join(self) -> None:
        for thread in self._threads:
            thread.join()

    def take(self) -> Window:
        with self._lock:
            window, self._window = self._window, Window()
        return window

    def _client(self, index: int) -> None:
        rng = random.Random(index)
        texts = TextSource(f"soak{index}")
        run_id = self._runs[index % len(self._runs)]
        with R2MClient(self._url, timeout=60, retries=0) as rm:
            n = 0
            next_at = time.monotonic()
            while time.monotonic() < self._deadline:
                n += 1
                k = rng.randint(1, 8)
                prompts, responses = texts.pairs(k)
                states = [torch.randn(rng.randint(16, 64), D_P, dtype=torch.bfloat16)
                          for _ in range(k)]
                started = time.perf_counter()
                try:
                    if n % UPDATE_EVERY == 0:
                        rm.update(run_id, groups=[Group(prompts[0], [*responses[:1], "no."],
                                                        [states[0], states[-1]])])
                    else:
                        rm.score(run_id, prompts, responses, states)
                    with self._lock:
                        self._window.latencies.append(time.perf_counter() - started)
                except R2MError as exc:
                    with self._lock:
                        self._window.errors += 1
                        if len(self._window.error_samples) < 3:
                            self._window.error_samples.append(str(exc)[:200])
                if self._interval is not None:
                    next_at += self._interval
                    time.sleep(max(0.0, next_at - time.monotonic()))


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def allocator_bytes(url: str) -> dict[str, Any]:
    """The server's `r2m_allocator_bytes`: its allocator's `name` and bytes by kind
    (`allocated`, `held`, ...); {} when its allocator reports none."""
    found: dict[str, Any] = {}
    for (name, labels), value in scrape(url).items():
        if name == "r2m_allocator_bytes":
            by_label = dict(labels)
            found["name"] = by_label["allocator"]
            found[by_label["kind"]] = value
    return found


def memory(server: LocalServer, redis_url: str | None) -> dict[str, Any]:
    """The server's RSS and allocator bytes, and Redis's memory."""
    return {"rss_bytes": rss_bytes(server.process.pid), "allocator": allocator_bytes(server.url),
            "redis_bytes": redis_bytes(redis_url)}


def redis_bytes(url: str | None) -> int | None:
    if url is None:
        return None
    import redis

    return int(redis.Redis.from_url(url).info("memory")["used_memory"])


def soak(server: LocalServer, minutes: float, window_s: float,
         redis_url: str | None = None) -> dict[str, Any]:
    """Measure capacity, then hold ~70% of it for `minutes`, sampling every `window_s`."""
    with R2MClient(server.url) as rm:
        run_ids = [rm.create_run(policy_hidden_size=D_P, total_steps=10_000,
                                 learning_rate=1e-4).run_id for _ in range(RUNS)]
    probe = Traffic(server.url, run_ids, None, time.monotonic() + max(10.0, window_s)).start()
    probe_started = time.monotonic()
    probe.join()
    measured = probe.take()
    capacity = len(measured.latencies) / (time.monotonic() - probe_started)
    rate = LOAD_FRACTION * capacity
    start = memory(server, redis_url)
    began = time.monotonic()
    traffic = Traffic(server.url, run_ids, rate, began + minutes * 60).start()
    windows, latencies = [], []
    while time.monotonic() < began + minutes * 60:
        time.sleep(min(window_s, max(0.0, began + minutes * 60 - time.monotonic())))
        window = traffic.take()
        latencies.append(window.latencies)
        windows.append({"t_s": round(time.monotonic() - began, 1),
                        "requests": len(window.latencies) + window.errors,
                        "errors": window.errors, "error_samples": window.error_samples,
                        **_percentiles(window.latencies), **memory(server, redis_url)})
    traffic.join()
    last = traffic.take()
    end = memory(server, redis_url)
    return summarize(windows, start, end, capacity, rate, last.errors, latencies)


def summarize(windows: list[dict[str, Any]], start: dict[str, Any], end: dict[str, Any],
              capacity: float, rate: float, late_errors: int,
              latencies: list[list[float]] | None = None) -> dict[str, Any]:
    """Growth after the warm-up (the first quarter, at most a minute) of RSS and of live
    bytes (the allocator's `allocated`; None where it reports none), and p99 drift: of the
    last window over the first, and, given each window's `latencies`, of the last minute over
    the first (the issue's measure; a quarter of a shorter soak), whose p99 rests on four times
    the requests of one window's."""
    span = min(60.0, windows[-1]["t_s"] / 4)
    warm = next((w for w in windows if w["t_s"] >= span), windows[0])
    filled = [w for w in windows if w.get("p99") is not None]
    allocated = [sample.get("allocator", {}).get("allocated") for sample in (warm, end)]
    minutes: dict[str, Any] = {}
    if latencies:
        n = max(1, sum(w["t_s"] <= span for w in windows))  # windows in the first minute
        first = _percentiles([x for window in latencies[:n] for x in window])["p99"]
        last = _percentiles([x for window in latencies[-n:] for x in window])["p99"]
        minutes = {"p99_first_minute": first, "p99_last_minute": last,
                   "p99_last_over_first_minute": last / first if first and last else None}
    return {**minutes,
        "capacity_rps": capacity, "rate_rps": rate, "windows": windows,
        "start": start, "after_warmup": {"t_s": warm["t_s"], "rss_bytes": warm["rss_bytes"],
                                         "allocator": warm.get("allocator", {})},
        "end": end,
        "errors": sum(w["errors"] for w in windows) + late_errors,
        "rss_growth_after_warmup": end["rss_bytes"] / warm["rss_bytes"] - 1.0,
        "allocated_growth_after_warmup": (allocated[1] / allocated[0] - 1.0
                                          if None not in allocated else None),
        "p99_last_over_first": (filled[-1]["p99"] / filled[0]["p99"]) if filled else None,
    }


def run(*, quick: bool, out_dir: Path, pool: ServerPool, minutes: float | None = None
        ) -> dict[str, Any]:
    minutes = minutes if minutes is not None else (1.0 if quick else 10.0)
    window_s = 5.0 if minutes <= 2 else 15.0
    server = start_local_server(pool.log_dir, "--torch-threads", "1", env=SOAK_ENV, timeout=300)
    try:
        results = soak(server, minutes, window_s)
        results["rte_cache_bytes_end"] = scrape(server.url).get(
            ("r2m_store_bytes", (("kind", "rte_cache"),)))
    finally:
        server.stop()
    headlines = [
        Headline("soak", "errors", results["errors"], "", 0, higher_is_better=False),
        Headline("soak", "RSS growth after warm-up", 100 * results["rss_growth_after_warmup"],
                 "%", 5, higher_is_better=False),
    ]
    if results["allocated_growth_after_warmup"] is not None:
        # No goal of its own: flat while RSS grows is the allocator's retention, not a leak.
        headlines.append(Headline("soak", "live (allocated) bytes growth after warm-up",
                                  100 * results["allocated_growth_after_warmup"], "%",
                                  higher_is_better=False))
    if results.get("p99_last_over_first_minute") is not None:
        headlines.append(Headline("soak", "p99 last/first minute",
                                  results["p99_last_over_first_minute"], "×", 1.2,
                                  higher_is_better=False))
    if results["p99_last_over_first"] is not None:  # one window each: noisier, no goal
        headlines.append(Headline("soak", "p99 last/first window",
                                  results["p99_last_over_first"], "×",
                                  higher_is_better=False))
    settings = {"minutes": minutes, "window_s": window_s, "runs": RUNS, "clients": CLIENTS,
                "update_every": UPDATE_EVERY, "load_fraction": LOAD_FRACTION, "d_p": D_P,
                "server_env": SOAK_ENV, "backbone": "embedded default (all-MiniLM-L6-v2)"}
    path = write_result("soak", settings, results, out_dir, headlines)
    return {"path": path, "headlines": headlines, **results}


def _percentiles(latencies: list[float]) -> dict[str, float | None]:
    if not latencies:
        return {"p50": None, "p99": None}
    stats = latency_stats(latencies)
    return {"p50": stats["p50"], "p99": stats["p99"]}
