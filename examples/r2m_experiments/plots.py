"""The three figures of EXPERIMENTS.md, drawn from the run records (matplotlib, Agg backend):

- `gold_vs_proxy.png`: per arm, gold (left axis) and proxy (right axis) reward over RL steps,
  mean over seeds with a ±1 std band. Proxy scales differ by arm (each arm's RM drifts on its own),
  so each panel has its own proxy axis.
- `discrepancy.png`: E|z(proxy) − z(gold)|, the sign-off rate and the response length over
  steps, all arms (5-step moving average).
- `final_gold.png`: final gold reward per arm, mean ± std over seeds, seeds as dots.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from .arms import ARMS
from .gold import SIGN_OFF_PENALTY, TOPIC_BONUS

DPI = 90
SMOOTHING = 5  # steps in the moving average of the noisy per-step curves
Records = Sequence[Mapping[str, object]]


def _by_arm(records: Records) -> dict[str, list[Mapping[str, object]]]:
    grouped: dict[str, list[Mapping[str, object]]] = {}
    for name in ARMS:
        runs = [r for r in records if r["arm"] == name]
        if runs:
            grouped[name] = runs
    return grouped


def _mean_band(runs: Sequence[Mapping[str, object]], key: str
               ) -> tuple[list[float], list[float], list[float]]:
    """Steps, mean and std over seeds of one series (runs share their step count)."""
    columns = list(zip(*(r["series"][key] for r in runs), strict=True))
    means = [sum(c) / len(c) for c in columns]
    stds = [math.sqrt(sum((v - m) ** 2 for v in c) / len(c)) for c, m in zip(columns, means,
                                                                                strict=True)]
    return list(range(len(means))), means, stds


def _band(ax: plt.Axes, runs: Sequence[Mapping[str, object]], key: str, **style: object) -> None:
    steps, means, stds = _mean_band(runs, key)
    line, = ax.plot(steps, means, **style)
    ax.fill_between(steps, [m - s for m, s in zip(means, stds, strict=True)],
                    [m + s for m, s in zip(means, stds, strict=True)], color=line.get_color(),
                    alpha=0.15, linewidth=0)


def plot_gold_vs_proxy(records: Records, path: Path) -> Path:
    grouped = _by_arm(records)
    cols = min(4, len(grouped))
    rows = math.ceil(len(grouped) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False,
                             sharex=True, sharey=True)
    for ax, (name, runs) in zip(axes.flat, grouped.items(), strict=False):
        _band(ax, runs, "gold_reward", color="tab:green", label="gold")
        twin = ax.twinx()
        _band(twin, runs, "proxy_reward", color="tab:purple", linestyle="--", label="proxy")
        twin.tick_params(axis="y", labelcolor="tab:purple", labelsize=7)
        ax.set_title(ARMS[name].label, fontsize=9)
        ax.axhline(1.0 + TOPIC_BONUS, color="grey", linewidth=0.6, linestyle=":")
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(grouped):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("gold reward", color="tab:green", fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("RL step", fontsize=8)
    fig.suptitle("Gold (green, left axis) vs proxy (purple dashed, right axis); "
                 f"mean ± std over seeds; dotted: best possible gold "
                 f"({1.0 + TOPIC_BONUS:g})", fontsize=9)
    return _save(fig, path)


def plot_discrepancy(records: Records, path: Path) -> Path:
    """Discrepancy, sign-off rate and response length over steps (seed means, smoothed)."""
    grouped = _by_arm(records)
    panels = (("discrepancy", "discrepancy E|z(proxy) − z(gold)| (lower: proxy tracks gold)"),
              ("sign_off_rate", f"share of responses with the sign-off (gold −{SIGN_OFF_PENALTY:g}"
                                " each)"),
              ("length", "mean response length (words)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(13, 3.6))
    for ax, (key, title) in zip(axes, panels, strict=True):
        for name, runs in grouped.items():
            _, means, _ = _mean_band(runs, key)
            ax.plot(_smooth(means, SMOOTHING), label=ARMS[name].label, linewidth=1.2)
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("RL step", fontsize=8)
        ax.tick_params(labelsize=7)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=7,
               frameon=False)
    fig.suptitle(f"Mean over seeds, trailing {SMOOTHING}-step average", fontsize=9)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return _save(fig, path, layout=False)


def _smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average (shorter at the start)."""
    return [sum(values[max(0, i + 1 - window):i + 1]) / (i + 1 - max(0, i + 1 - window))
            for i in range(len(values))]


def plot_final_gold(summary: Mapping[str, object], path: Path) -> Path:
    arms = summary["arms"]
    names = list(arms)
    means = [arms[n]["gold_reward"]["mean"] for n in names]
    stds = [arms[n]["gold_reward"]["std"] for n in names]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.bar(range(len(names)), means, yerr=stds, capsize=4, color="tab:green", alpha=0.6)
    for i, n in enumerate(names):
        seeds = arms[n]["gold_reward"]["per_seed"]
        ax.scatter([i] * len(seeds), seeds, color="black", s=10, zorder=3)
    initial = sum(arms[n]["initial_gold"] for n in names) / len(names)
    ax.axhline(initial, color="grey", linestyle="--", linewidth=0.8,
               label=f"SFT policy (step 0): {initial:.2f}")
    ax.set_xticks(range(len(names)), [arms[n]["label"] for n in names], rotation=20,
                  ha="right", fontsize=8)
    ax.set_ylabel("final gold reward", fontsize=8)
    ax.set_title("Final gold reward per arm (mean ± std over seeds; dots: seeds)", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)


def _save(fig: plt.Figure, path: Path, *, layout: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if layout:
        fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
