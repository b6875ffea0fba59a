"""The service's own cost per item outside the backbone forward (issue 11: ≤ 25 µs).

A nearly free backbone (1 layer, width 32, MiniLM tokenizer, built from a config) makes the
forward tiny, so what is left of a `/v1/score` call is r2m's own work: decode, validation,
tokenizing, queue, module and response. Per request:

- overhead per item = (client's total time − the server's backbone forward seconds) ÷ items,
  the forward read from `r2m_backbone_duration_seconds` (scrapes before and after each call);
- its split, from the server's `r2m_score_phase_seconds{phase}` and
  `r2m_module_duration_seconds{phase="score"}`: decode, validate, tokenize (summed over the
  request's chunks), `tokenize_and_queue_less_forward_and_module` (from the first chunk's
  tokenizing to the rewards, less the forward and the module: the tokenizing the forward did not
  hide, waiting, batching and the model thread's bookkeeping; a big request's later chunks are
  tokenized while its first batches run, so the two phases overlap and only their sum can be
  split; it can even be negative, as the forward also runs during the thread hand-offs between
  chunks, which no phase timer covers), module, response; `transport` is the client's total
  less all of them and the forward (HTTP, the event loop; the client's own request building is
  outside). On a busy CPU the forward also stretches while tokenizing runs beside it: the
  paired ratio of the client's *total* time (`total_after_over_before`) is the comparison that
  no overlap can flatter;
- the server process's CPU seconds per item (user + system, all threads, forward included):
  wall time on a shared two-core machine stretches with everyone's load, CPU time far less;
- the tokenizer alone on the same kind of pairs, in this process: the floor under any of it.

Bodies: JSON without hidden states, and with hidden states as JSON (base64) and as binary
(safetensors). Every call uses new texts (cold RTE cache). With `baseline` (a directory holding
an older r2m checkout: its `service/`, `proto/`, `client/`), a second server runs that code with
the same flags and the two are called alternately, request by request, so load drift hits both.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from r2m_bench.common import RESULTS_DIR, Headline, TextSource, median, write_result
from r2m_bench.models import BackboneShape, build_backbone
from r2m_bench.servers import Samples, ServerPool, ServerSpec, histogram_delta, scrape
from r2m_client._encode import score_chunks

TARGET_US = 25.0
NEARLY_FREE = BackboneShape(layers=1, hidden=32, heads=2, intermediate=64, max_length=128,
                            positions=128)
POLICY_HIDDEN = 32
HIDDEN_TOKENS = 16
BODIES = ("json", "json_hidden", "binary_hidden")
PHASES = ("decode", "validate", "tokenize", "queue", "response")
HEADLINE_ITEMS = 1000
# Short texts (26–28 tokens a pair with the MiniLM tokenizer): the fixed cost per item is the
# question; the tokenizer's share grows with the tokens.
PROMPT_WORDS, RESPONSE_WORDS = 4, 4


def run(quick: bool = False, out_dir: Path = RESULTS_DIR, pool: ServerPool | None = None,
        baseline: Path | None = None) -> dict[str, Any]:
    sizes = (100,) if quick else (1, 10, 100, HEADLINE_ITEMS)
    repeat = 1 if quick else 15
    backbone = str(build_backbone(NEARLY_FREE))
    spec = ServerSpec(backbone=backbone, max_length=NEARLY_FREE.max_length, torch_threads=1)
    servers = {"after": spec}
    if baseline is not None:
        servers["before"] = ServerSpec(backbone=backbone, max_length=NEARLY_FREE.max_length,
                                       torch_threads=1, pythonpath=str(_importable(baseline)))
    settings: dict[str, Any] = {
        "backbone": NEARLY_FREE.record(), "sizes": list(sizes), "repeat": repeat,
        "bodies": list(BODIES), "policy_hidden": POLICY_HIDDEN, "hidden_tokens": HIDDEN_TOKENS,
        "hidden_dtype": "bfloat16", "step": 50, "prompt_words": PROMPT_WORDS,
        "response_words": RESPONSE_WORDS, "rte_cache": "cold (new texts every call)",
        "servers": {name: s.record() for name, s in servers.items()},
        "baseline": None if baseline is None else str(baseline), "quick": quick}
    own_pool = pool is None
    pool = pool or ServerPool()
    calls: dict[str, dict[str, dict[int, list[dict[str, float]]]]] = {
        name: {body: {n: [] for n in sizes} for body in BODIES} for name in servers}
    try:
        started = {name: pool.get(s) for name, s in servers.items()}
        targets = {name: (server.url, server.process.pid) for name, server in started.items()}
        with httpx.Client(timeout=600) as http:
            runs = {name: _create_run(http, url) for name, (url, _) in targets.items()}
            texts = TextSource("opi", prompt_words=PROMPT_WORDS, response_words=RESPONSE_WORDS)
            for name in servers:  # warm-up: first-call costs (imports, allocator) off the books
                _call(http, targets[name], runs[name], "json_hidden", 10, texts)
            for _ in range(repeat):
                for n in sizes:
                    for body in BODIES:
                        for name in servers:  # alternately, call by call
                            calls[name][body][n].append(
                                _call(http, targets[name], runs[name], body, n, texts))
    finally:
        if own_pool:
            pool.close()
    results = {name: {body: {str(n): _summary(per) for n, per in by_size.items()}
                      for body, by_size in by_body.items()} for name, by_body in calls.items()}
    if "before" in results:  # per round: the two calls were adjacent, so drift hits both
        for key, measure in (("after_over_before", _overhead), ("total_after_over_before",
                                                                _total)):
            results[key] = {body: {str(n): median([measure(a) / measure(b) for a, b in zip(
                calls["after"][body][n], calls["before"][body][n], strict=True)])
                for n in sizes} for body in BODIES}
    n = max(sizes)
    results["tokenizer_floor"] = _tokenizer_floor(backbone, n, repeat)
    headlines = [Headline("overhead_per_item", f"µs per item outside the forward, {n} items, "
                          f"{body} ({name})", results[name][body][str(n)]["overhead_us_per_item"],
                          "µs", TARGET_US if name == "after" and not quick else None,
                          higher_is_better=False)
                 for name in servers for body in BODIES]
    path = write_result("overhead_per_item", settings, results, out_dir, headlines)
    return {"path": str(path), "headlines": headlines, **results}


def _tokenizer_floor(backbone: str, n: int, repeat: int) -> dict[str, float]:
    """The tokenizer alone, in this process: the service's own `TextFormatter` on `n` pairs
    like the calls', median wall and CPU µs per pair. No server can go below it per item."""
    from transformers import AutoTokenizer

    from r2m_service.text_format import TextFormatter, TextPair

    formatter = TextFormatter(AutoTokenizer.from_pretrained(backbone), NEARLY_FREE.max_length)
    texts = TextSource("opi", prompt_words=PROMPT_WORDS, response_words=RESPONSE_WORDS)
    walls, cpus = [], []
    for _ in range(repeat + 1):  # the first pass warms up
        pairs = [TextPair(*texts.pair(), "items") for _ in range(n)]
        started, cpu = time.perf_counter(), time.process_time()
        encoded = formatter.encode(pairs)
        walls.append((time.perf_counter() - started) / n * 1e6)
        cpus.append((time.process_time() - cpu) / n * 1e6)
    return {"pairs": n, "tokens_per_pair": median([len(e.input_ids) for e in encoded]),
            "wall_us_per_pair": median(walls[1:]), "cpu_us_per_pair": median(cpus[1:])}


