"""Run every (arm, seed) job, in this process or spread over worker processes.

Each run is a sequential loop that alternates between the trainer (this side) and the service,
so one run keeps about one core busy; `workers` processes, each with its own `r2m serve`, keep
more cores busy. Runs are seeded and independent, so the results do not depend on how they are
spread. Every run's JSON is written as soon as it ends, and `resume` skips runs whose JSON
already holds the same settings, so an interrupted sweep continues where it stopped.
"""

from __future__ import annotations

import json
import multiprocessing
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from r2m_client import R2MClient

from .arms import ARMS
from .config import ExperimentConfig
from .loop import run_arm
from .prepare import prepare
from .report import run_record, write_json
from .server import local_server


def work_dir(out: Path) -> Path:
    """Where server logs and the SFT cache go: beside the results, not among them (git-ignored)."""
    return out / "work"


@dataclass(frozen=True)
class Job:
    arm: str
    seed: int

    @property
    def file_name(self) -> str:
        return f"{self.arm}-seed{self.seed}.json"


@dataclass(frozen=True)
class Service:
    """Where runs go: a given URL, or local servers this command starts (one per worker)."""

    url: str | None = None
    backbone: str | None = None


def jobs_for(config: ExperimentConfig) -> list[Job]:
    """Every run of the config, seed-major, arms in `config.arms` order."""
    seeds = sorted({s for arm in config.arms for s in config.seeds_for(arm)})
    return [Job(arm, seed) for seed in seeds for arm in config.arms
            if seed in config.seeds_for(arm)]


@contextmanager
def service_urls(service: Service, count: int, logs: Path) -> Iterator[list[str]]:
    """`count` base URLs: the given one, or fresh local servers stopped on exit."""
    if service.url:
        yield [service.url] * count
        return
    with ExitStack() as stack:
        yield [stack.enter_context(local_server(logs / f"server-{i}.log",
                                                backbone=service.backbone))
               for i in range(count)]


def run_jobs(config: ExperimentConfig, jobs: Sequence[Job], out: Path, service: Service, *,
             workers: int, threads: int, resume: bool, progress: bool
             ) -> list[dict[str, object]]:
    """Run `jobs` (skipping finished ones when `resume`); returns every job's record."""
    done = {job: _finished(out, job, config) for job in jobs} if resume else {}
    todo = [job for job in jobs if done.get(job) is None]
    records = {job: record for job, record in done.items() if record is not None}
    if not todo:
        return [records[job] for job in jobs]
    cache = work_dir(out) / "sft"
    with tqdm(total=len(todo) * config.steps, unit="step", disable=not progress,
              file=sys.stderr) as bar, service_urls(service, max(1, min(workers, len(todo))),
                                                     work_dir(out)) as urls:
        if len(urls) == 1 or len(todo) <= 1:
            _init_worker(urls, threads)
            results = (_run_job(config, job, out, cache) for job in todo)
            for job, record in zip(todo, results, strict=True):
                records[job] = record
                bar.update(config.steps)
        else:
            context = multiprocessing.get_context("spawn")
            url_queue = context.Queue()
            for url in urls:
                url_queue.put(url)
            with ProcessPoolExecutor(len(urls), mp_context=context, initializer=_init_worker,
                                     initargs=(url_queue, threads)) as pool:
                seeds = sorted({job.seed for job in todo})
                list(pool.map(_prepare_seed, [config] * len(seeds), seeds, [cache] * len(seeds)))
                futures = {pool.submit(_run_job, config, job, out, cache): job for job in todo}
                for future in as_completed(futures):
                    records[futures[future]] = future.result()
                    bar.update(config.steps)
    return [records[job] for job in jobs]


def _finished(out: Path, job: Job, config: ExperimentConfig) -> dict[str, object] | None:
    """The job's record if it ran under the same settings (the timing passes' settings aside:
    they change no run)."""
    path = out / "runs" / job.file_name
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    return record if _run_settings(record["settings"]) == _run_settings(config.to_json()) else None


def _run_settings(settings: dict[str, object]) -> dict[str, object]:
    return {key: value for key, value in json.loads(json.dumps(settings)).items()
            if not key.startswith("timing_")}


# ---- worker side (module-level so that spawned processes can import them) ---------------------

_client: R2MClient | None = None


def _init_worker(urls: object, threads: int) -> None:
    """Per process: torch threads and one client for its server (a list: take the first; a
    queue: take the next, so each worker gets its own server)."""
    global _client
    torch.set_num_threads(threads)
    url = urls[0] if isinstance(urls, list) else urls.get()
    _client = R2MClient(url, timeout=300)


def _prepare_seed(config: ExperimentConfig, seed: int, cache: Path) -> int:
    prepare(config, seed, cache)
    return seed


def _run_job(config: ExperimentConfig, job: Job, out: Path, cache: Path) -> dict[str, object]:
    assert _client is not None, "worker not initialised"
    info = _client.info().model_dump(mode="json")
    prepared = prepare(config, job.seed, cache)
    started = time.perf_counter()
    result = run_arm(_client, prepared, ARMS[job.arm], config)
    record = run_record(job.arm, job.seed, config.to_json(), info, result,
                        time.perf_counter() - started)
    write_json(out / "runs" / job.file_name, record)
    return record
