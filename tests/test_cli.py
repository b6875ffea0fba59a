"""`r2m serve` as an operator runs it: every flag typed, validated and honoured; a busy port or a
bad value fails at once with a message naming the flag."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from r2m_service.api_keys import Scope, key_line, new_key
from r2m_service.launch import server_environment
from r2m_service.settings import Settings
from tests.conftest import start_server
from tests.redis_server import start_redis


def _serve(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "r2m_service.cli", "serve", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_every_flag_reaches_the_service(tmp_path: Path, llama_rm_dir: Path) -> None:
    (tmp_path / "redis").mkdir()
    redis = start_redis(tmp_path / "redis")
    key = new_key()
    keys_file = tmp_path / "keys"
    keys_file.write_text(key_line(key, {Scope.SCORE, Scope.METRICS}, "ops") + "\n")
    admin = new_key()
    flags = {
        "backbone": str(llama_rm_dir), "device": "cpu", "dtype": "bfloat16",
        "max_length": 48, "max_body_bytes": 1_000_000, "max_items": 17, "max_batch_size": 5,
        "max_batch_tokens": 999, "max_queued_items": 123, "torch_threads": 1,
        "score_batch_tokens": 300, "batch_throughput_tolerance": 0.25,
        "rte_cache_bytes": 77_000, "idempotency_ttl_s": 60.5, "redis_url": redis.url,
        "idempotency_bytes": 1_000_000, "max_policy_hidden_size": 999, "max_attention_dim": 99,
        "max_total_steps": 9999, "max_run_bytes": 10**8, "runs_memory_bytes": 10**9,
        "max_runs": 9, "retained_versions": 3, "state_snapshot_every": 5, "drain_s": 0.0,
        "get_reward_run_id": "cli-run",
        "redis_prefix": "cli-test", "checkpoint_dir": str(tmp_path / "state-files"),
        "lock_lease_s": 12.5, "min_version_wait_s": 0.5, "rte_ttl_s": 99.0,
        "split_context_ttl_s": 42.5, "split_context_bytes": 3_000_000,
        "log_level": "debug", "log_format": "text", "api_keys_file": str(keys_file),
        "api_keys": key_line(admin, {Scope.ADMIN}, "admin"),
    }
    untested = set(Settings.model_fields) - set(flags) - {"host", "port", "batching",
                                                          "metrics_auth", "checkpoint_fsync"}
    assert not untested, f"flags without a case here: {untested}"
    args = [f"--{name.replace('_', '-')}={value}" for name, value in flags.items()]
    try:
        with start_server(tmp_path, *args, "--host", "127.0.0.1", "--no-batching",
                          "--metrics-auth", "--no-checkpoint-fsync") as server:
            info = httpx.get(f"{server.url}/v1/info",
                             headers={"Authorization": f"Bearer {key}"}).json()
            metrics_closed = httpx.get(f"{server.url}/metrics").status_code
    finally:
        redis.stop()
    settings = info["settings"]
    for name, value in flags.items():
        if name == "api_keys":
            assert settings[name] == "***"
        elif name != "torch_threads":  # the harness sets it too; its own test is the value
            assert settings[name] == value, name
    assert settings["batching"] is False and settings["metrics_auth"] is True
    assert settings["checkpoint_fsync"] is False
    assert info["dtype"] == "bfloat16" and info["max_items"] == 17 and info["max_length"] == 48
    assert info["score_batch_tokens"] == 300 and info["score_batch_tokens_learned"] is False
    assert metrics_closed == 401


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--dtype", "float64", "invalid choice: 'float64'"),
    ("--port", "70000", "--port: Input should be less than or equal to 65535"),
    ("--max-items", "0", "--max-items: Input should be greater than 0"),
    ("--log-level", "loud", "invalid choice: 'loud'"),
])
def test_bad_values_name_the_flag(flag: str, value: str, message: str) -> None:
    result = _serve(flag, value)
    assert result.returncode == 2
    assert message in result.stderr


def test_a_busy_port_fails_before_the_model_loads() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        result = _serve("--port", str(port), "--log-format", "text")
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "loading backbone" not in result.stderr
    assert time.monotonic() - started < 60  # a guard against hanging, not a speed claim


def test_help_documents_every_flag() -> None:
    result = subprocess.run([sys.executable, "-m", "r2m_service.cli", "serve", "--help"],
                            capture_output=True, text=True, check=True)
    for name, field in Settings.model_fields.items():
        assert f"--{name.replace('_', '-')}" in result.stdout
        assert field.description, f"{name} has no help text"
    assert "{float32,float16,bfloat16}" in result.stdout


def test_a_launched_servers_environment_adds_and_removes_variables(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("R2M_MAX_ITEMS", "7")
    monkeypatch.setenv("R2M_DEVICE", "cpu")
    env = server_environment({"R2M_MAX_ITEMS": None, "R2M_PORT": "9"})
    assert "R2M_MAX_ITEMS" not in env  # None removes an inherited variable
    assert env["R2M_PORT"] == "9" and env["R2M_DEVICE"] == "cpu"
    assert env["PYTHONUNBUFFERED"] == "1"
