"""Results on disk: one JSON per run, then the per-arm summary (JSON + Markdown table) that
EXPERIMENTS.md quotes. "Final" values average the last `final_window` steps of a run; the table
gives their mean ± sample std over seeds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from statistics import fmean

from .arms import ARMS
from .loop import PHASES
from .metrics import mean_std

RUN_SCHEMA = "r2m-experiment-run/v1"
SUMMARY_SCHEMA = "r2m-experiment-summary/v1"
FINAL_KEYS = ("gold_reward", "proxy_reward", "kl", "length", "spearman", "discrepancy",
              "sign_off_rate")
TABLE_COLUMNS = (("gold_reward", "gold ↑"), ("proxy_reward", "proxy"), ("kl", "KL"),
                 ("length", "length"), ("sign_off_rate", "sign-off rate"),
                 ("spearman", "proxy–gold ρ"), ("discrepancy", "discrepancy ↓"))


def finals(series: Mapping[str, Sequence[float]], window: int) -> dict[str, float]:
    """Each metric averaged over the last `window` steps of one run."""
    return {key: fmean(series[key][-window:]) for key in FINAL_KEYS}


def run_record(arm: str, seed: int, settings: Mapping[str, object], service: Mapping[str, object],
               result: Mapping[str, object], wall_time_s: float) -> dict[str, object]:
    """The JSON document of one run: what was run, against which service, and every series."""
    series = result["series"]
    window = int(settings["final_window"])
    fit = list(result["fit_losses"])
    stride = max(1, len(fit) // 100)
    return {
        "schema": RUN_SCHEMA, "arm": arm, "arm_label": ARMS[arm].label, "seed": seed,
        "settings": dict(settings), "service": dict(service), "run": result["run"],
        "fit_losses": {"stride": stride, "values": fit[::stride], "last": fit[-1] if fit else None},
        "series": series, "final": finals(series, window), "wall_time_s": wall_time_s,
        "last_step_samples": result["last_step_samples"],
    }


def write_json(path: Path, document: object) -> Path:
    """Strict JSON (NaN written as null), human-readable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite(document), indent=1, ensure_ascii=False) + "\n")
    return path


def summarize(records: Sequence[Mapping[str, object]]) -> dict[str, object]:
    """Per arm (in ARMS order): mean ± std over seeds of every final metric, the step-0 gold
    (the SFT policy), and the mean wall time per step of each phase."""
    arms: dict[str, object] = {}
    for name in [a for a in ARMS if any(r["arm"] == a for r in records)]:
        runs = [r for r in records if r["arm"] == name]
        entry: dict[str, object] = {"label": ARMS[name].label,
                                    "seeds": [r["seed"] for r in runs]}
        for key in FINAL_KEYS:
            mean, std = mean_std([r["final"][key] for r in runs])
            entry[key] = {"mean": mean, "std": std, "per_seed": [r["final"][key] for r in runs]}
        entry["initial_gold"] = fmean(r["series"]["gold_reward"][0] for r in runs)
        entry["time_per_step_s"] = _phase_times(runs)
        arms[name] = entry
    return {"schema": SUMMARY_SCHEMA, "arms": arms}


def _phase_times(runs: Sequence[Mapping[str, object]]) -> dict[str, float]:
    times = {p: fmean(t for r in runs for t in r["series"][f"time_{p}"]) for p in PHASES}
    total = sum(times.values())
    return {**times, "step": total, "r2m_update_share": times["r2m_update"] / total}


def markdown_table(summary: Mapping[str, object]) -> str:
    """Final metrics per arm, mean ± std over seeds."""
    header = "| arm | seeds | " + " | ".join(title for _, title in TABLE_COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(TABLE_COLUMNS) + 2)]
    for entry in summary["arms"].values():
        cells = [f"{entry[key]['mean']:.3f} ± {entry[key]['std']:.3f}" for key, _ in TABLE_COLUMNS]
        lines.append(f"| {entry['label']} | {len(entry['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def timing_table(summary: Mapping[str, object]) -> str:
    """Mean wall time per RL step by phase (ms) and the R2M update's share of the step."""
    titles = ("generation", "hidden states", "scoring", "policy update", "R2M update")
    lines = ["| arm | " + " | ".join(titles) + " | step | R2M update share |",
             "|" + "---|" * (len(titles) + 3)]
    for entry in summary["arms"].values():
        t = entry["time_per_step_s"]
        cells = [f"{1000 * t[p]:.1f}" for p in PHASES]
        lines.append(f"| {entry['label']} | " + " | ".join(cells)
                     + f" | {1000 * t['step']:.1f} | {100 * t['r2m_update_share']:.1f}% |")
    return "\n".join(lines)


def _finite(value: object) -> object:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
