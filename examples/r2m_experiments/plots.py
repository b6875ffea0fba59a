"""The figures of EXPERIMENTS.md, drawn from the run records (matplotlib, Agg backend):

- `gold_vs_proxy.png`: per arm, gold (left axis) and proxy (right axis) reward over RL steps,
  mean over seeds with a ±1 std band (each arm's proxy has its own, drifting scale);
- `frontier.png`: the gold-vs-KL frontier — each arm's seed-mean path through (KL, gold) over
  the run, the paper's way of comparing reward hacking at equal distance from the reference;
- `heldout.png`: the RM on the fixed held-out pairs over steps — accuracy, cue-pair accuracy and
  proxy–gold discrepancy — and the on-policy discrepancy;
- `diagnostics.png`: the service's branch diagnostics over steps — feedback share of the reward
  variance, reward-scale drift, ‖W_o‖ and ‖ϕ‖;
- `final_gold.png`: final gold reward per arm, mean ± 95% interval, seeds as dots.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from cycler import cycler

from .arms import ARMS, SWEEP_ARMS
from .gold import TOPIC_BONUS

DPI = 90
SMOOTHING = 5  # steps in the moving average of the noisy per-step curves
Records = Sequence[Mapping[str, object]]
# Arms drawn in the per-step figures (all arms would be unreadable; the tables have them all).
PAPER_ARMS = ("vanilla", *SWEEP_ARMS, "r2m_frozen", "r2m_noise", "iterative_head")
# Up to 20 distinguishable lines: the ten default colours solid, then dashed.
LINE_STYLES = cycler(linestyle=["-", "--"]) * cycler(color=plt.get_cmap("tab10").colors)
GOLD_ARMS = ("vanilla", "r2m", "iterative_head", "r2m_gold8", "r2m_grebt_gold8", "head_gold8",
             "head_grebt_gold8")


def _by_arm(records: Records, names: Sequence[str] | None = None
            ) -> dict[str, list[Mapping[str, object]]]:
    grouped: dict[str, list[Mapping[str, object]]] = {}
    for name in ARMS:
        runs = [r for r in records if r["arm"] == name]
        if runs and (names is None or name in names):
            grouped[name] = runs
    return grouped


def _column(runs: Sequence[Mapping[str, object]], key: str) -> list[list[float]]:
    """Per step, the seeds' values (JSON null → NaN)."""
    rows = zip(*(r["series"][key] for r in runs), strict=True)
    return [[math.nan if v is None else v for v in row] for row in rows]


def _mean_band(runs: Sequence[Mapping[str, object]], key: str
               ) -> tuple[list[float], list[float], list[float]]:
    """Mean and std over seeds of one series (runs share their step count)."""
    columns = _column(runs, key)
    means = [sum(c) / len(c) for c in columns]
    stds = [math.sqrt(sum((v - m) ** 2 for v in c) / len(c))
            for c, m in zip(columns, means, strict=True)]
    return list(range(len(means))), means, stds


def _band(ax: plt.Axes, runs: Sequence[Mapping[str, object]], key: str, **style: object) -> None:
    steps, means, stds = _mean_band(runs, key)
    line, = ax.plot(steps, means, **style)
    ax.fill_between(steps, [m - s for m, s in zip(means, stds, strict=True)],
                    [m + s for m, s in zip(means, stds, strict=True)], color=line.get_color(),
                    alpha=0.15, linewidth=0)


