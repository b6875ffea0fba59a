"""`r2m bench paper_state`: `/v1/update` at the paper's state size, per state store, interleaved.

One run at D_rm = D_p = 4096, d = 2048 (33.6M parameters: ~400 MB with the AdamW moments) on
each of five real servers, updated in turn (one update per server per round, so a noisy
neighbour hits every arm alike):

- `in_process`: the baseline, no state written;
- `redis`, `redis_dir`: Redis holding every version's full state, or only the fenced head with
  the state as files in `--checkpoint-dir` (fsync on): `--state-snapshot-every 1`, the layout
  before step logs;
- `redis_steps`, `redis_dir_steps`: the same with `--state-snapshot-every K`: a full state every
  K versions, the optimizer step (its gradient, 134 MB) in between.

Reports per arm the update time (median and mean over `updates`, every sample), its ratio to the
in-process update of the same round (median and mean of those paired ratios: the headline, since
the load can change between rounds but hardly within one), the server's
own training time per update (`r2m_module_duration_seconds{phase="update"}`: the rest is the
state write and HTTP), the bytes sent to Redis per update and the run's bytes held there, and
the time a fresh replica takes to load the run (snapshot + replayed steps). One Redis serves all
arms under separate prefixes; the arms run one at a time, so each Redis counter delta is one
arm's. The backbone is a one-layer Llama, 4096 wide, random weights: only its width matters.
`--quick`: D = 512, d = 256.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import redis
import torch

from r2m_bench.allocator import ALLOCATOR_ENV
from r2m_bench.common import Headline, write_result
from r2m_bench.models import BackboneShape, build_backbone
from r2m_bench.servers import ServerPool
from r2m_client import Group, R2MClient
from r2m_service.launch import LocalServer, free_port, start_local_server

PAPER = {"width": 4096, "attention_dim": 2048}
QUICK = {"width": 512, "attention_dim": 256}
TOKENS = 32  # policy tokens per response; the state size does not depend on it
SNAPSHOT_EVERY = 4  # the shipped default of --state-snapshot-every


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


def arms(redis_url: str, state_dir: Path) -> dict[str, dict[str, str]]:
    """Each arm's server environment (settings as `R2M_*` variables)."""
    def redis_arm(name: str, every: int, files: bool) -> dict[str, str]:
        env = {"R2M_REDIS_URL": redis_url, "R2M_REDIS_PREFIX": name,
               "R2M_STATE_SNAPSHOT_EVERY": str(every)}
        return {**env, "R2M_CHECKPOINT_DIR": str(state_dir / name)} if files else env

    return {"in_process": {},
            "redis": redis_arm("redis", 1, False),
            "redis_steps": redis_arm("redis_steps", SNAPSHOT_EVERY, False),
            "redis_dir": redis_arm("redis_dir", 1, True),
            "redis_dir_steps": redis_arm("redis_dir_steps", SNAPSHOT_EVERY, True)}


def start(log_dir: Path, backbone: Path, env: dict[str, str]) -> LocalServer:
    return start_local_server(log_dir, "--backbone", str(backbone), "--max-length", "64",
                              "--torch-threads", "1", timeout=900,
                              env={**ALLOCATOR_ENV, "R2M_LOG_LEVEL": "warning", **env})


def groups(shape: dict[str, int], count: int) -> list[Group]:
    g = torch.Generator().manual_seed(0)
    return [Group("What is 2 + 2?", [f"{i}: four", f"{i}: five"],
                  [torch.randn(TOKENS, shape["width"], generator=g).bfloat16()
                   for _ in range(2)]) for i in range(count)]


