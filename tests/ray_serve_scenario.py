"""The Ray Serve scenario behind tests/test_ray_serve.py, run there as
`python -m tests.ray_serve_scenario FIGURES.json` inside a fresh network namespace where only
loopback is up (Ray's services otherwise pick the machine's other addresses).

It starts a private redis-server and a one-node Ray cluster, deploys `deploy/ray/serve.yaml` as
an operator would (`serve run`), creates a run through one replica, keeps updating it while one
replica is SIGKILLed and replaced, and records what every side saw as JSON for the test to judge.
Every wait is bounded; every process it starts is stopped by pid, and Ray's files stay in a
private directory that is removed at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx
import ray
import yaml
from ray import serve

from r2m_service.launch import free_port
from r2m_service.ray import REPLICA_HEADER
from tests.helpers import hidden, wire
from tests.redis_server import start_redis

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "deploy" / "ray" / "serve.yaml"
BIN = Path(sys.executable).parent
APP = "r2m"
REPLICA_TITLE = f"ray::ServeReplica:{APP}:"
D_P = 16

T = TypeVar("T")


@dataclass
class Figures:
    """What the scenario observed; test_ray_serve.py asserts on it."""

    replicas: int = 0
    replicas_after_restart: int = 0
    ready_s: float = 0.0
    created_by: str = ""
    acknowledged: list[tuple[int, str]] = field(default_factory=list)  # (version, replica)
    retried_attempts: int = 0
    killed_pid: int = 0
    restart_s: float = 0.0
    replacement: str = ""
    final_versions: dict[str, int] = field(default_factory=dict)  # replica -> version
    final_steps: dict[str, int] = field(default_factory=dict)
    slowest_update_s: float = 0.0


def log(message: str) -> None:
    """Progress on stderr, which the test shows when it fails."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def wait_for(check: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise TimeoutError(f"no {what} within {timeout:.0f}s")


def netns_processes(netns: str | None = None) -> list[int]:
    """Pids of the processes in network namespace `netns` (default: this process's), other than
    this process: within the scenario's namespace, the only ones are those it started."""
    netns = netns or os.readlink("/proc/self/ns/net")
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if os.readlink(entry / "ns" / "net") == netns:
                    pids.append(int(entry.name))
    return pids


def replica_pids() -> set[int]:
    """Serve replica processes of our app (Ray titles them `ray::ServeReplica:APP:DEPLOYMENT`)."""
    pids = set()
    for pid in netns_processes():
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(REPLICA_TITLE.encode()):
                pids.add(pid)
    return pids