def _importable(checkout: Path) -> Path:
    """A directory that imports `checkout`'s packages under their installed names (setup.py
    maps `service/` to `r2m_service` and so on); first on PYTHONPATH it wins over this one."""
    root = Path(tempfile.mkdtemp(prefix="r2m-baseline-"))
    for package, folder in (("r2m_service", "service"), ("r2m_proto", "proto"),
                            ("r2m_client", "client")):
        (root / package).symlink_to(Path(checkout).resolve() / folder)
    return root


def _create_run(http: httpx.Client, url: str) -> str:
    response = http.post(f"{url}/v1/runs", json={"policy_hidden_size": POLICY_HIDDEN,
                                                 "total_steps": 100})
    response.raise_for_status()
    return str(response.json()["run_id"])


def _call(http: httpx.Client, target: tuple[str, int], run_id: str, body: str, n: int,
          texts: TextSource) -> dict[str, float]:
    """One score call; seconds of the client's total, the forward, the module and each phase,
    and the server process's CPU seconds (all threads)."""
    url, pid = target
    import torch

    prompts, responses = texts.pairs(n)
    hidden = None if body == "json" else [
        torch.randn(HIDDEN_TOKENS, POLICY_HIDDEN).to(torch.bfloat16) for _ in range(n)]
    (chunk,) = score_chunks(run_id, prompts, responses, hidden, step=50, min_version=None,
                            binary=body == "binary_hidden", max_bytes=1 << 30)
    payload = b"".join(chunk.body.buffers)
    before = scrape(url)
    cpu = _cpu_seconds(pid)
    started = time.perf_counter()
    response = http.post(f"{url}/v1/score", content=payload, headers=chunk.body.headers())
    total = time.perf_counter() - started
    cpu = _cpu_seconds(pid) - cpu
    response.raise_for_status()
    after = scrape(url)
    out = {"items": n, "total": total, "bytes": len(payload), "server_cpu": cpu,
           "forward": _sum(before, after, "r2m_backbone_duration_seconds"),
           "module": _sum(before, after, "r2m_module_duration_seconds", phase="score"),
           "batches": histogram_delta(before, after, "r2m_batch_size")["count"]}
    for phase in PHASES:
        out[phase] = _sum(before, after, "r2m_score_phase_seconds", phase=phase)
    return out


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc; clock-tick resolution, 10 ms):
    unlike wall time, it barely moves with the machine's load."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _sum(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return histogram_delta(before, after, name, **labels)["sum"]


