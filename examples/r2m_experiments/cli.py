"""`python -m examples.r2m_experiments`: run the arms × seeds, then the timing passes; write JSON,
Markdown and PNGs.

Without `--url` it starts its own `r2m serve` processes (embedded all-MiniLM-L6-v2 backbone
unless `--backbone`) on free loopback ports and stops them at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import torch

from .arms import ARMS, select_arms
from .config import PRESETS, ExperimentConfig
from .plots import (
    plot_diagnostics,
    plot_final_gold,
    plot_frontier,
    plot_gold_vs_proxy,
    plot_heldout,
)
from .report import (
    arms_table,
    comparison_table,
    summarize,
    sweep_table,
    timing_table,
    write_json,
)
from .runner import Service, jobs_for, run_jobs
from .timing import measure_overhead

T = TypeVar("T")
META_KEYS = ("settings", "command", "wall_time_s", "machine", "timing")


def _csv(kind: Callable[[str], T]) -> Callable[[str], tuple[T, ...]]:
    """argparse type for a comma-separated list."""
    return lambda text: tuple(kind(part) for part in text.split(",") if part)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples.r2m_experiments",
        description="R2M's experiments in miniature: RLOO through an r2m service.")
    parser.add_argument("--mode", choices=sorted(PRESETS), default="quick",
                        help="preset: quick (every arm, 1 seed, a few steps) or full")
    parser.add_argument("--arms", type=_csv(str), help=f"comma list of {', '.join(ARMS)}")
    parser.add_argument("--seeds", type=_csv(int), help="seeds of the headline arms, e.g. 0,1,2")
    parser.add_argument("--secondary-seeds", type=_csv(int), dest="secondary_seeds",
                        help="seeds of the other arms")
    parser.add_argument("--steps", type=int, help="RL steps per run (T)")
    parser.add_argument("--prompts", type=int, dest="prompts_per_step", help="prompts per step (n)")
    parser.add_argument("--k", type=int, dest="responses_per_prompt", help="responses per prompt")
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--sft-steps", type=int)
    parser.add_argument("--fit-steps", type=int, help="BT updates that fit the proxy head")
    parser.add_argument("--fit-lr", type=float, help="learning rate of the head fit and of "
                        "gold-labelled pairs (sent per request)")
    parser.add_argument("--online-lr", type=float,
                        help="the runs' online learning rate (R2M and its ablations)")
    parser.add_argument("--eval-pairs", type=int, help="held-out natural pairs")
    parser.add_argument("--eval-cue-pairs", type=int, help="held-out cue-only pairs")
    parser.add_argument("--final-window", type=int, help="steps averaged into final metrics")
    parser.add_argument("--timing-steps", type=int, help="RL steps of each timing run")
    parser.add_argument("--timing-repeats", type=int, help="timing passes (0: none)")
    parser.add_argument("--out", type=Path, help="output dir (default examples/results/<mode>)")
    parser.add_argument("--url", help="use this running r2m service (no timing passes: they "
                        "need fresh servers)")
    parser.add_argument("--backbone", help="backbone dir for the services this command starts")
    parser.add_argument("--workers", type=int, default=1,
                        help="runs in parallel, each worker with its own r2m serve")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--resume", action="store_true",
                        help="skip runs whose JSON under --out has the same settings")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--replot", action="store_true",
                        help="only rebuild summary, tables and plots from the JSON under --out")
    return parser.parse_args(argv)


def config_from(args: argparse.Namespace) -> ExperimentConfig:
    """The preset with every given override applied (arms validated)."""
    config = PRESETS[args.mode]
    overrides = {key: getattr(args, key) for key in (
        "arms", "seeds", "secondary_seeds", "steps", "prompts_per_step", "responses_per_prompt",
        "max_new_tokens", "sft_steps", "fit_steps", "fit_lr", "online_lr", "eval_pairs",
        "eval_cue_pairs", "final_window", "timing_steps", "timing_repeats")
        if getattr(args, key) is not None}
    config = config.replace(**overrides)
    select_arms(config.arms)
    return config


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    config = config_from(args)
    out = args.out or Path("examples/results") / config.mode
    if args.replot:
        return _replot(out)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    service = Service(args.url, args.backbone)
    records = run_jobs(config, jobs_for(config), out, service, workers=args.workers,
                       threads=args.threads, resume=args.resume, progress=not args.no_progress)
    timing = None
    if not args.url and config.timing_repeats > 0:
        timing = measure_overhead(config, out, args.backbone)
    meta = {"settings": config.to_json(), "command": _command(argv),
            "wall_time_s": time.perf_counter() - started, "machine": _machine(args),
            "timing": timing}
    print(write_outputs(records, meta, out))
    return 0


def write_outputs(records: Sequence[dict[str, object]], meta: dict[str, object],
                  out: Path) -> str:
    """summary.json, the PNGs and results.md; returns the Markdown."""
    summary = {**summarize(records), **meta,
               "service": records[0]["service"] if records else None}
    write_json(out / "summary.json", summary)
    plots = [plot_frontier(records, out / "frontier.png"),
             plot_heldout(records, out / "heldout.png"),
             plot_diagnostics(records, out / "diagnostics.png"),
             plot_gold_vs_proxy(records, out / "gold_vs_proxy.png"),
             plot_final_gold(summary, out / "final_gold.png")]
    markdown = results_markdown(summary, plots, out)
    (out / "results.md").write_text(markdown)
    return markdown


def _replot(out: Path) -> int:
    """Rebuild summary, plots and tables from `out/runs/*.json` and the old summary's meta
    (or, after an interrupted sweep, the runs' own)."""
    records = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    summary = out / "summary.json"
    if summary.exists():
        old = json.loads(summary.read_text())
        meta = {key: old.get(key) for key in META_KEYS}
    else:  # an interrupted sweep: what the runs themselves record
        meta = {"settings": records[0]["settings"], "command": "(interrupted; --replot)",
                "wall_time_s": sum(r["wall_time_s"] for r in records),
                "machine": {"cpus": os.cpu_count(), "processor": _cpu_model(), "workers": "?"},
                "timing": None}
    print(write_outputs(records, meta, out))
    return 0


def results_markdown(summary: dict[str, object], plots: Sequence[Path], out: Path) -> str:
    settings = summary["settings"]
    machine = summary["machine"]
    lines = [
        f"# r2m experiments ({settings['mode']} mode)", "",
        f"Command: `{summary['command']}`  ",
        f"Wall time of this invocation: {summary['wall_time_s'] / 60:.1f} min on "
        f"{machine['cpus']} CPUs ({machine['processor']}, shared with other work), "
        f"{machine['workers']} worker(s); runs resumed from an earlier one are not counted.  ",
        f"Seeds: {settings['seeds']} (headline arms), {settings['secondary_seeds']} (others); "
        f"{settings['steps']} RL steps × {settings['prompts_per_step']} prompts × "
        f"{settings['responses_per_prompt']} responses; fit {settings['fit_steps']} × "
        f"{settings['fit_batch_pairs']} pairs at lr {settings['fit_lr']:g}; online lr "
        f"{settings['online_lr']:g}; backbone {summary['service']['backbone']}.", "",
        f"Final = mean of the last {settings['final_window']} steps of a run; cells are the mean "
        "over seeds ± the half-width of the 95% t-interval. Held-out: "
        f"{settings['eval_pairs']} natural + {settings['eval_cue_pairs']} cue-only gold-labelled "
        "pairs per seed, scored every step.", "",
        "## Every arm", "", arms_table(summary), "",
        "## Online-lr sweep (R2M)", "", sweep_table(summary, settings["steps"]), "",
        "## Against the static RM, paired by seed", "",
        "Δ: arm − static RM. rel. Δ: arm ÷ static RM − 1 (negative: lower discrepancy).", "",
        comparison_table(summary), "",
    ]
    if summary.get("timing"):
        timing = summary["timing"]
        lines += ["## Time overhead (fresh server per run, measurement off)", "",
                  f"Seed {timing['seed']}, {timing['steps']} steps per run, "
                  f"{len(timing['passes'])} pass(es) in alternating order.", "",
                  timing_table(timing), ""]
    lines += [f"![{p.stem}]({p.relative_to(out)})" for p in plots]
    return "\n".join(lines) + "\n"


def _machine(args: argparse.Namespace) -> dict[str, object]:
    return {"cpus": os.cpu_count(), "processor": _cpu_model(),
            "python": platform.python_version(), "torch": torch.__version__,
            "workers": args.workers, "threads": args.threads}


def _cpu_model() -> str:
    """The CPU's model name (Linux), else what `platform` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _command(argv: Sequence[str] | None) -> str:
    args = sys.argv[1:] if argv is None else list(argv)
    return "python -m examples.r2m_experiments " + shlex.join(args)
