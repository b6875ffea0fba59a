"""Time overhead measured the paper's way (its whole RL run 4.4 h → 4.5 h): the RL step time of
"R2M w/o train" and of R2M against vanilla RLOO, on the same machine.

The backbone cost is attributed fairly: each timed run gets a fresh `r2m serve` of its own, so its
RTE cache holds only what that run itself scored and no arm pays the backbone for another's
samples (in the main sweep all runs of a worker share one server and one cache). Measurement
(held-out scoring, diagnostics) is off and the head fit is not timed. Passes alternate the arms'
order, so a slow drift of the machine's load does not favour one arm.

Two readings. *Whole step*: the mean RL step against vanilla's in the same pass, the paper's
measure, but on a machine shared with other work its load swings move every phase (generation and
the policy update do identical work in every arm, yet vary). *Attributed*: only the work R2M adds —
hidden-state extraction, the module's share of scoring (the service's own
`r2m_module_duration_seconds{phase="score"}`, beyond vanilla's ϕ(H_last)) and the update call —
over vanilla's step; load noise then touches only those small parts.
"""

from __future__ import annotations

import re
from pathlib import Path
from statistics import fmean

import httpx

from r2m_client import R2MClient

from .arms import ARMS
from .config import ExperimentConfig
from .loop import PHASES, run_arm
from .prepare import prepare
from .runner import work_dir
from .server import local_server

MODULE_SCORE_SECONDS = re.compile(
    r'^r2m_module_duration_seconds_sum\{phase="score"\} (\S+)$', re.MULTILINE)


def measure_overhead(config: ExperimentConfig, out: Path, backbone: str | None
                     ) -> dict[str, object]:
    """Per arm and pass: mean seconds per RL step of each phase and in total."""
    seed = config.seeds[0]
    timed = config.replace(steps=config.timing_steps)
    prepared = prepare(timed, seed, work_dir(out) / "sft")
    passes = []
    for index in range(config.timing_repeats):
        order = config.timing_arms if index % 2 == 0 else tuple(reversed(config.timing_arms))
        arms = {}
        for name in order:
            with local_server(work_dir(out) / f"timing-{name}-{index}.log",
                              backbone=backbone) as url, \
                    R2MClient(url, timeout=300) as client:
                series = run_arm(client, prepared, ARMS[name], timed, measure=False)["series"]
                module_score = _module_score_seconds(url) / timed.steps
            per_phase = {phase: fmean(series[f"time_{phase}"]) for phase in PHASES}
            arms[name] = {**per_phase, "step": sum(per_phase.values()),
                          "module_score": module_score}
        passes.append({"order": list(order), "arms": arms})
    return {"seed": seed, "steps": config.timing_steps, "passes": passes,
            "summary": overhead_summary(passes, config.timing_arms)}


def _module_score_seconds(url: str) -> float:
    """The service's total R2M-module time in score batches so far (its /metrics)."""
    match = MODULE_SCORE_SECONDS.search(httpx.get(f"{url}/metrics", timeout=10).text)
    return float(match.group(1)) if match else 0.0


def overhead_summary(passes: list[dict[str, object]], arms: tuple[str, ...]
                     ) -> dict[str, dict[str, float]]:
    """Per arm, means over passes: step time, the R2M-specific parts, and the overhead over the
    first arm (vanilla) of the same pass — whole step and attributed (module docstring)."""
    base = arms[0]
    summary = {}
    for name in arms:
        def mean(key: str, name: str = name) -> float:
            return fmean(p["arms"][name][key] for p in passes)

        whole = [p["arms"][name]["step"] / p["arms"][base]["step"] - 1.0 for p in passes]
        attributed = [(p["arms"][name]["hidden_states"] + p["arms"][name]["r2m_update"]
                       + p["arms"][name]["module_score"] - p["arms"][base]["module_score"])
                      / p["arms"][base]["step"] for p in passes]
        summary[name] = {"step_s": mean("step"), "hidden_states_s": mean("hidden_states"),
                         "module_score_s": mean("module_score"),
                         "r2m_update_s": mean("r2m_update"), "overhead": fmean(whole),
                         "overhead_per_pass": whole, "attributed": fmean(attributed),
                         "attributed_per_pass": attributed}
    return summary