def module_seconds(url: str) -> float:
    """The server's total training time in updates so far."""
    text = httpx.get(f"{url}/metrics", timeout=60).text
    match = re.search(r'^r2m_module_duration_seconds_sum\{phase="update"\} (\S+)$', text,
                      re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def held_bytes(client: redis.Redis, prefix: str) -> int:
    """Value bytes of one arm's run keys (its head, state chunks, idempotency records)."""
    return sum(int(client.strlen(key)) for key in client.scan_iter(f"{prefix}:run:*", 1000))


def sent_bytes(client: redis.Redis) -> int:
    return int(client.info("stats")["total_net_input_bytes"])


def measure(log_dir: Path, backbone: Path, shape: dict[str, int], updates: int,
            envs: dict[str, dict[str, str]], client: redis.Redis) -> dict[str, Any]:
    names = list(envs)
    with ThreadPoolExecutor(len(names)) as threads:
        servers = dict(zip(names, threads.map(lambda n: start(log_dir, backbone, envs[n]),
                                              names), strict=True))
    inputs = groups(shape, updates + 1)
    results: dict[str, Any] = {n: {"update_s": [], "redis_bytes_in": [], "module_s": []}
                               for n in names}
    try:
        rms = {n: R2MClient(servers[n].url, timeout=900) for n in names}
        runs = {n: rms[n].create_run(run_id="paper", policy_hidden_size=shape["width"],
                                     total_steps=1000, attention_dim=shape["attention_dim"],
                                     seed=0).run_id for n in names}
        for n in names:  # warm-up: RTEs, allocator, AdamW moments
            rms[n].update(runs[n], groups=[inputs[0]])
        for group in inputs[1:]:
            for n in names:
                sent, trained = sent_bytes(client), module_seconds(servers[n].url)
                started = time.perf_counter()
                rms[n].update(runs[n], groups=[group])
                results[n]["update_s"].append(time.perf_counter() - started)
                results[n]["module_s"].append(module_seconds(servers[n].url) - trained)
                results[n]["redis_bytes_in"].append(sent_bytes(client) - sent)
        for rm in rms.values():
            rm.close()
    finally:
        for server in servers.values():
            server.stop()
    for n in names:
        r = results[n]
        r["update_s_median"] = statistics.median(r["update_s"])
        r["update_s_mean"] = statistics.fmean(r["update_s"])
        r["module_s_mean"] = statistics.fmean(r["module_s"])
        r["redis_bytes_in_per_update"] = statistics.fmean(r["redis_bytes_in"])
        if envs[n]:
            r["redis_held_bytes"] = held_bytes(client, envs[n]["R2M_REDIS_PREFIX"])
            r["cold_load_s"] = cold_load(log_dir, backbone, envs[n])
    return results


def cold_load(log_dir: Path, backbone: Path, env: dict[str, str]) -> float:
    """A fresh replica's first read of the run: snapshot plus replayed steps."""
    server = start(log_dir, backbone, env)
    try:
        with R2MClient(server.url, timeout=900) as rm:
            started = time.perf_counter()
            rm.get_run("paper")
            return time.perf_counter() - started
    finally:
        server.stop()


def run(*, quick: bool, out_dir: Path, pool: ServerPool) -> dict[str, Any]:
    shape = QUICK if quick else PAPER
    updates = 4 if quick else 8
    backbone = build_backbone(BackboneShape(layers=1, hidden=shape["width"], heads=32,
                                            intermediate=256, max_length=64, arch="llama",
                                            kv_heads=8, positions=128))
    with tempfile.TemporaryDirectory(prefix="r2m-paper-state-") as tmp, \
            redis_server(Path(tmp)) as url:
        client = redis.Redis.from_url(url)
        results = measure(pool.log_dir, backbone, shape, updates, arms(url, Path(tmp)), client)
    base = results["in_process"]["update_s"]
    for r in results.values():
        r["over_in_process"] = [s / b for s, b in zip(r["update_s"], base, strict=True)]
        r["over_in_process_median"] = statistics.median(r["over_in_process"])
        r["over_in_process_mean"] = statistics.fmean(r["over_in_process"])
    headlines = [Headline("paper_state", f"update {stat}, {name} ÷ in-process (paired)",
                          results[name][f"over_in_process_{stat}"], "×", 2.0,
                          higher_is_better=False)
                 for name in ("redis", "redis_steps", "redis_dir", "redis_dir_steps")
                 for stat in ("median", "mean")]
    path = write_result("paper_state", {"shape": shape, "updates": updates, "tokens": TOKENS,
                                        "snapshot_every": SNAPSHOT_EVERY,
                                        "allocator_env": ALLOCATOR_ENV}, results, out_dir,
                        headlines)
    return {"path": path, "headlines": headlines, **results}
