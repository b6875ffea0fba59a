"""The experiment CLI end to end: `--mode quick` exactly as CI runs it (its own servers, every arm,
the timing passes) writes a JSON per run with every series, a summary with every arm and metric,
Markdown tables and PNG plots; and runs are deleted from a service given by `--url`."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from examples.r2m_experiments.arms import ARMS
from examples.r2m_experiments.cli import config_from, parse_args
from examples.r2m_experiments.config import PRESETS
from examples.r2m_experiments.loop import DIAGNOSTICS, PHASES
from examples.r2m_experiments.report import (
    COMPARED,
    FINAL_KEYS,
    RUN_SCHEMA,
    SUMMARY_SCHEMA,
)
from r2m_client import R2MClient, RunNotFoundError

ROOT = Path(__file__).resolve().parents[1]
QUICK = PRESETS["quick"]
SERIES = ("proxy_reward", "gold_reward", "kl", "length", "spearman", "discrepancy",
          "sign_off_rate", "omega", "heldout_accuracy", "heldout_cue_accuracy",
          "heldout_discrepancy", *DIAGNOSTICS, *(f"time_{p}" for p in PHASES))
# Figures the service has no value for in some arms (e.g. a feedback share without spread).
MAY_BE_NULL = {"feedback_share", "scale_drift"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _experiment(*args: str, timeout: float) -> None:
    command = [sys.executable, "-m", "examples.r2m_experiments", "--no-progress", *args]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("experiments")
    _experiment("--mode", "quick", "--out", str(out), timeout=540)
    return out


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


@pytest.mark.parametrize("arm", list(ARMS))
def test_every_arm_has_a_run_with_every_series(quick_run: Path, arm: str) -> None:
    record = json.loads((quick_run / "runs" / f"{arm}-seed0.json").read_text())
    assert record["schema"] == RUN_SCHEMA and record["arm"] == arm and record["seed"] == 0
    assert record["settings"]["steps"] == QUICK.steps
    assert record["run"]["config"]["total_steps"] == QUICK.steps
    series = record["series"]
    for key in SERIES:
        assert len(series[key]) == QUICK.steps, key
        allowed = (lambda v: v is None or _finite(v)) if key in MAY_BE_NULL else _finite
        assert all(allowed(v) for v in series[key]), key
    assert series["omega"][0] == 1.0, "at step 0 R2M is the vanilla RM"
    assert all(0.0 <= v <= 1.0 for v in series["heldout_accuracy"])
    spec = ARMS[arm]
    assert all(_finite(v) for v in series["rm_loss"]) == spec.grebt
    assert all(_finite(v) for v in series["gold_loss"]) == (spec.gold_pairs > 0)
    if spec.feedback == "none":
        assert series["feedback_share"] == [0.0] * QUICK.steps, "ϕ(H_last) has no feedback"
    assert record["fit_losses"]["values"] and _finite(record["fit_losses"]["last"])


def test_summary_has_every_arm_and_metric(quick_run: Path) -> None:
    summary = json.loads((quick_run / "summary.json").read_text())
    assert summary["schema"] == SUMMARY_SCHEMA
    assert list(summary["arms"]) == list(ARMS)
    for name, entry in summary["arms"].items():
        for key in FINAL_KEYS:
            assert set(entry[key]) >= {"mean", "ci95", "per_seed", "initial"}, (name, key)
        assert _finite(entry["gold_reward"]["mean"]) and _finite(entry["heldout_accuracy"]["mean"])
        if name != "vanilla":
            assert {key for key, _, _ in COMPARED} <= set(entry["vs_static"]), name
    timing = summary["timing"]["summary"]
    assert list(timing) == list(QUICK.timing_arms)
    assert timing["vanilla"]["overhead"] == 0.0
    assert all(t["step_s"] > 0 for t in timing.values())
    assert timing["r2m"]["r2m_update_s"] > 0 and timing["vanilla"]["r2m_update_s"] == 0
    assert timing["r2m"]["module_score_s"] > 0, "read from the service's own /metrics"
    assert timing["vanilla"]["attributed"] == 0.0 and timing["r2m"]["attributed"] > 0


def test_tables_and_plots(quick_run: Path) -> None:
    markdown = (quick_run / "results.md").read_text()
    for arm in ARMS.values():
        assert f"| {arm.label} | 1 |" in markdown, arm.label
    assert markdown.count("| 1e-06 |") == 1, "the sweep table has one row per rate"
    assert "attributed overhead" in markdown
    for name in ("frontier", "heldout", "diagnostics", "gold_vs_proxy", "final_gold"):
        assert (quick_run / f"{name}.png").read_bytes()[:8] == PNG_MAGIC
        assert f"({name}.png)" in markdown


def test_runs_are_deleted_from_the_service(default_server, tmp_path: Path) -> None:
    _experiment("--mode", "quick", "--url", default_server.url, "--arms", "r2m_gold2",
                "--steps", "2", "--sft-steps", "10", "--fit-steps", "2", "--out",
                str(tmp_path), timeout=300)
    record = json.loads((tmp_path / "runs" / "r2m_gold2-seed0.json").read_text())
    with R2MClient(default_server.url) as client, pytest.raises(RunNotFoundError):
        client.get_run(record["run"]["run_id"])
    assert not list(tmp_path.rglob("timing-*.log")), "no timing against a given --url"


def test_cli_overrides_and_validation() -> None:
    config = config_from(parse_args(["--mode", "full", "--arms", "r2m", "--steps", "7",
                                     "--online-lr", "1e-5"]))
    assert config.mode == "full" and config.arms == ("r2m",) and config.steps == 7
    assert config.online_lr == 1e-5
    assert config.seeds == (0, 1, 2, 3, 4), "untouched preset values stay"
    with pytest.raises(ValueError, match="unknown arm"):
        config_from(parse_args(["--arms", "r2m,bogus"]))
