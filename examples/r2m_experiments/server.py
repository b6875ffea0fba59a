"""Start and stop a local `r2m serve` process, for runs that are not given a `--url`.

The service is single-process, so the experiment launches its own on a free loopback port
(the embedded all-MiniLM-L6-v2 backbone unless `--backbone` is given), waits on `/readyz`
through the public client, and stops it with SIGTERM at the end.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from r2m_client import R2MClient


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def local_server(log_path: Path, *, backbone: str | None = None, torch_threads: int = 1,
                 timeout_s: float = 180.0) -> Iterator[str]:
    """Yield the base URL of a fresh `r2m serve` on loopback; its output goes to `log_path`."""
    port = free_port()
    command = [sys.executable, "-m", "r2m_service.cli", "serve", "--port", str(port),
               "--torch-threads", str(torch_threads), "--log-level", "warning"]
    if backbone:
        command += ["--backbone", backbone]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process, log_path, timeout_s)
        yield url
    finally:
        _stop(process)


def _wait_ready(url: str, process: subprocess.Popen, log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with R2MClient(url, timeout=5.0, retries=0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"r2m serve exited with {process.returncode}; see {log_path}")
            if client.ready():
                return
            time.sleep(0.2)
    raise RuntimeError(f"r2m serve was not ready after {timeout_s:.0f}s; see {log_path}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