@contextlib.contextmanager
def ray_head(work: Path) -> Iterator[str]:
    """A one-node Ray cluster with its session files under `work`; yields the GCS address.

    `ray start --block` takes the processes it started down on SIGTERM; whatever else is still in
    this namespace after that is killed by pid.
    """
    port = free_port()
    cmd = [str(BIN / "ray"), "start", "--head", "--block", f"--port={port}",
           "--node-ip-address=127.0.0.1", "--num-cpus=8", "--include-dashboard=false",
           "--disable-usage-stats", f"--temp-dir={work / 'ray'}"]
    with (work / "ray-start.log").open("wb") as output:
        head = subprocess.Popen(cmd, stdout=output, stderr=subprocess.STDOUT, env={
            **os.environ, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"})  # no traffic to drain
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stopping = time.monotonic()
        head.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=30)
        leftovers = netns_processes()
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        head.wait()
        log(f"Ray stopped in {time.monotonic() - stopping:.1f}s; {len(leftovers)} processes "
            "outlived `ray start` and were killed")


def deploy(address: str, redis_url: str, work: Path) -> None:
    """`serve run` the shipped config, changed only where this machine differs: its Redis, and
    one torch thread per replica (two cores are shared by everything here)."""
    config = yaml.safe_load(CONFIG.read_text())
    app = next(a for a in config["applications"] if a["name"] == APP)
    app["args"].update(redis_url=redis_url, torch_threads=1)
    path = work / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    subprocess.run([str(BIN / "serve"), "run", "--non-blocking", "--address", address,
                    str(path)], check=True, capture_output=True, timeout=120)


def running_replicas() -> int:
    status = serve.status().applications.get(APP)
    if status is None or status.status != "RUNNING":
        return 0
    states = status.deployments[APP].replica_states
    return states.get("RUNNING", 0) if set(states) == {"RUNNING"} else 0


class Updater(threading.Thread):
    """Sends updates one after another until stopped, each resent with the same Idempotency-Key
    until acknowledged, as a trainer's client does; records (version, replica) per ack."""

    def __init__(self, http: httpx.Client, run_id: str, figures: Figures) -> None:
        super().__init__(daemon=True)
        self.http, self.run_id, self.figures = http, run_id, figures
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.figures.acknowledged.append(self._update_once(len(self.figures.acknowledged)))
        except BaseException as exc:  # reported by the main thread
            self.error = exc

    def _update_once(self, n: int) -> tuple[int, str]:
        body = {"run_id": self.run_id, "step": n, "groups": [{
            "prompt": "Which city is the capital of Italy?",
            "responses": [f"update {n}: Rome.", f"update {n}: Milan."],
            "hidden_states": [wire(h) for h in hidden([3, 4], D_P, seed=n)]}]}
        headers = {"Idempotency-Key": str(uuid.uuid4())}
        started = time.monotonic()
        deadline = started + 90
        while time.monotonic() < deadline:
            try:
                response = self.http.post("/v1/update", json=body, headers=headers)
            except httpx.TransportError:
                response = None
            if response is not None and response.status_code == 200:
                self.figures.slowest_update_s = max(self.figures.slowest_update_s, round(
                    time.monotonic() - started, 1))
                return response.json()["version"], response.headers[REPLICA_HEADER]
            if response is not None and response.status_code < 429:
                raise RuntimeError(f"update {n}: {response.status_code} {response.text}")
            self.figures.retried_attempts += 1
            time.sleep(0.2)
        raise TimeoutError(f"update {n} was not acknowledged within 90s")


def acked_by(figures: Figures, check: Callable[[str], bool], updater: Updater) -> bool:
    if updater.error is not None:
        raise updater.error
    return any(check(replica) for _, replica in figures.acknowledged)


def scenario(work: Path, figures: Figures) -> None:
    with ray_head(work) as address:
        redis = start_redis(work)
        try:
            started = time.monotonic()
            deploy(address, redis.url, work)
            log("deployed; waiting for 2 replicas")
            ray.init(address=address, namespace="serve", log_to_driver=False,
                     logging_level="WARNING", _node_ip_address="127.0.0.1")
            wait_for(lambda: running_replicas() == 2, 180, "2 running replicas")
            figures.replicas = running_replicas()
            figures.ready_s = round(time.monotonic() - started, 1)
            log(f"{figures.replicas} replicas running after {figures.ready_s}s")
            with httpx.Client(base_url="http://127.0.0.1:8000", timeout=60) as http:
                run_replicas(http, figures)
        finally:
            ray.shutdown()
            redis.stop()


def run_replicas(http: httpx.Client, figures: Figures) -> None:
    created = http.post("/v1/runs", json={"policy_hidden_size": D_P, "total_steps": 100,
                                          "learning_rate": 1e-2})
    created.raise_for_status()
    run_id = created.json()["run_id"]
    figures.created_by = created.headers[REPLICA_HEADER]
    updater = Updater(http, run_id, figures)
    updater.start()
    try:
        wait_for(lambda: acked_by(figures, lambda r: r != figures.created_by, updater), 120,
                 "update acknowledged by the replica that did not create the run")
        before = {replica for _, replica in figures.acknowledged} | {figures.created_by}
        figures.killed_pid = min(replica_pids())
        killed_at = time.monotonic()
        os.kill(figures.killed_pid, signal.SIGKILL)
        log(f"killed replica pid {figures.killed_pid}")
        wait_for(lambda: running_replicas() == 2 and replica_pids() - {figures.killed_pid} and
                 len(replica_pids()) == 2, 180, "a replacement replica")
        figures.restart_s = round(time.monotonic() - killed_at, 1)
        figures.replicas_after_restart = running_replicas()
        log(f"replaced after {figures.restart_s}s")
        wait_for(lambda: acked_by(figures, lambda r: r not in before, updater), 120,
                 "an update acknowledged by the replacement replica")
        figures.replacement = next(r for _, r in figures.acknowledged if r not in before)
    finally:
        updater.stop.set()
        updater.join(timeout=120)
    if updater.error is not None:
        raise updater.error

    def read_from_every_replica() -> bool:
        answer = http.get(f"/v1/runs/{run_id}")
        answer.raise_for_status()
        replica = answer.headers[REPLICA_HEADER]
        figures.final_versions[replica] = answer.json()["version"]
        figures.final_steps[replica] = answer.json()["step"]
        return len(figures.final_versions) >= 2

    wait_for(read_from_every_replica, 60, "the run read through both live replicas")
    log(f"{len(figures.acknowledged)} updates acknowledged; versions read: "
        f"{figures.final_versions}")


def main(out: Path) -> int:
    figures = Figures()
    work = Path(tempfile.mkdtemp(prefix="r2m-ray-", dir="/tmp"))  # Ray's socket paths are short
    try:
        scenario(work, figures)
    finally:
        out.write_text(json.dumps(asdict(figures), indent=2))
        logs = work / "ray" / "session_latest" / "logs"  # the replicas' logs, for a failure
        if logs.is_dir():
            shutil.copytree(logs, out.parent / "ray-logs", symlinks=True, dirs_exist_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
