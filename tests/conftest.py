"""Shared fixtures: tiny Hugging Face models built from configs, and real r2m servers.

Servers are real `r2m serve` processes (uvicorn on loopback), started once per session per
backbone; tests talk to them over HTTP exactly as a trainer would.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from r2m_bench.models import TINY_BERT, TINY_LLAMA, save_reward_model
from r2m_service.launch import LocalServer, start_local_server

CHAT_TEMPLATE = (
    "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
)


def build_llama_rm(path: Path, *, chat_template: bool = True) -> Path:
    """A random 2-layer LlamaForSequenceClassification (one label) with the MiniLM vocabulary."""
    return save_reward_model(path, TINY_LLAMA, seed=0, head_std=1.0,
                             chat_template=CHAT_TEMPLATE if chat_template else None)


def build_bert_rm(path: Path) -> Path:
    """A random 2-layer BertForSequenceClassification (one label): an encoder RM, pair encoding."""
    return save_reward_model(path, TINY_BERT, seed=1, head_std=10.0)


@pytest.fixture(scope="session")
def llama_rm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_llama_rm(tmp_path_factory.mktemp("llama-rm"))


@pytest.fixture(scope="session")
def bert_rm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bert_rm(tmp_path_factory.mktemp("bert-rm"))


Server = LocalServer


def start_server(log_dir: Path, *args: str, env: dict[str, str] | None = None) -> Server:
    """`r2m serve` with one torch thread (two cores are shared by the whole suite), stopping
    at once on SIGTERM (no drain phase: no balancer is in front)."""
    return start_local_server(log_dir, *args, env={"R2M_TORCH_THREADS": "1", "R2M_DRAIN_S": "0",
                                                   **(env or {})})


@pytest.fixture(scope="session")
def server_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server-logs")


def _session_server(server_logs: Path, *args: str, env: dict[str, str] | None = None
                    ) -> Iterator[Server]:
    server = start_server(server_logs, *args, env=env)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def llama_server(server_logs: Path, llama_rm_dir: Path) -> Iterator[Server]:
    yield from _session_server(server_logs, "--backbone", str(llama_rm_dir), "--max-length", "64")


@pytest.fixture(scope="session")
def bert_server(server_logs: Path, bert_rm_dir: Path) -> Iterator[Server]:
    yield from _session_server(server_logs, "--backbone", str(bert_rm_dir))


@pytest.fixture(scope="session")
def default_server(server_logs: Path) -> Iterator[Server]:
    """The embedded default backbone (all-MiniLM-L6-v2), exactly as `r2m serve` starts it."""
    yield from _session_server(server_logs)


@pytest.fixture(scope="session")
def limits_server(server_logs: Path, llama_rm_dir: Path) -> Iterator[Server]:
    """Tight limits, to exercise 413s cheaply."""
    yield from _session_server(server_logs, "--backbone", str(llama_rm_dir), "--max-length", "64",
                               env={"R2M_MAX_BODY_BYTES": "65536", "R2M_MAX_ITEMS": "8"})


@pytest.fixture
def http(llama_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=llama_server.url, timeout=60) as client:
        yield client



@pytest.fixture(scope="session")
def unbatched_server(server_logs: Path, llama_rm_dir: Path) -> Iterator[Server]:
    """The same backbone with the batcher off: one request per model batch."""
    yield from _session_server(server_logs, "--backbone", str(llama_rm_dir), "--max-length", "64",
                               env={"R2M_BATCHING": "false"})
