"""Crashes and restarts, exactly once: two replicas on a private Redis (append-only, fsync always),
concurrent writers retrying with the real client and their own Idempotency-Keys, while a replica
is SIGKILLed and restarted, Redis is SIGKILLed and restarted on the same data, and a writer's
connection is cut mid-body. Every acknowledged update is applied exactly once."""

from __future__ import annotations

import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from r2m_client import Group, R2MClient, RetryPolicy
from r2m_proto.media import IDEMPOTENCY_KEY_HEADER
from r2m_service.launch import LocalServer, start_local_server
from tests.helpers import D_P, hidden
from tests.redis_server import RedisServer, start_redis

WRITERS = 3
UPDATES_PER_WRITER = 6
PROMPT = "Which river flows through Paris?"
# Patient enough to outlast a replica's restart (a fresh process loads the backbone).
RETRY = RetryPolicy(retries=60, backoff=0.2, max_backoff=10.0)


def group(tag: str) -> Group:
    return Group(PROMPT, [f"{tag}: the Seine.", f"{tag}: the Thames."],
                 hidden([3, 4], D_P, seed=hash(tag) % 1000))


class Cluster:
    """Redis and two replicas that the test may kill and bring back on the same ports."""

    def __init__(self, redis_server: RedisServer, log_dir: Path, backbone: Path) -> None:
        self.redis = redis_server
        self._log_dir = log_dir
        self._args = ("--backbone", str(backbone), "--max-length", "64")
        self._env = {"R2M_TORCH_THREADS": "1", "R2M_DRAIN_S": "0",
                     "R2M_REDIS_URL": redis_server.url, "R2M_LOCK_LEASE_S": "2",
                     "R2M_REDIS_PREFIX": f"crash-{uuid.uuid4().hex[:6]}"}
        self.replicas = [self._start() for _ in range(2)]

    def _start(self, port: int | None = None) -> LocalServer:
        return start_local_server(self._log_dir, *self._args, env=self._env, port=port)

    def kill_and_restart_replica(self, index: int) -> None:
        old = self.replicas[index]
        old.stop(signal.SIGKILL)
        self.replicas[index] = self._start(int(old.url.rsplit(":", 1)[1]))

    def kill_and_restart_redis(self) -> None:
        assert self.redis.process is not None
        self.redis.process.kill()
        self.redis.process.wait()
        time.sleep(0.5)
        self.redis.start()  # same port, same append-only file

    def stop(self) -> None:
        for replica in self.replicas:
            replica.stop()


@pytest.fixture
def cluster(tmp_path: Path, server_logs: Path, llama_rm_dir: Path) -> Iterator[Cluster]:
    redis_server = start_redis(tmp_path)
    cluster = Cluster(redis_server, server_logs, llama_rm_dir)
    yield cluster
    cluster.stop()
    redis_server.stop()


def cut_mid_body(url: str, run_id: str, key: str) -> None:
    """Send the headers and half the body of an update, then hang up."""
    host, port = url.removeprefix("http://").split(":")
    body = (b'{"run_id": "%s", "groups": []}' % run_id.encode()) * 50
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(f"POST /v1/update HTTP/1.1\r\nHost: {host}\r\nContent-Type: "
                     f"application/json\r\nContent-Length: {len(body)}\r\n"
                     f"{IDEMPOTENCY_KEY_HEADER}: {key}\r\n\r\n".encode() + body[:len(body) // 2])


def wait_for(condition: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the writers made no progress"
        time.sleep(0.1)


def test_acknowledged_updates_apply_exactly_once_through_crashes(cluster: Cluster) -> None:
    with R2MClient(cluster.replicas[0].url, retries=RETRY) as rm:
        run_id = rm.create_run(policy_hidden_size=D_P, total_steps=100,
                               learning_rate=1e-2).run_id
    acked: dict[str, int] = {}  # idempotency key -> version acknowledged
    lock = threading.Lock()

    def update(replica: int, key: str) -> None:
        with R2MClient(cluster.replicas[replica].url, retries=RETRY, timeout=30) as rm:
            version = rm.update(run_id, groups=[group(key)], idempotency_key=key).version
        with lock:
            acked[key] = version

    def writer(index: int) -> None:
        for n in range(UPDATES_PER_WRITER):
            update(index % 2, f"w{index}-{n}-{uuid.uuid4().hex[:8]}")

    with ThreadPoolExecutor(WRITERS) as pool:
        writers = [pool.submit(writer, i) for i in range(WRITERS)]
        wait_for(lambda: len(acked) >= 3)
        cluster.kill_and_restart_replica(1)
        wait_for(lambda: len(acked) >= 8)
        cluster.kill_and_restart_redis()
        cut_key = f"cut-{uuid.uuid4().hex[:8]}"
        cut_mid_body(cluster.replicas[0].url, run_id, cut_key)
        update(0, cut_key)  # the writer retries the whole update under the same key
        for done in writers:
            done.result()

    versions = sorted(acked.values())
    assert len(acked) == WRITERS * UPDATES_PER_WRITER + 1
    assert versions == list(range(1, len(acked) + 1))  # each once, none shared, no gap
    for replica in cluster.replicas:
        with R2MClient(replica.url, retries=RETRY) as rm:
            assert rm.get_run(run_id).version == len(acked)
            scored = rm.score(run_id, [PROMPT], ["the Seine."], min_version=len(acked))
            assert scored.version == len(acked)
