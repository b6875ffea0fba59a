"""What every benchmark shares: the environment record, JSON output, timing statistics."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS_DIR = Path("bench/results")


def environment() -> dict[str, Any]:
    """Machine and versions, recorded with every result."""
    import numpy
    import torch
    import transformers

    from r2m_service import __version__

    return {
        "machine": platform.machine(), "processor": platform.processor(),
        "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "numpy": numpy.__version__,
        "r2m": __version__, "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available()
        else None, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_result(name: str, settings: dict[str, Any], results: Any,
                 out_dir: Path = RESULTS_DIR) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "environment": environment(),
                                "settings": settings, "results": results}, indent=2))
    return path


def timed(fn: Callable[[], object], repeat: int, warmup: int = 1) -> dict[str, float]:
    """Latency statistics (seconds) of `repeat` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    samples.sort()
    return {"mean": statistics.fmean(samples), "p50": samples[len(samples) // 2],
            "p99": samples[min(len(samples) - 1, int(len(samples) * 0.99))],
            "min": samples[0], "n": len(samples)}
