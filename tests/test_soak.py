"""The soak benchmark's one-minute version (`r2m bench soak --quick`): mixed score and update
traffic from several runs at ~70% of measured capacity. No request fails, and what grows with
traffic stays inside its byte bound. (The RSS curve and p99 drift are the benchmark's figures,
not asserted: a shared CI machine's timing is no test.) The summary says whether live bytes grew
or only RSS, from the server's own `r2m_allocator_bytes`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from r2m_bench import soak
from r2m_bench.servers import ServerPool
from tests.conftest import Server


def test_a_minute_of_mixed_load_fails_nothing_and_stays_bounded(tmp_path: Path) -> None:
    with ServerPool(tmp_path / "logs") as pool:
        (tmp_path / "logs").mkdir(exist_ok=True)
        result = soak.run(quick=True, out_dir=tmp_path, pool=pool)
    assert result["errors"] == 0, [w["error_samples"] for w in result["windows"]]
    assert all(w["requests"] > 0 for w in result["windows"])
    assert result["rte_cache_bytes_end"] <= int(soak.SOAK_ENV["R2M_RTE_CACHE_BYTES"])
    written = json.loads((tmp_path / "soak.json").read_text())
    assert written["results"]["start"]["rss_bytes"] > 0 and written["headlines"]


def test_the_summary_tells_live_bytes_growth_from_rss_growth() -> None:
    def sample(rss: float, allocated: float) -> dict[str, object]:
        return {"rss_bytes": rss, "redis_bytes": None,
                "allocator": {"name": "jemalloc", "allocated": allocated, "held": rss}}

    windows = [{"t_s": 5.0 * i, "errors": 0, "p99": 0.1, **sample(100 + i, 50)}
               for i in range(1, 13)]
    result = soak.summarize(windows, sample(90, 50), sample(110, 55), 10.0, 7.0, 0)
    assert result["after_warmup"]["allocator"]["allocated"] == 50
    assert result["allocated_growth_after_warmup"] == 55 / 50 - 1
    assert result["rss_growth_after_warmup"] == 110 / result["after_warmup"]["rss_bytes"] - 1
    assert "p99_last_over_first_minute" not in result  # no latencies given
    # 12 windows of 5 s: the first and last quarter (15 s) are three windows each
    latencies = [[0.1] * 100] * 3 + [[0.5] * 100] * 6 + [[0.2] * 100] * 3
    drift = soak.summarize(windows, sample(90, 50), sample(110, 55), 10.0, 7.0, 0, latencies)
    assert drift["p99_first_minute"] == pytest.approx(0.1)
    assert drift["p99_last_over_first_minute"] == pytest.approx(2.0)
    no_counts = soak.summarize([{**w, "allocator": {}} for w in windows], sample(90, 50),
                               {"rss_bytes": 110, "redis_bytes": None, "allocator": {}},
                               10.0, 7.0, 0)
    assert no_counts["allocated_growth_after_warmup"] is None


def test_the_soak_reads_the_servers_allocator_bytes(llama_server: Server) -> None:
    found = soak.allocator_bytes(llama_server.url)
    assert found["name"] in ("glibc", "jemalloc") and found["allocated"] > 0
    assert found["held"] >= found["allocated"]
