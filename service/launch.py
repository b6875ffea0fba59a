"""Start a real `r2m serve` process on a free loopback port and wait until it is ready.

For tests, benchmarks and examples: they all want the service exactly as a user runs it, not an
in-process imitation.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalServer:
    """A running `r2m serve` subprocess; its output goes to `log_path`."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def server_environment(env: Mapping[str, str | None] | None) -> dict[str, str]:
    """This process's environment, unbuffered, with `env` added (`None` values removed)."""
    merged = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return {name: value for name, value in merged.items() if value is not None}


def start_local_server(log_dir: Path, *args: str, env: Mapping[str, str | None] | None = None,
                       timeout: float = 120.0, port: int | None = None,
                       r2m: Sequence[str] = (sys.executable, "-m", "r2m_service.cli"),
                       cwd: Path | None = None) -> LocalServer:
    """Run `r2m serve --port P *args` and return once `/readyz` answers 200. `r2m` is the
    command (default: this interpreter's install); `env` adds to, and `None` values remove
    from, this process's environment."""
    port = port or free_port()
    log_path = Path(log_dir) / f"r2m-serve-{port}.log"
    full_env = server_environment(env)
    cmd = [*r2m, "serve", "--port", str(port), *args]
    with log_path.open("wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env,
                                   cwd=cwd)
    server = LocalServer(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"r2m serve exited with {process.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    server.stop(signal.SIGKILL)
    raise RuntimeError(f"r2m serve was not ready within {timeout:.0f}s:\n{server.log()}")
