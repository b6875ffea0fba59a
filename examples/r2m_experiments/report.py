"""Results on disk: one JSON per run, then the per-arm summary (JSON + Markdown tables) that
EXPERIMENTS.md quotes.

"Final" values average the last `final_window` steps of a run (NaN steps skipped); the tables give
their mean over seeds ± the half-width of the two-sided 95% t-interval. Comparisons with the
static RM are paired by seed (same SFT policy, prompts and held-out pairs), which removes the
seed-to-seed spread the arms share.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from .arms import ARMS, SWEEP_ARMS
from .metrics import interval95, nanmean

RUN_SCHEMA = "r2m-experiment-run/v2"
SUMMARY_SCHEMA = "r2m-experiment-summary/v2"
FINAL_KEYS = ("gold_reward", "proxy_reward", "kl", "length", "sign_off_rate", "spearman",
              "discrepancy", "heldout_accuracy", "heldout_cue_accuracy", "heldout_discrepancy",
              "reward_std", "feedback_std", "rte_std", "feedback_share", "scale_drift", "o_norm",
              "head_norm")
BASELINE = "vanilla"
# (key, title, how a paired comparison with the static RM is expressed)
COMPARED = (("gold_reward", "gold", "difference"),
            ("heldout_accuracy", "held-out accuracy", "difference"),
            ("heldout_cue_accuracy", "cue-pair accuracy", "difference"),
            ("heldout_discrepancy", "held-out discrepancy", "relative"),
            ("discrepancy", "on-policy discrepancy", "relative"))


def finals(series: Mapping[str, Sequence[float]], window: int) -> dict[str, float]:
    """Each metric averaged over the last `window` steps of one run."""
    return {key: nanmean(series[key][-window:]) for key in FINAL_KEYS if key in series}


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
        "series": series, "final": finals(series, window),
        "initial": {key: series[key][0] for key in FINAL_KEYS if key in series},
        "wall_time_s": wall_time_s, "last_step_samples": result["last_step_samples"],
    }


def write_json(path: Path, document: object) -> Path:
    """Strict JSON (NaN written as null), human-readable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite(document), indent=1, ensure_ascii=False) + "\n")
    return path


def _value(record: Mapping[str, object], part: str, key: str) -> float:
    value = record[part].get(key)
    return math.nan if value is None else value


def summarize(records: Sequence[Mapping[str, object]]) -> dict[str, object]:
    """Per arm (in ARMS order): mean and 95% half-width over seeds of every final metric and of
    its step-0 value, the online rate, and the paired comparisons with the static RM."""
    arms: dict[str, object] = {}
    by_arm = {name: sorted((r for r in records if r["arm"] == name), key=lambda r: r["seed"])
              for name in ARMS}
    for name, runs in by_arm.items():
        if not runs:
            continue
        entry: dict[str, object] = {"label": ARMS[name].label,
                                    "seeds": [r["seed"] for r in runs],
                                    "learning_rate": runs[0]["run"]["config"]["learning_rate"]}
        for key in FINAL_KEYS:
            per_seed = [_value(r, "final", key) for r in runs]
            mean, half = interval95(per_seed)
            initial, initial_half = interval95([_value(r, "initial", key) for r in runs])
            entry[key] = {"mean": mean, "ci95": half, "per_seed": per_seed,
                          "initial": initial, "initial_ci95": initial_half}
        if name != BASELINE and by_arm.get(BASELINE):
            entry["vs_static"] = _paired(runs, by_arm[BASELINE])
        arms[name] = entry
    return {"schema": SUMMARY_SCHEMA, "arms": arms}


def _paired(runs: Sequence[Mapping[str, object]], baseline: Sequence[Mapping[str, object]]
            ) -> dict[str, object]:
    """Per compared metric, over the seeds both arms ran: the arm minus the static RM
    ("difference") or the arm's relative change, arm / static − 1 ("relative")."""
    base = {r["seed"]: r for r in baseline}
    common = [r for r in runs if r["seed"] in base]
    out: dict[str, object] = {"seeds": [r["seed"] for r in common]}
    for key, _, kind in COMPARED:
        values = []
        for r in common:
            arm, static = _value(r, "final", key), _value(base[r["seed"]], "final", key)
            values.append(arm - static if kind == "difference" else arm / static - 1.0)
        mean, half = interval95(values)
        out[key] = {"kind": kind, "mean": mean, "ci95": half, "per_seed": values}
    return out


