"""What every benchmark shares: the environment record, JSON output, timing statistics, headline
rows (value vs target) and the unique texts that keep the RTE cache cold.

Shared machines are noisy, so every benchmark reports ratios of quantities measured in the same
process run (interleaved where it can); the environment record carries the load average at the
start and at the end, so a reader can tell a quiet run from a contended one.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from itertools import count
from pathlib import Path
from typing import Any

RESULTS_DIR = Path("bench/results")
MB = 1_000_000  # MB/s figures use decimal megabytes, like docs/measurements.md
MiB = 1 << 20
_LOAD_AT_IMPORT = os.getloadavg()

_WORDS = ("the", "model", "answer", "should", "explain", "each", "step", "clearly", "and",
          "cite", "evidence", "before", "giving", "a", "final", "result", "to", "user", "who",
          "asked", "about", "cooking", "rice", "physics", "history", "of", "rome", "code")


def environment() -> dict[str, Any]:
    """Machine and versions, recorded with every result."""
    import fastapi
    import httpx
    import numpy
    import torch
    import transformers
    import uvicorn

    from r2m_service import __version__

    return {
        "machine": platform.machine(), "processor": platform.processor() or _cpu_model(),
        "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "numpy": numpy.__version__,
        "fastapi": fastapi.__version__, "uvicorn": uvicorn.__version__,
        "httpx": httpx.__version__, "r2m": __version__, "git_commit": _git_commit(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "bench_torch_threads": torch.get_num_threads(),
        "bench_allocator": {name: os.environ.get(name) for name in ("LD_PRELOAD", "MALLOC_CONF")},
        "loadavg_start": list(_LOAD_AT_IMPORT), "loadavg_end": list(os.getloadavg()),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_result(name: str, settings: dict[str, Any], results: Any,
                 out_dir: Path = RESULTS_DIR,
                 headlines: Sequence[Headline] = ()) -> Path:
    """`<out_dir>/<name>.json`: benchmark, environment, settings, results and headline rows."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "environment": environment(),
                                "settings": settings, "results": results,
                                "headlines": [asdict(h) for h in headlines]},
                               indent=2, allow_nan=False))
    return path


@dataclass(frozen=True)
class Headline:
    """One number for the summary table, with the issue's target when it has one."""

    benchmark: str
    metric: str
    value: float
    unit: str = ""
    target: float | None = None
    higher_is_better: bool = True

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        return self.value >= self.target if self.higher_is_better else self.value <= self.target


def timed(fn: Callable[[], object], repeat: int, warmup: int = 1) -> dict[str, float]:
    """Latency statistics (seconds) of `repeat` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return latency_stats(samples)


def latency_stats(samples: Sequence[float]) -> dict[str, float]:
    """mean / p50 / p99 / min / n of a list of seconds (nearest-rank percentiles)."""
    ordered = sorted(samples)
    if not ordered:
        raise ValueError("no samples")
    return {"mean": statistics.fmean(ordered), "p50": _rank(ordered, 0.50),
            "p99": _rank(ordered, 0.99), "min": ordered[0], "max": ordered[-1],
            "n": len(ordered)}


def _rank(ordered: Sequence[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


class TextSource:
    """Unique (prompt, response) pairs of chosen lengths (in words, about one token each), so
    every request misses the RTE cache; a random per-process tag keeps repeated runs against one
    server cold too. Long prompts are cut by the backbone to exactly its max length."""

    def __init__(self, tag: str, prompt_words: int = 16, response_words: int = 16) -> None:
        self.tag = f"{tag}-{uuid.uuid4().hex[:6]}"
        self.prompt_words = prompt_words
        self.response_words = response_words
        self._next = count()

    def pair(self) -> tuple[str, str]:
        n = next(self._next)
        return (f"{self.tag} question {n}: {_words(n, self.prompt_words)}?",
                f"Answer {n}: {_words(n + 1, self.response_words)}.")

    def pairs(self, k: int) -> tuple[list[str], list[str]]:
        prompts, responses = zip(*(self.pair() for _ in range(k)), strict=True)
        return list(prompts), list(responses)


def _words(seed: int, n: int) -> str:
    return " ".join(_WORDS[(seed * 7 + i * 3 + i // len(_WORDS)) % len(_WORDS)]
                    for i in range(n))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5, check=False)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
