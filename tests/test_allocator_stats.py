"""`r2m_allocator_bytes`: the allocator's count of live bytes follows a big allocation up and back
down, under glibc (as pytest runs) and under the image's jemalloc, where what it holds stays up
after the free (retention, not a leak); a real server exports it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from r2m_bench.allocator import JEMALLOC_CONF, JEMALLOC_PATHS
from r2m_service.allocator_stats import AllocatorCollector, allocator
from tests.conftest import Server

MiB = 1 << 20
BIG = 64 * MiB
# Prints the collector's samples before, during and after a 64 MiB bytearray, as JSON.
SCRIPT = f"""
import json
from r2m_service.allocator_stats import AllocatorCollector

collector = AllocatorCollector()

def read():
    return [{{**s.labels, "value": s.value}} for f in collector.collect() for s in f.samples]

before = read()
big = bytearray({BIG})
during = read()
del big
print(json.dumps({{"before": before, "during": during, "after": read()}}))
"""


def _bytes(collector: AllocatorCollector) -> dict[str, float]:
    return {s.labels["kind"]: s.value for f in collector.collect() for s in f.samples}


def _by_kind(samples: list[dict[str, str | float]]) -> dict[str, float]:
    return {str(s["kind"]): float(s["value"]) for s in samples}


def test_live_bytes_follow_a_big_allocation_up_and_back_down() -> None:
    if allocator() is None:
        pytest.skip("this process's allocator is neither jemalloc nor glibc's malloc")
    collector = AllocatorCollector()
    before = _bytes(collector)
    assert before["allocated"] > 0 and before["held"] >= before["allocated"]
    big = bytearray(BIG)
    during = _bytes(collector)
    del big
    after = _bytes(collector)
    assert during["allocated"] - before["allocated"] >= BIG
    assert during["held"] - before["held"] >= BIG
    assert after["allocated"] <= before["allocated"] + 16 * MiB


def test_under_jemalloc_live_bytes_fall_back_while_held_bytes_stay() -> None:
    library = next((path for path in JEMALLOC_PATHS if Path(path).is_file()), None)
    if library is None:
        pytest.skip(f"no libjemalloc.so.2 at any of {', '.join(JEMALLOC_PATHS)}")
    # Purging off, so the freed pages deterministically stay: the retention the metric shows.
    env = {**os.environ, "LD_PRELOAD": library, "MALLOC_CONF": f"{JEMALLOC_CONF},"
           "dirty_decay_ms:-1,muzzy_decay_ms:-1"}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    result = json.loads(out)
    assert {s["allocator"] for s in result["before"]} == {"jemalloc"}
    before, during, after = (_by_kind(result[k]) for k in ("before", "during", "after"))
    assert set(before) == {"allocated", "held", "active", "retained"}
    assert during["allocated"] - before["allocated"] >= BIG
    assert after["allocated"] <= before["allocated"] + 16 * MiB
    assert after["held"] >= before["held"] + BIG


def test_the_image_ships_the_allocator_setting_the_benchmarks_use() -> None:
    dockerfile = (Path(__file__).parent.parent / "Dockerfile").read_text()
    assert f"MALLOC_CONF={JEMALLOC_CONF} " in dockerfile


def test_a_server_exports_its_allocators_live_bytes(llama_server: Server) -> None:
    found = allocator()
    if found is None:
        pytest.skip("this process's allocator is neither jemalloc nor glibc's malloc")
    # The server inherits this process's environment, hence its allocator.
    metrics = httpx.get(f"{llama_server.url}/metrics", timeout=10).text
    assert f'r2m_allocator_bytes{{allocator="{found[0]}",kind="allocated"}}' in metrics
    assert f'r2m_allocator_bytes{{allocator="{found[0]}",kind="held"}}' in metrics
