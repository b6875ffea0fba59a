"""Wire: MB/s of policy hidden states through /v1/score (binary safetensors body vs JSON+base64)
vs a plain memcpy of the same bytes in the same process run.

A 64 MiB request is 16 × [512, 4096] bf16 (the reference case of docs/measurements.md). The RTE
cache is warm (the same texts every call, scored once before timing), so the backbone never runs
and the time is the wire's: client encode + send, server read + decode + finite check, padding +
the R2M module, the answer. The server's own request and module histograms split that time.
memcpy is a `bytearray` → `bytearray` copy into a reused (page-faulted) buffer, plus a
fresh-buffer copy for reference, and a raw loopback TCP transfer (two threads, no HTTP) gives
the kernel's own ceiling on this machine. An unknown-run request (404 after reading and decoding
the whole body) isolates transport from the checks and module work. Full mode also runs a server
on plain glibc malloc instead of the image's allocator; servers take turns request by request
(the order swapped every round), so load drift on a shared machine hits them alike.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from r2m_bench.common import (
    MB,
    RESULTS_DIR,
    Headline,
    TextSource,
    latency_stats,
    median,
    timed,
    write_result,
)
from r2m_bench.servers import ServerPool, ServerSpec, histogram_delta, scrape
from r2m_client import R2MClient, RunNotFoundError

TARGET = 0.25  # of memcpy (issue 4)
TCP_TARGET = 0.6  # of raw loopback TCP (issue 12)
SEQ, POLICY_HIDDEN = 512, 4096


def run(quick: bool = False, out_dir: Path = RESULTS_DIR,
        pool: ServerPool | None = None) -> dict[str, Any]:
    items = 4 if quick else 16
    nbytes = items * SEQ * POLICY_HIDDEN * 2
    specs = {"shipped_allocator": ServerSpec()}
    if not quick:
        specs["plain_glibc"] = ServerSpec(shipped_allocator=False)
    settings: dict[str, Any] = {
        "items": items, "seq_len": SEQ, "policy_hidden": POLICY_HIDDEN, "dtype": "bfloat16",
        "hidden_bytes": nbytes, "repeat": {"binary": 3 if quick else 10,
                                           "json": 1 if quick else 3},
        "cache": "warm (same texts, scored once before timing): the backbone never runs",
        "servers": {name: spec.record() for name, spec in specs.items()}, "quick": quick,
    }
    own_pool = pool is None
    pool = pool or ServerPool()
    try:
        results = _measure(pool, specs, settings)
    finally:
        if own_pool:
            pool.close()
    main = results["servers"]["shipped_allocator"]
    binary = main["binary"]
    headlines = [
        Headline("wire", f"binary /v1/score ÷ memcpy, {nbytes // (1 << 20)} MiB requests",
                 binary["fraction_of_memcpy"], "×", TARGET),
        Headline("wire", "binary /v1/score", binary["mb_per_s"], "MB/s"),
        Headline("wire", "binary body, transport only (unknown run: read, decode, 404)",
                 main["transport_only"]["fraction_of_memcpy"], "× memcpy"),
        Headline("wire", "JSON+base64 /v1/score", main["json"]["mb_per_s"], "MB/s"),
        Headline("wire", "memcpy (reused buffer)", results["memcpy"]["reused_mb_per_s"], "MB/s"),
        Headline("wire", "raw loopback TCP (no HTTP), fraction of memcpy",
                 results["loopback_tcp"]["fraction_of_memcpy"], "×"),
        Headline("wire", "binary /v1/score ÷ raw loopback TCP", binary["fraction_of_loopback_tcp"],
                 "×", TCP_TARGET),
    ]
    if "plain_glibc" in results["servers"]:
        headlines.append(Headline("wire", "binary /v1/score, plain glibc malloc",
                                  results["servers"]["plain_glibc"]["binary"]["mb_per_s"],
                                  "MB/s"))
    path = write_result("wire", settings, results, out_dir, headlines)
    return {"path": str(path), "headlines": headlines, **results}


def _measure(pool: ServerPool, specs: dict[str, ServerSpec],
             settings: dict[str, Any]) -> dict[str, Any]:
    import torch

    from r2m_client._encode import score_chunks

    nbytes = settings["hidden_bytes"]
    states = [torch.randn(SEQ, POLICY_HIDDEN).to(torch.bfloat16)
              for _ in range(settings["items"])]
    prompts, responses = TextSource("wire").pairs(settings["items"])
    memcpy = [_memcpy(nbytes)]
    tcp = [_loopback_tcp(nbytes)]
    encode = {fmt: timed(lambda fmt=fmt: score_chunks(
        "run", prompts, responses, states, step=50, min_version=None, binary=fmt == "binary",
        max_bytes=1 << 40), repeat=3)["p50"] for fmt in ("binary", "json")}
    urls = {name: pool.get(spec).url for name, spec in specs.items()}
    servers: dict[str, dict[str, Any]] = {name: {} for name in specs}
    with contextlib.ExitStack() as stack:
        sends = {(name, fmt): stack.enter_context(_score_session(url, fmt, prompts, responses,
                                                                 states))
                 for name, url in urls.items()
                 for fmt in (("binary", "json") if name == "shipped_allocator" else ("binary",))}
        for fmt in ("binary", "json"):
            calls = {key: send for key, send in sends.items() if key[1] == fmt}
            before = {name: scrape(urls[name]) for name, _ in calls}
            seconds = _interleaved(calls, settings["repeat"][fmt])
            for (name, _), samples in seconds.items():
                servers[name][fmt] = _score_stats(samples, nbytes, before[name],
                                                  scrape(urls[name]))
            memcpy.append(_memcpy(nbytes))  # again after each format: same drift on both sides
            tcp.append(_loopback_tcp(nbytes))
        unknown = {(name, "transport_only"): stack.enter_context(
            _unknown_run_session(url, prompts, responses, states)) for name, url in urls.items()}
        for (name, _), samples in _interleaved(unknown, settings["repeat"]["binary"]).items():
            servers[name]["transport_only"] = {"latency_s": latency_stats(samples),
                                               "p50_s": median(samples),
                                               "mb_per_s": nbytes / median(samples) / MB}
    reused = median([m["reused_s"] for m in memcpy])
    tcp_s = median(tcp)
    for by_format in servers.values():
        for out in by_format.values():
            out["fraction_of_memcpy"] = reused / out["p50_s"]
            out["fraction_of_loopback_tcp"] = tcp_s / out["p50_s"]
    return {"servers": servers, "client_encode_p50_s": encode,
            "loopback_tcp": {"seconds": tcp, "mb_per_s": nbytes / tcp_s / MB,
                             "fraction_of_memcpy": reused / tcp_s},
            "memcpy": {"rounds": memcpy, "reused_mb_per_s": nbytes / reused / MB,
                       "fresh_mb_per_s": nbytes / median([m["fresh_s"] for m in memcpy]) / MB,
                       "numpy_mb_per_s": nbytes / median([m["numpy_s"] for m in memcpy]) / MB}}


Key = tuple[str, str]  # (server, what is sent)


def _interleaved(calls: dict[Key, Callable[[], None]], repeat: int) -> dict[Key, list[float]]:
    """Seconds of `repeat` calls of each, taking turns, the order reversed every round."""
    order = list(calls)
    seconds: dict[Key, list[float]] = {key: [] for key in order}
    for round_ in range(repeat):
        for key in order if round_ % 2 == 0 else order[::-1]:
            started = time.perf_counter()
            calls[key]()
            seconds[key].append(time.perf_counter() - started)
    return seconds


@contextlib.contextmanager
def _score_session(url: str, fmt: str, prompts: list[str], responses: list[str],
                   states: list[Any]) -> Iterator[Callable[[], None]]:
    """A client with a run whose RTEs are cached: each call is one timed `/v1/score`."""
    with R2MClient(url, binary=fmt == "binary", timeout=600, retries=0,
                   max_request_bytes=1 << 30) as rm:
        run_id = rm.create_run(policy_hidden_size=POLICY_HIDDEN, total_steps=100).run_id
        rm.score(run_id, prompts, responses, states, step=50)  # warms the RTE cache

        def send() -> None:
            rm.score(run_id, prompts, responses, states, step=50)

        yield send


def _score_stats(samples: list[float], nbytes: int, before: Any, after: Any) -> dict[str, Any]:
    stats = latency_stats(samples)
    request = histogram_delta(before, after, "r2m_request_duration_seconds", route="/v1/score")
    module = histogram_delta(before, after, "r2m_module_duration_seconds", phase="score")
    backbone = histogram_delta(before, after, "r2m_backbone_duration_seconds")
    return {"latency_s": stats, "p50_s": stats["p50"], "mb_per_s": nbytes / stats["p50"] / MB,
            "server_request_mean_s": request["mean"], "server_module_mean_s": module["mean"],
            "server_backbone_seconds": backbone["sum"],
            "mb_per_s_without_module": nbytes / max(1e-9, stats["p50"] - module["mean"]) / MB}


@contextlib.contextmanager
def _unknown_run_session(url: str, prompts: list[str], responses: list[str],
                         states: list[Any]) -> Iterator[Callable[[], None]]:
    """The same binary body for a run that does not exist: the server reads and decodes all of
    it, then answers 404 before any hidden-state check or module work. The wire's own ceiling."""
    with R2MClient(url, timeout=600, retries=0, max_request_bytes=1 << 30) as rm:

        def send() -> None:
            try:
                rm.score("no-such-run", prompts, responses, states, step=50)
            except RunNotFoundError:
                return
            raise AssertionError("expected 404 for an unknown run")

        send()  # warm-up: the connection and the server's first big buffer
        yield send


