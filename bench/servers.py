"""Real `r2m serve` processes for the benchmarks, shared within one `r2m bench` invocation, and
Prometheus scrapes of them.

A server takes several seconds to start on two cores, so benchmarks that want the same server
(same flags, same environment) share one; every benchmark measures with unique texts and reads
metrics as deltas, so sharing changes no number. Servers run with the allocator the image ships
(bench/allocator.py) and an explicit torch thread count, both recorded in each result.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from r2m_bench.allocator import ALLOCATOR_ENV
from r2m_bench.common import MiB
from r2m_service.launch import LocalServer, start_local_server

MAX_BODY_BYTES = 512 * MiB
# torch intra-op threads for the servers and the in-process baselines: all cores but one, which
# the event loop, the preparation thread and the load generator need (on a busy 2-core host two
# OpenMP threads made batch-1 forwards 5-7x slower than one: see RESULTS.md)
_torch_threads = max(1, (os.cpu_count() or 2) - 1)


def torch_threads() -> int:
    return _torch_threads


@dataclass(frozen=True)
class Target:
    """Where servers and in-process baselines run: device, backbone dtype, and the backbone
    (None: the embedded default). Set once per invocation (`r2m bench --device/--dtype/
    --backbone`, e.g. by bench/gpu.sh) before any `ServerSpec` is made."""

    device: str = "cpu"
    dtype: str = "float32"
    backbone: str | None = None


_target = Target()


def target() -> Target:
    return _target


def set_target(new: Target) -> None:
    global _target
    _target = new


def set_torch_threads(n: int) -> None:
    """Set before any `ServerSpec` is made (the CLI's `--torch-threads`)."""
    global _torch_threads
    if n < 1:
        raise ValueError(f"torch threads must be >= 1, got {n}")
    _torch_threads = n


@dataclass(frozen=True)
class ServerSpec:
    """How to start one server: `r2m serve` flags and `R2M_*`/allocator environment."""

    backbone: str | None = field(default_factory=lambda: _target.backbone)
    device: str = field(default_factory=lambda: _target.device)
    dtype: str = field(default_factory=lambda: _target.dtype)
    torch_threads: int = field(default_factory=torch_threads)
    batching: bool = True
    shipped_allocator: bool = True  # the image's (bench/allocator.py); False: plain glibc
    max_length: int | None = None
    max_body_bytes: int = MAX_BODY_BYTES
    extra: tuple[str, ...] = field(default_factory=tuple)
    pythonpath: str | None = None  # serve another checkout's code (a before/after comparison)

    def args(self) -> list[str]:
        args = ["--torch-threads", str(self.torch_threads), "--max-body-bytes",
                str(self.max_body_bytes), "--log-level", "warning"]
        if self.backbone:
            args += ["--backbone", self.backbone]
        if (self.device, self.dtype) != (Target.device, Target.dtype):
            args += ["--device", self.device, "--dtype", self.dtype]
        if self.max_length:
            args += ["--max-length", str(self.max_length)]
        return [*args, *self.extra]

    def env(self) -> dict[str, str]:
        env = {"R2M_BATCHING": "true" if self.batching else "false"}
        if self.shipped_allocator:
            env.update(ALLOCATOR_ENV)
        if self.pythonpath:
            env["PYTHONPATH"] = self.pythonpath
        return env

    def record(self) -> dict[str, Any]:
        """What a result file says about the server it measured."""
        return {"args": self.args(), "env": self.env(),
                "backbone": self.backbone or "embedded default (all-MiniLM-L6-v2)"}


class ServerPool:
    """Starts each distinct `ServerSpec` once; stops them all on close."""

    def __init__(self, log_dir: Path | None = None) -> None:
        self._tmp = None if log_dir else tempfile.TemporaryDirectory(prefix="r2m-bench-")
        self.log_dir = Path(log_dir or self._tmp.name)  # type: ignore[union-attr]
        self._servers: dict[ServerSpec, LocalServer] = {}

    def get(self, spec: ServerSpec) -> LocalServer:
        if spec not in self._servers:
            self._servers[spec] = start_local_server(self.log_dir, *spec.args(), env=spec.env(),
                                                     timeout=300)
        return self._servers[spec]

    def prestart(self, specs: Iterable[ServerSpec]) -> None:
        """Start several servers at once (their loading overlaps: faster than one by one)."""
        missing = [s for s in dict.fromkeys(specs) if s not in self._servers]
        with ThreadPoolExecutor(max(1, len(missing))) as threads:
            started = list(threads.map(
                lambda s: start_local_server(self.log_dir, *s.args(), env=s.env(), timeout=300),
                missing))
        self._servers.update(zip(missing, started, strict=True))

    def close(self) -> None:
        for server in self._servers.values():
            server.stop()
        self._servers.clear()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> ServerPool:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """Every sample of `/metrics`, keyed by (sample name, sorted labels)."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def histogram_delta(before: Samples, after: Samples, name: str, **labels: str
                    ) -> dict[str, float]:
    """Sum, count and mean of one histogram series between two scrapes."""
    key = tuple(sorted(labels.items()))
    total = after.get((f"{name}_sum", key), 0.0) - before.get((f"{name}_sum", key), 0.0)
    n = after.get((f"{name}_count", key), 0.0) - before.get((f"{name}_count", key), 0.0)
    return {"sum": total, "count": n, "mean": total / n if n else 0.0}