def _overhead(call: dict[str, float]) -> float:
    """Seconds of a call outside the backbone forward."""
    return call["total"] - call["forward"]


def _total(call: dict[str, float]) -> float:
    return call["total"]


def _summary(calls: list[dict[str, float]]) -> dict[str, Any]:
    """Medians over the calls, in µs per item; tokenize + queue less the forward and the
    module (which run inside those two phases), `transport` what no server timer covers."""
    n = calls[0]["items"]

    def per_item(key: str) -> float:
        return median([c[key] for c in calls]) / n * 1e6

    phases = {phase: per_item(phase) for phase in PHASES}
    timed_phases = bool(sum(c["decode"] for c in calls))  # a baseline may lack the timers
    split: dict[str, float] = {}
    if timed_phases:
        waits = [c["tokenize"] + c["queue"] - c["forward"] - c["module"] for c in calls]
        transport = [c["total"] - sum(c[p] for p in PHASES) for c in calls]
        split = {**{p: phases[p] for p in PHASES if p != "queue"},
                 "tokenize_and_queue_less_forward_and_module": median(waits) / n * 1e6,
                 "module": per_item("module"), "transport": median(transport) / n * 1e6}
    return {
        "items": n, "calls": len(calls), "body_bytes": calls[0]["bytes"],
        "model_batches": median([c["batches"] for c in calls]),
        "total_us_per_item": per_item("total"), "forward_us_per_item": per_item("forward"),
        "overhead_us_per_item": median([_overhead(c) for c in calls]) / n * 1e6,
        # summed over the calls (the clock ticks are coarse); includes the forward's CPU
        "server_cpu_us_per_item": sum(c["server_cpu"] for c in calls) / (n * len(calls)) * 1e6,
        "split_us_per_item": split,
        "total_s": [c["total"] for c in calls], "forward_s": [c["forward"] for c in calls],
    }
