"""`python -m examples.r2m_experiments`: run the arms × seeds, write JSON, Markdown and PNGs.

Without `--url` it starts its own `r2m serve` (embedded all-MiniLM-L6-v2 backbone unless
`--backbone`) on a free loopback port and stops it at the end.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import torch
from tqdm import tqdm

from r2m_client import R2MClient

from .arms import ARMS, Arm, select_arms
from .config import PRESETS, ExperimentConfig
from .loop import run_arm
from .plots import plot_discrepancy, plot_final_gold, plot_gold_vs_proxy
from .prepare import prepare
from .report import markdown_table, run_record, summarize, timing_table, write_json
from .server import local_server

TIMED_ARM = "r2m"
T = TypeVar("T")


def _csv(kind: Callable[[str], T]) -> Callable[[str], tuple[T, ...]]:
    """argparse type for a comma-separated list."""
    return lambda text: tuple(kind(part) for part in text.split(",") if part)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples.r2m_experiments",
        description="R2M's experiments in miniature: RLOO through an r2m service, seven arms.")
    parser.add_argument("--mode", choices=sorted(PRESETS), default="quick",
                        help="preset: quick (1 seed, all arms, minutes) or full (EXPERIMENTS.md)")
    parser.add_argument("--arms", type=_csv(str), help=f"comma list of {', '.join(ARMS)}")
    parser.add_argument("--seeds", type=_csv(int), help="comma list of seeds, e.g. 0,1,2")
    parser.add_argument("--steps", type=int, help="RL steps per run (T)")
    parser.add_argument("--prompts", type=int, dest="prompts_per_step", help="prompts per step (n)")
    parser.add_argument("--k", type=int, dest="responses_per_prompt", help="responses per prompt")
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--sft-steps", type=int)
    parser.add_argument("--fit-steps", type=int, help="BT updates that fit the proxy head")
    parser.add_argument("--rm-lr", type=float, dest="rm_learning_rate",
                        help="the runs' AdamW learning rate (head fit and online updates)")
    parser.add_argument("--final-window", type=int, help="steps averaged into final metrics")
    parser.add_argument("--out", type=Path, help="output dir (default examples/results/<mode>)")
    parser.add_argument("--url", help="use this running r2m service instead of starting one")
    parser.add_argument("--backbone", help="backbone dir for the service this command starts")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the policy")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--replot", action="store_true",
                        help="only rebuild summary, table and plots from the JSON under --out")
    return parser.parse_args(argv)


def config_from(args: argparse.Namespace) -> ExperimentConfig:
    """The preset with every given override applied (arms validated)."""
    config = PRESETS[args.mode]
    overrides = {key: getattr(args, key) for key in (
        "arms", "seeds", "steps", "prompts_per_step", "responses_per_prompt", "max_new_tokens",
        "sft_steps", "fit_steps", "rm_learning_rate", "final_window")
        if getattr(args, key) is not None}
    config = config.replace(**overrides)
    select_arms(config.arms)
    return config


@contextmanager
def service(args: argparse.Namespace, out: Path) -> Iterator[str]:
    if args.url:
        yield args.url
        return
    with local_server(out / "server.log", backbone=args.backbone) as url:
        yield url


def execution_order(arms: Sequence[Arm]) -> list[Arm]:
    """The arm whose step times are reported runs first for each seed, so its `/v1/score` calls
    pay the backbone for the samples every arm shares at step 0 (the service's RTE cache is
    shared by all runs). Results do not depend on the order."""
    return sorted(arms, key=lambda arm: arm.name != TIMED_ARM)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    config = config_from(args)
    out = args.out or Path("examples/results") / config.mode
    if args.replot:
        return _replot(out)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with service(args, out) as url, R2MClient(url, timeout=300) as client:
        info = client.info().model_dump(mode="json")
        records = run_all(client, config, info, out, progress=not args.no_progress)
    meta = {"settings": config.to_json(), "service": info, "command": _command(argv),
            "wall_time_s": time.perf_counter() - started}
    print(write_outputs(records, meta, out))
    return 0


def run_all(client: R2MClient, config: ExperimentConfig, info: dict[str, object], out: Path,
            *, progress: bool) -> list[dict[str, object]]:
    """Every (seed, arm) run; each run's JSON is written as soon as it ends."""
    arms = execution_order(select_arms(config.arms))
    records = []
    total = len(config.seeds) * len(arms) * config.steps
    with tqdm(total=total, unit="step", disable=not progress, file=sys.stderr) as bar:
        for seed in config.seeds:
            bar.set_description(f"seed {seed} SFT")
            prepared = prepare(config, seed)
            for arm in arms:
                bar.set_description(f"seed {seed} {arm.name}")
                run_started = time.perf_counter()

                def on_step(row: dict[str, float]) -> None:
                    bar.update(1)
                    bar.set_postfix(gold=f"{row['gold_reward']:.2f}",
                                    proxy=f"{row['proxy_reward']:.2f}", refresh=False)

                result = run_arm(client, prepared, arm, config, on_step)
                record = run_record(arm.name, seed, config.to_json(), info, result,
                                    time.perf_counter() - run_started)
                write_json(out / "runs" / f"{arm.name}-seed{seed}.json", record)
                records.append(record)
    return records


def write_outputs(records: Sequence[dict[str, object]], meta: dict[str, object],
                  out: Path) -> str:
    """summary.json, the three PNGs and results.md; returns the Markdown."""
    summary = {**summarize(records), **meta}
    write_json(out / "summary.json", summary)
    plots = [plot_gold_vs_proxy(records, out / "gold_vs_proxy.png"),
             plot_discrepancy(records, out / "discrepancy.png"),
             plot_final_gold(summary, out / "final_gold.png")]
    markdown = results_markdown(summary, plots, out)
    (out / "results.md").write_text(markdown)
    return markdown


def _replot(out: Path) -> int:
    """Rebuild summary, plots and table from `out/runs/*.json` and the old summary's meta."""
    old = json.loads((out / "summary.json").read_text())
    records = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    meta = {key: old[key] for key in ("settings", "service", "command", "wall_time_s")}
    print(write_outputs(records, meta, out))
    return 0


def results_markdown(summary: dict[str, object], plots: Sequence[Path], out: Path) -> str:
    settings = summary["settings"]
    lines = [
        f"# r2m experiments ({settings['mode']} mode)", "",
        f"Command: `{summary['command']}`  ", f"Wall time: {summary['wall_time_s'] / 60:.1f} min; "
        f"{len(settings['seeds'])} seed(s) × {settings['steps']} RL steps × "
        f"{settings['prompts_per_step']} prompts × {settings['responses_per_prompt']} responses; "
        f"backbone {summary['service']['backbone']}.", "",
        f"Final metrics = mean of the last {settings['final_window']} steps of each run; "
        "mean ± std over seeds. Proxy rewards are on each arm's own (drifting) scale.", "",
        markdown_table(summary), "",
        f"Wall time per RL step (ms, mean over steps and seeds; `{TIMED_ARM}` runs first for "
        "each seed):", "", timing_table(summary), "",
        *[f"![{p.stem}]({p.relative_to(out)})" for p in plots], "",
    ]
    return "\n".join(lines)


def _command(argv: Sequence[str] | None) -> str:
    args = sys.argv[1:] if argv is None else list(argv)
    return "python -m examples.r2m_experiments " + shlex.join(args)
