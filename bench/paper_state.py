"""`r2m bench paper_state`: `/v1/update` at the paper's state size, per state store.

One run at D_rm = D_p = 4096, d = 2048 (33.6M parameters: ~400 MB with the AdamW moments, the
state written per version) updated through a real server: in-process store (the baseline: no
state written), Redis holding the state, and Redis holding only the fenced head with the state as
files in `--checkpoint-dir` (fsync on). Reports the update time (median over `updates`) and the
bytes sent to Redis and held by it per update. The backbone is a one-layer Llama, 4096 wide,
random weights: only its width matters here. `--quick`: D = 512, d = 256.
"""

from __future__ import annotations

import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
import torch

from r2m_bench.common import GLIBC_TUNABLES, Headline, write_result
from r2m_bench.models import BackboneShape, build_backbone
from r2m_bench.servers import ServerPool
from r2m_client import Group, R2MClient
from r2m_service.launch import free_port, start_local_server

PAPER = {"width": 4096, "attention_dim": 2048}
QUICK = {"width": 512, "attention_dim": 256}
TOKENS = 32  # policy tokens per response; the state size does not depend on it


@contextmanager
def redis_server(data_dir: Path) -> Iterator[str]:
    """A private redis-server (no persistence: the bytes it holds are what is measured)."""
    port = free_port()
    process = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                "--save", "", "--appendonly", "no", "--dir", str(data_dir)],
                               stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(30)


def measure(log_dir: Path, backbone: Path, shape: dict[str, int], updates: int,
            redis_url: str | None, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    env = {"GLIBC_TUNABLES": GLIBC_TUNABLES, "R2M_LOG_LEVEL": "warning"}
    if redis_url:
        env["R2M_REDIS_URL"] = redis_url
    server = start_local_server(log_dir, "--backbone", str(backbone), "--max-length", "64",
                                "--torch-threads", "1", *extra, env=env, timeout=600)
    stats = redis.Redis.from_url(redis_url) if redis_url else None
    try:
        with R2MClient(server.url, timeout=600) as rm:
            run_id = rm.create_run(policy_hidden_size=shape["width"], total_steps=1000,
                                   attention_dim=shape["attention_dim"]).run_id
            g = torch.Generator().manual_seed(0)
            groups = [Group("What is 2 + 2?", [f"{i}: four", f"{i}: five"],
                            [torch.randn(TOKENS, shape["width"], generator=g).bfloat16()
                             for _ in range(2)]) for i in range(updates + 1)]
            rm.update(run_id, groups=[groups[0]])  # warm-up: RTEs, allocator, AdamW moments
            sent_before = _sent(stats)
            seconds = []
            for group in groups[1:]:
                started = time.perf_counter()
                rm.update(run_id, groups=[group])
                seconds.append(time.perf_counter() - started)
            sent = _sent(stats) - sent_before
        held = int(stats.info("memory")["used_memory"]) if stats else 0
    finally:
        server.stop()
    return {"update_s_median": statistics.median(seconds), "update_s": seconds,
            "redis_bytes_in_per_update": sent / updates, "redis_used_memory": held}


def _sent(stats: redis.Redis | None) -> int:
    return int(stats.info("stats")["total_net_input_bytes"]) if stats else 0


def run(*, quick: bool, out_dir: Path, pool: ServerPool) -> dict[str, Any]:
    shape = QUICK if quick else PAPER
    updates = 3 if quick else 5
    backbone = build_backbone(BackboneShape(layers=1, hidden=shape["width"], heads=32,
                                            intermediate=256, max_length=64, arch="llama",
                                            kv_heads=8, positions=128))
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="r2m-paper-state-") as tmp:
        results["in_process"] = measure(pool.log_dir, backbone, shape, updates, None)
        with redis_server(Path(tmp)) as url:
            results["redis"] = measure(pool.log_dir, backbone, shape, updates, url)
        with redis_server(Path(tmp)) as url:
            results["redis_with_checkpoint_dir"] = measure(
                pool.log_dir, backbone, shape, updates, url,
                ("--checkpoint-dir", str(Path(tmp) / "state")))
    base = results["in_process"]["update_s_median"]
    for name in ("redis", "redis_with_checkpoint_dir"):
        results[name]["over_in_process"] = results[name]["update_s_median"] / base
    headlines = [
        Headline("paper_state", "update, redis ÷ in-process",
                 results["redis"]["over_in_process"], "×", 2.0, higher_is_better=False),
        Headline("paper_state", "update, redis + checkpoint dir ÷ in-process",
                 results["redis_with_checkpoint_dir"]["over_in_process"], "×", 2.0,
                 higher_is_better=False),
        Headline("paper_state", "redis bytes in per update (checkpoint dir)",
                 results["redis_with_checkpoint_dir"]["redis_bytes_in_per_update"], "B"),
    ]
    path = write_result("paper_state", {"shape": shape, "updates": updates,
                                        "tokens": TOKENS}, results, out_dir, headlines)
    return {"path": path, "headlines": headlines, **results}