def plot_gold_vs_proxy(records: Records, path: Path) -> Path:
    grouped = _by_arm(records)
    cols = min(5, len(grouped))
    rows = math.ceil(len(grouped) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.5 * rows), squeeze=False,
                             sharex=True, sharey=True)
    for ax, (name, runs) in zip(axes.flat, grouped.items(), strict=False):
        _band(ax, runs, "gold_reward", color="tab:green", label="gold")
        twin = ax.twinx()
        _band(twin, runs, "proxy_reward", color="tab:purple", linestyle="--", label="proxy")
        twin.tick_params(axis="y", labelcolor="tab:purple", labelsize=6)
        ax.set_title(ARMS[name].label, fontsize=8)
        ax.axhline(1.0 + TOPIC_BONUS, color="grey", linewidth=0.6, linestyle=":")
        ax.tick_params(labelsize=6)
    for ax in axes.flat[len(grouped):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("gold reward", color="tab:green", fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("RL step", fontsize=7)
    fig.suptitle("Gold (green, left axis) vs proxy (purple dashed, right axis); mean ± std over "
                 f"seeds; dotted: best possible gold ({1.0 + TOPIC_BONUS:g})", fontsize=9)
    return _save(fig, path)


def plot_frontier(records: Records, path: Path) -> Path:
    """Gold against KL: the paper-arm panel and the gold-label panel."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4), sharey=True)
    for ax, names, title in ((axes[0], PAPER_ARMS, "paper arms and the online-lr sweep"),
                             (axes[1], GOLD_ARMS, "8 gold-labelled pairs per step")):
        ax.set_prop_cycle(LINE_STYLES)
        for name, runs in _by_arm(records, names).items():
            _, kl, _ = _mean_band(runs, "kl")
            _, gold, _ = _mean_band(runs, "gold_reward")
            line, = ax.plot(_smooth(kl, SMOOTHING), _smooth(gold, SMOOTHING),
                            label=ARMS[name].label, linewidth=1.2)
            ax.scatter(_smooth(kl, SMOOTHING)[-1:], _smooth(gold, SMOOTHING)[-1:],
                       color=line.get_color(), s=14, zorder=3)
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlabel("KL to the SFT reference (nats, symlog)", fontsize=8)
        ax.set_title(title, fontsize=9)
        if ax.get_legend_handles_labels()[1]:  # a run of a few arms may draw none here
            ax.legend(fontsize=6)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("gold reward", fontsize=8)
    fig.suptitle(f"Gold-vs-KL frontier: seed means, trailing {SMOOTHING}-step average; dots: "
                 "the last step", fontsize=9)
    return _save(fig, path)


def _lines(records: Records, path: Path, panels: Sequence[tuple[str, str, str]],
           names: Sequence[str], title: str, log: Sequence[str] = ()) -> Path:
    """One panel per (key, title, y-label), a seed-mean line per arm."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    grouped = _by_arm(records, names)
    for ax, (key, panel_title, ylabel) in zip(axes, panels, strict=True):
        ax.set_prop_cycle(LINE_STYLES)
        for name, runs in grouped.items():
            _, means, _ = _mean_band(runs, key)
            ax.plot(_smooth(means, SMOOTHING), label=ARMS[name].label, linewidth=1.1)
        if key in log:
            ax.set_yscale("log")
        ax.set_title(panel_title, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=7)
        ax.set_xlabel("RL step", fontsize=7)
        ax.tick_params(labelsize=7)
    handles, labels = axes[0].get_legend_handles_labels()
    if labels:  # a run of a few arms may draw none here
        fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=6,
                   frameon=False)
    fig.suptitle(f"{title}; seed means, trailing {SMOOTHING}-step average", fontsize=9)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return _save(fig, path, layout=False)


def plot_heldout(records: Records, path: Path) -> Path:
    panels = (("heldout_accuracy", "held-out accuracy (gold-labelled pairs)", "accuracy"),
              ("heldout_cue_accuracy", "pairs differing only in the sign-off", "accuracy"),
              ("heldout_discrepancy", "held-out discrepancy E|z(proxy) − z(gold)|", "↓"),
              ("discrepancy", "on-policy discrepancy", "↓"))
    return _lines(records, path, panels, (*PAPER_ARMS, *GOLD_ARMS[3:]),
                  "The RM against gold on the fixed held-out pairs")


def plot_diagnostics(records: Records, path: Path) -> Path:
    panels = (("feedback_share", "feedback branch's share of reward variance", "share"),
              ("scale_drift", "reward std ÷ step-0 reward std", "×"),
              ("o_norm", "‖W_o‖", "norm"), ("head_norm", "‖ϕ‖ (weight)", "norm"))
    return _lines(records, path, panels, (*SWEEP_ARMS, "r2m_noise", "r2m_zero_o",
                                          "r2m_grebt_gold8"),
                  "Branch diagnostics from the service (GET /v1/runs/{id})",
                  log=("scale_drift",))


def _smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average (shorter at the start)."""
    return [sum(values[max(0, i + 1 - window):i + 1]) / (i + 1 - max(0, i + 1 - window))
            for i in range(len(values))]


def plot_final_gold(summary: Mapping[str, object], path: Path) -> Path:
    arms = summary["arms"]
    names = list(arms)
    means = [arms[n]["gold_reward"]["mean"] for n in names]
    halves = [arms[n]["gold_reward"]["ci95"] for n in names]
    fig, ax = plt.subplots(figsize=(max(8, 0.55 * len(names)), 3.8))
    ax.bar(range(len(names)), means, yerr=[h if math.isfinite(h) else 0 for h in halves],
           capsize=3, color="tab:green", alpha=0.6)
    for i, n in enumerate(names):
        seeds = arms[n]["gold_reward"]["per_seed"]
        ax.scatter([i] * len(seeds), seeds, color="black", s=8, zorder=3)
    initial = sum(arms[n]["gold_reward"]["initial"] for n in names) / len(names)
    ax.axhline(initial, color="grey", linestyle="--", linewidth=0.8,
               label=f"SFT policy (step 0): {initial:.2f}")
    ax.set_xticks(range(len(names)), [arms[n]["label"] for n in names], rotation=35,
                  ha="right", fontsize=7)
    ax.set_ylabel("final gold reward", fontsize=8)
    ax.set_title("Final gold reward per arm (mean ± 95% interval over seeds; dots: seeds)",
                 fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)


def _save(fig: plt.Figure, path: Path, *, layout: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if layout:
        fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