def _loopback_tcp(nbytes: int, repeat: int = 5) -> float:
    """Median seconds to move `nbytes` through a loopback TCP socket into a preallocated buffer
    (sender and receiver threads, 1 MiB sends): the kernel's ceiling for any HTTP server here."""
    listener = socket.create_server(("127.0.0.1", 0))
    sender = socket.create_connection(listener.getsockname())
    receiver, _ = listener.accept()
    payload = memoryview(bytearray(nbytes))
    sink = memoryview(bytearray(nbytes))
    times: list[float] = []

    def receive() -> None:
        for _ in range(repeat + 1):
            got = 0
            while got < nbytes:
                got += receiver.recv_into(sink[got:], nbytes - got)
            receiver.sendall(b"k")

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    try:
        for i in range(repeat + 1):
            started = time.perf_counter()
            for start in range(0, nbytes, 1 << 20):
                sender.sendall(payload[start:start + (1 << 20)])
            sender.recv(1)
            if i:  # the first round grows the socket buffers
                times.append(time.perf_counter() - started)
    finally:
        thread.join(timeout=30)
        for sock in (sender, receiver, listener):
            sock.close()
    return median(times)


def _memcpy(nbytes: int) -> dict[str, float]:
    """Median-of-5 copy times of `nbytes`: reused destination, fresh destination, numpy."""
    src = bytearray(np.random.default_rng(0).bytes(nbytes))
    dst = bytearray(nbytes)
    dst[:] = src  # fault the destination's pages in

    def fresh() -> None:
        bytearray(src)

    def reused() -> None:
        dst[:] = src

    a, b = np.frombuffer(src, np.uint8), np.frombuffer(dst, np.uint8)
    out = {}
    for name, fn in (("reused_s", reused), ("fresh_s", fresh),
                     ("numpy_s", lambda: np.copyto(b, a))):
        samples = []
        for _ in range(5):
            started = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - started)
        out[name] = median(samples)
    return out
