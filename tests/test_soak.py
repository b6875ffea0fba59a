"""The soak benchmark's one-minute version (`r2m bench soak --quick`): mixed score and update
traffic from several runs at ~70% of measured capacity. No request fails, and what grows with
traffic stays inside its byte bound. (The RSS curve and p99 drift are the benchmark's figures,
not asserted: a shared CI machine's timing is no test.)"""

from __future__ import annotations

import json
from pathlib import Path

from r2m_bench import soak
from r2m_bench.servers import ServerPool


def test_a_minute_of_mixed_load_fails_nothing_and_stays_bounded(tmp_path: Path) -> None:
    with ServerPool(tmp_path / "logs") as pool:
        (tmp_path / "logs").mkdir(exist_ok=True)
        result = soak.run(quick=True, out_dir=tmp_path, pool=pool)
    assert result["errors"] == 0, [w["error_samples"] for w in result["windows"]]
    assert all(w["requests"] > 0 for w in result["windows"])
    assert result["rte_cache_bytes_end"] <= int(soak.SOAK_ENV["R2M_RTE_CACHE_BYTES"])
    written = json.loads((tmp_path / "soak.json").read_text())
    assert written["results"]["start"]["rss_bytes"] > 0 and written["headlines"]
