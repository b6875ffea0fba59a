"""The experiment CLI end to end against a real server: a couple of RL steps for two arms,
valid JSON with every series, a Markdown table and PNG plots; the runs are deleted afterwards."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from examples.r2m_experiments.cli import config_from, parse_args
from examples.r2m_experiments.report import FINAL_KEYS, RUN_SCHEMA, SUMMARY_SCHEMA
from r2m_client import R2MClient, RunNotFoundError

ROOT = Path(__file__).resolve().parents[1]
SERIES = ("proxy_reward", "gold_reward", "kl", "length", "spearman", "discrepancy",
          "sign_off_rate", "omega", "time_generation", "time_scoring", "time_policy_update",
          "time_r2m_update")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STEPS = 3


@pytest.fixture(scope="module")
def quick_run(default_server, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("experiments")
    command = [sys.executable, "-m", "examples.r2m_experiments", "--mode", "quick",
               "--url", default_server.url, "--arms", "vanilla,r2m", "--seeds", "0",
               "--steps", str(STEPS), "--prompts", "2", "--k", "2", "--max-new-tokens", "12",
               "--sft-steps", "20", "--fit-steps", "4", "--final-window", "2",
               "--out", str(out), "--no-progress"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


@pytest.mark.parametrize("arm", ["vanilla", "r2m"])
def test_run_json_has_every_series(quick_run: Path, arm: str) -> None:
    record = json.loads((quick_run / "runs" / f"{arm}-seed0.json").read_text())
    assert record["schema"] == RUN_SCHEMA
    assert record["arm"] == arm and record["seed"] == 0
    assert record["settings"]["steps"] == STEPS and record["settings"]["arms"] == ["vanilla", "r2m"]
    assert record["service"]["backbone_kind"] and record["run"]["config"]["total_steps"] == STEPS
    series = record["series"]
    for key in SERIES:
        assert len(series[key]) == STEPS, key
        assert all(_finite(v) for v in series[key]), key
    assert series["omega"][0] == 1.0, "at step 0 R2M is the vanilla RM"
    assert all(-1.0 <= v <= 1.0 for v in series["spearman"])
    assert all(_finite(record["final"][key]) for key in FINAL_KEYS)
    losses = record["fit_losses"]["values"]
    assert losses and all(_finite(v) for v in losses)
    rm_losses = series["rm_loss"]
    if arm == "r2m":
        assert all(_finite(v) for v in rm_losses) and all(t > 0 for t in series["time_r2m_update"])
    else:
        assert rm_losses == [None] * STEPS, "the static RM is never updated (NaN → null)"
    assert record["last_step_samples"][0]["prompt"].startswith("review of the ")


def test_summary_table_and_plots(quick_run: Path) -> None:
    summary = json.loads((quick_run / "summary.json").read_text())
    assert summary["schema"] == SUMMARY_SCHEMA
    assert list(summary["arms"]) == ["vanilla", "r2m"]
    for entry in summary["arms"].values():
        assert all(_finite(entry[key]["mean"]) for key in FINAL_KEYS)
        assert 0.0 <= entry["time_per_step_s"]["r2m_update_share"] < 1.0
    table = (quick_run / "results.md").read_text()
    assert "| Static RM (vanilla RLOO) | 1 |" in table and "| R2M | 1 |" in table
    for name in ("gold_vs_proxy", "discrepancy", "final_gold"):
        png = quick_run / f"{name}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC
        assert f"({name}.png)" in table


def test_runs_are_deleted_from_the_service(quick_run: Path, default_server) -> None:
    record = json.loads((quick_run / "runs" / "r2m-seed0.json").read_text())
    with R2MClient(default_server.url) as client, pytest.raises(RunNotFoundError):
        client.get_run(record["run"]["run_id"])


def test_cli_overrides_and_validation() -> None:
    config = config_from(parse_args(["--mode", "full", "--arms", "r2m", "--steps", "7"]))
    assert config.mode == "full" and config.arms == ("r2m",) and config.steps == 7
    assert config.seeds == (0, 1, 2), "untouched preset values stay"
    with pytest.raises(ValueError, match="unknown arm"):
        config_from(parse_args(["--arms", "r2m,bogus"]))