def _cell(stat: Mapping[str, float], digits: int = 3) -> str:
    mean, half = stat["mean"], stat["ci95"]
    if not math.isfinite(mean):
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {half:.{digits}f}" if math.isfinite(half) else "")


ARM_COLUMNS = (("gold_reward", "gold ↑"), ("kl", "KL"), ("sign_off_rate", "sign-off"),
               ("heldout_accuracy", "held-out acc ↑"), ("heldout_cue_accuracy", "cue acc ↑"),
               ("heldout_discrepancy", "held-out disc ↓"), ("discrepancy", "on-policy disc ↓"),
               ("feedback_share", "feedback share"), ("scale_drift", "scale drift"))


def arms_table(summary: Mapping[str, object], names: Sequence[str] | None = None) -> str:
    """Final metrics per arm, mean ± 95% half-width over seeds."""
    header = "| arm | seeds | " + " | ".join(title for _, title in ARM_COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(ARM_COLUMNS) + 2)]
    for name, entry in summary["arms"].items():
        if names is not None and name not in names:
            continue
        cells = [_cell(entry[key], 2 if key in ("kl", "scale_drift") else 3)
                 for key, _ in ARM_COLUMNS]
        lines.append(f"| {entry['label']} | {len(entry['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sweep_table(summary: Mapping[str, object], steps: int) -> str:
    """R2M at each online rate, slowest first, with lr·T and what the module did."""
    columns = (("gold_reward", "gold ↑"), ("kl", "KL"), ("heldout_accuracy", "held-out acc ↑"),
               ("heldout_cue_accuracy", "cue acc ↑"), ("heldout_discrepancy", "held-out disc ↓"),
               ("feedback_share", "feedback share"), ("scale_drift", "scale drift"),
               ("o_norm", "‖W_o‖"))
    entries = sorted((summary["arms"][n] for n in SWEEP_ARMS if n in summary["arms"]),
                     key=lambda e: e["learning_rate"])
    lines = ["| online lr | lr·T | seeds | " + " | ".join(t for _, t in columns) + " |",
             "|" + "---|" * (len(columns) + 3)]
    for e in entries:
        lr = e["learning_rate"]
        cells = [_cell(e[key], 2 if key in ("kl", "scale_drift") else 3) for key, _ in columns]
        lines.append(f"| {lr:.0e} | {lr * steps:.1e} | {len(e['seeds'])} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison_table(summary: Mapping[str, object]) -> str:
    """Each arm against the static RM, paired by seed: differences (gold, accuracies) and
    relative changes (discrepancies, negative = lower than the static RM's)."""
    titles = [f"{title} ({'Δ' if kind == 'difference' else 'rel. Δ'})"
              for _, title, kind in COMPARED]
    lines = ["| arm vs static RM | seeds | " + " | ".join(titles) + " |",
             "|" + "---|" * (len(COMPARED) + 2)]
    for entry in summary["arms"].values():
        paired = entry.get("vs_static")
        if paired is None:
            continue
        cells = []
        for key, _, kind in COMPARED:
            stat = paired[key]
            if kind == "relative":
                stat = {"mean": 100 * stat["mean"], "ci95": 100 * stat["ci95"]}
                cells.append(_cell(stat, 1) + " %" if math.isfinite(stat["mean"]) else "–")
            else:
                cells.append(_cell(stat, 3))
        lines.append(f"| {entry['label']} | {len(paired['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def timing_table(timing: Mapping[str, object]) -> str:
    """The overhead passes: mean step time per arm, the parts R2M adds, and the overhead over
    vanilla (whole step and attributed; per pass in brackets)."""
    lines = ["| arm | step (ms) | hidden states (ms) | module in scoring (ms) | R2M update (ms) | "
             "whole-step overhead | attributed overhead |", "|---|---|---|---|---|---|---|"]
    for name, t in timing["summary"].items():
        cells = [f"{1000 * t[key]:.1f}" for key in ("step_s", "hidden_states_s",
                                                     "module_score_s", "r2m_update_s")]
        for key in ("overhead", "attributed"):
            passes = ", ".join(f"{100 * r:+.1f}%" for r in t[f"{key}_per_pass"])
            cells.append(f"{100 * t[key]:+.1f}% ({passes})")
        lines.append(f"| {ARMS[name].label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _finite(value: object) -> object:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
