"""`r2m bench all --quick` runs every benchmark and writes valid JSON: the environment, the
settings, finite positive numbers and the ratios each benchmark exists to report. No timing is
asserted (the numbers of a quick run on a shared machine mean nothing)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from r2m_bench.cli import BENCHMARKS, format_table, main

ENVIRONMENT_FIELDS = ("machine", "cpus", "python", "torch", "transformers", "numpy", "r2m",
                      "loadavg_start", "time")
# each benchmark's ratios, as paths into its "results"
RATIOS: dict[str, list[tuple[str, ...]]] = {
    "efficiency": [("efficiency", "no_hidden"), ("efficiency", "small_hidden")],
    "overhead": [("built", "inprocess", "ratio", "768"), ("built", "inprocess", "ratio", "2048"),
                 ("embedded", "inprocess", "ratio", "768"),
                 ("embedded", "server", "768", "overhead_ratio_mean"),
                 ("embedded", "server", "2048", "module_over_backbone_sums")],
    "wire": [("servers", "shipped_allocator", "binary", "fraction_of_memcpy"),
             ("servers", "shipped_allocator", "json", "fraction_of_memcpy"),
             ("servers", "shipped_allocator", "transport_only", "fraction_of_loopback_tcp"),
             ("loopback_tcp", "fraction_of_memcpy")],
    "batching": [("inprocess_batch_ceiling", "ratio")],
    "update": [("k4", "cold_over_warm"), ("k8", "cold_over_warm")],
    "overhead_per_item": [("after", body, "100", "overhead_us_per_item")
                          for body in ("json", "json_hidden", "binary_hidden")],
}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    assert main(["all", "--quick", "--out", str(out)]) == 0
    return out


# Differences of timers whose intervals overlap (a big request's tokenizing and its first
# batches): a sign is information, not an error (bench/overhead_per_item.py).
SIGNED = {"tokenize_and_queue_less_forward_and_module"}


def _numbers(value: Any) -> Iterator[float]:
    """Every number in a result, except the `SIGNED` ones."""
    if isinstance(value, bool):
        return
    if isinstance(value, int | float):
        yield float(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            if key not in SIGNED:
                yield from _numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from _numbers(item)


def _at(data: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        data = data[key]
    return data


@pytest.mark.parametrize("name", BENCHMARKS)
def test_each_benchmark_writes_valid_json(results: Path, name: str) -> None:
    data = json.loads((results / f"{name}.json").read_text())
    assert data["benchmark"] == name
    for field in ENVIRONMENT_FIELDS:
        assert data["environment"][field] not in (None, ""), field
    assert data["settings"]["quick"] is True
    numbers = list(_numbers(data["results"]))
    assert numbers and all(math.isfinite(x) and x >= 0 for x in numbers)
    for path in RATIOS[name]:
        ratio = _at(data["results"], path)
        assert math.isfinite(ratio) and ratio > 0, path
    assert data["headlines"], "no headline numbers"
    for headline in data["headlines"]:
        assert math.isfinite(headline["value"]) and headline["value"] > 0, headline


def test_rates_and_latencies_are_positive(results: Path) -> None:
    batching = json.loads((results / "batching.json").read_text())["results"]
    assert [level["concurrency"] for level in batching["levels"]] == [1, 8, 32, 128]
    for level in batching["levels"]:
        assert level["ratio"] > 0
        for side in ("on", "off"):
            assert level[side]["items_per_s"] > 0 and level[side]["errors"] == 0
            assert 0 < level[side]["latency_s"]["p50"] <= level[side]["latency_s"]["p99"]
    wire = json.loads((results / "wire.json").read_text())["results"]
    assert wire["memcpy"]["reused_mb_per_s"] > 0


def test_summary_lists_every_benchmark_with_a_table(results: Path) -> None:
    summary = json.loads((results / "summary.json").read_text())
    assert summary["results"]["benchmarks"] == list(BENCHMARKS)
    table = format_table([_headline(h) for h in summary["headlines"]])
    for name in BENCHMARKS:
        assert name in table


def _headline(raw: dict[str, Any]) -> Any:
    from r2m_bench.common import Headline

    return Headline(**raw)


def test_the_gpu_script_runs_every_step_on_the_cpu(tmp_path: Path) -> None:
    """bench/gpu.sh --dry-run: the GPU run's exact steps and flags, on the CPU with a tiny
    model in quick mode, so the one GPU run cannot fail on a typo."""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(["bash", str(root / "bench" / "gpu.sh"), "--dry-run", str(tmp_path)],
                          env={**os.environ, "PYTHON": sys.executable}, capture_output=True,
                          text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["dry_run"] is True and report["dtype"] == "bfloat16"
    assert list(report["steps"]) == ["build", "split", "efficiency", "batching"]
    for name, step in report["steps"].items():
        assert step["rc"] == 0, (name, (tmp_path / f"{name}.log").read_text()[-3000:])
    for name in ("split", "efficiency", "batching"):
        data = json.loads((tmp_path / name / f"{name}.json").read_text())
        server = data["settings"].get("server") or data["settings"]["servers"]["on"]
        assert "--device cpu --dtype bfloat16" in " ".join(server["args"]), name
        assert "backbone-tiny-llama" in server["backbone"], name
    assert {h["benchmark"] for h in report["headlines"]} == {"split", "efficiency", "batching"}
    assert not (tmp_path / "backbone-tiny-llama").exists()
