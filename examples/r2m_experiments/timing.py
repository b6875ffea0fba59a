"""Time overhead measured the paper's way (its whole RL run 4.4 h → 4.5 h): the RL step time of
"R2M w/o train" and of R2M against vanilla RLOO, on the same machine.

The backbone cost is attributed fairly: each timed run gets a fresh `r2m serve` of its own, so its
RTE cache holds only what that run itself scored and no arm pays the backbone for another's
samples (in the main sweep all runs of a worker share one server and one cache). Measurement
(held-out scoring, diagnostics) is off and the head fit is not timed. Passes alternate the arms'
order, so a slow drift of the machine's load does not favour one arm.
"""

from __future__ import annotations

from pathlib import Path
from statistics import fmean

from r2m_client import R2MClient

from .arms import ARMS
from .config import ExperimentConfig
from .loop import PHASES, run_arm
from .prepare import prepare
from .server import local_server


def measure_overhead(config: ExperimentConfig, out: Path, backbone: str | None
                     ) -> dict[str, object]:
    """Per arm and pass: mean seconds per RL step of each phase and in total."""
    seed = config.seeds[0]
    timed = config.replace(steps=config.timing_steps)
    prepared = prepare(timed, seed, out / "sft")
    passes = []
    for index in range(config.timing_repeats):
        order = config.timing_arms if index % 2 == 0 else tuple(reversed(config.timing_arms))
        arms = {}
        for name in order:
            with local_server(out / f"timing-{name}-{index}.log", backbone=backbone) as url, \
                    R2MClient(url, timeout=300) as client:
                series = run_arm(client, prepared, ARMS[name], timed, measure=False)["series"]
            per_phase = {phase: fmean(series[f"time_{phase}"]) for phase in PHASES}
            arms[name] = {**per_phase, "step": sum(per_phase.values())}
        passes.append({"order": list(order), "arms": arms})
    return {"seed": seed, "steps": config.timing_steps, "passes": passes,
            "summary": overhead_summary(passes, config.timing_arms)}


def overhead_summary(passes: list[dict[str, object]], arms: tuple[str, ...]
                     ) -> dict[str, dict[str, float]]:
    """Mean step time per arm over passes, and its overhead over the first arm (vanilla), both
    as the mean of the per-pass ratios and per pass."""
    base = arms[0]
    summary = {}
    for name in arms:
        ratios = [p["arms"][name]["step"] / p["arms"][base]["step"] - 1.0 for p in passes]
        summary[name] = {"step_s": fmean(p["arms"][name]["step"] for p in passes),
                         "r2m_update_s": fmean(p["arms"][name]["r2m_update"] for p in passes),
                         "hidden_states_s": fmean(p["arms"][name]["hidden_states"]
                                                  for p in passes),
                         "scoring_s": fmean(p["arms"][name]["scoring"] for p in passes),
                         "overhead": fmean(ratios), "overhead_per_pass": ratios}
    return summary
