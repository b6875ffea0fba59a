"""A rolling restart behind the shipped nginx config loses no request: SIGTERM makes `/readyz`
answer 503 first while requests still succeed, in-flight ones drain, the process exits, and the
balancer plus the client's retries carry the load over to the other replica meanwhile."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from r2m_client import Group, R2MClient, R2MError
from r2m_service.launch import LocalServer, free_port, start_local_server
from tests.deploy_tools import DEPLOY, daemon, tool, wait_until
from tests.helpers import D_P, hidden
from tests.redis_server import RedisServer, start_redis

DRAIN_S = 2.0
LOAD_THREADS = 4
PROMPT = "Name a prime number."


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = start_redis(tmp_path)
    yield server
    server.stop()


def start_replica(log_dir: Path, backbone: Path, redis_url: str, prefix: str,
                  port: int | None = None) -> LocalServer:
    return start_local_server(log_dir, "--backbone", str(backbone), "--max-length", "64",
                              env={"R2M_TORCH_THREADS": "1", "R2M_DRAIN_S": str(DRAIN_S),
                                   "R2M_REDIS_URL": redis_url, "R2M_REDIS_PREFIX": prefix},
                              port=port)


def balancer_config(replicas: list[LocalServer], port: int) -> str:
    """The shipped config; only the upstream addresses and the listen port are local."""
    conf = (DEPLOY / "nginx" / "nginx.conf").read_text()
    line = "        server r2m-replica:8000 max_fails=3 fail_timeout=10s;\n"
    assert line in conf and "listen 8080;" in conf
    upstreams = "".join(line.replace("r2m-replica:8000", r.url.removeprefix("http://"))
                        for r in replicas)
    return conf.replace(line, upstreams).replace("listen 8080;", f"listen 127.0.0.1:{port};")


class Load:
    """Trainers through the balancer: scores, and an update every fifth call, each retried by
    the client as it would be in training; counts what still failed after the retries."""

    def __init__(self, url: str, run_id: str) -> None:
        self._url, self._run_id = url, run_id
        self.ok = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._loop, args=(i,)) for i in
                         range(LOAD_THREADS)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(120)

    def _loop(self, index: int) -> None:
        states = hidden([3, 5], D_P, seed=index)
        with R2MClient(self._url, timeout=30) as rm:
            n = 0
            while not self._stop.is_set() and n < 10_000:
                n += 1
                try:
                    if n % 5 == 0:
                        rm.update(self._run_id, groups=[Group(
                            PROMPT, [f"{index}-{n}: seven", f"{index}-{n}: nine"], states)])
                    else:
                        rm.score(self._run_id, [PROMPT] * 2, ["Seven.", "Nine."], states)
                    with self._lock:
                        self.ok += 1
                except R2MError as exc:
                    with self._lock:
                        self.failed.append(f"{type(exc).__name__}: {exc}")


def test_a_rolling_restart_fails_no_request(redis_server: RedisServer, server_logs: Path,
                                            llama_rm_dir: Path, tmp_path: Path) -> None:
    prefix = f"roll-{uuid.uuid4().hex[:6]}"
    replicas = [start_replica(server_logs, llama_rm_dir, redis_server.url, prefix)
                for _ in range(2)]
    port = free_port()
    (tmp_path / "nginx.conf").write_text(balancer_config(replicas, port))
    url = f"http://127.0.0.1:{port}"
    try:
        with daemon([tool("nginx"), "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"),
                     "-g", f"daemon off; pid {tmp_path}/nginx.pid; error_log stderr;"],
                    tmp_path / "nginx.log", f"{url}/lb/healthz", "nginx to start", timeout=15):
            with R2MClient(url) as rm:
                run_id = rm.create_run(policy_hidden_size=D_P, total_steps=50).run_id
            with Load(url, run_id) as load:
                wait_until(lambda: load.ok >= 20, 60, "load to start")
                leaving = replicas[1]
                leaving.process.send_signal(signal.SIGTERM)
                # readiness fails first, while the replica still serves
                wait_until(lambda: httpx.get(f"{leaving.url}/readyz").status_code == 503, 5,
                           "/readyz to fail")
                assert httpx.get(f"{leaving.url}/v1/info").status_code == 200
                assert leaving.process.wait(timeout=60) is not None
                served_before = load.ok
                replicas[1] = start_replica(server_logs, llama_rm_dir, redis_server.url, prefix,
                                            int(leaving.url.rsplit(":", 1)[1]))
                wait_until(lambda: load.ok >= served_before + 20, 60, "load after restart")
                time.sleep(1.0)
    finally:
        for replica in replicas:
            replica.stop()
    assert load.failed == [], load.failed[:5]
    assert "draining" in leaving.log()
