"""R2M overhead: R2M module time ÷ backbone time, i.e. what R2M adds on top of a vanilla RM.

Measured twice, so the number a dashboard shows is cross-checked:
- in process, with the service's own classes: `Backbone.embed` on S-token inputs vs
  the `R2MModule` forward on S = 512 policy hidden states (bf16 on the wire, as a GPU policy
  sends them; the module casts to float32), exactly as the engine's `_rewards` calls it;
- on a live server, after driving cold-cache score traffic: the Prometheus
  `r2m_module_overhead_ratio`, `r2m_module_duration_seconds{phase="score"}` and
  `r2m_backbone_duration_seconds` (deltas over the traffic).
Shapes: a 12-layer, 768-wide BERT RM built from a config (S = 512) and the embedded default
(all-MiniLM-L6-v2 at its own max length), D_p = 768 and 2048. Quick mode uses a 2-layer,
256-wide model and checks the server on the embedded default only.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from r2m_bench.common import RESULTS_DIR, Headline, TextSource, median, write_result
from r2m_bench.models import QUICK, REALISTIC, BackboneShape, build_backbone
from r2m_bench.servers import ServerPool, ServerSpec, histogram_delta, scrape, torch_threads
from r2m_client import R2MClient

TARGET = 0.03
POLICY_HIDDEN = (768, 2048)
HIDDEN_SEQ = 512
OMEGA_STEP = 50  # of 100 steps: ω = 0.6 < 1, so the attention really runs


def run(quick: bool = False, out_dir: Path = RESULTS_DIR,
        pool: ServerPool | None = None) -> dict[str, Any]:
    import torch

    torch.set_num_threads(torch_threads())
    shape = QUICK if quick else REALISTIC
    settings: dict[str, Any] = {
        "policy_hidden": list(POLICY_HIDDEN), "hidden_seq_len": HIDDEN_SEQ,
        "hidden_dtype_on_wire": "bfloat16", "module_dtype": "float32", "omega": 0.6,
        "built_backbone": shape.record(),
        "batch_items": {"built": 2, "embedded": 2 if quick else 8},
        "repeat": 1 if quick else 3, "server_requests": 1 if quick else 2,
        "torch_threads": torch_threads(), "quick": quick,
    }
    own_pool = pool is None
    pool = pool or ServerPool()
    results: dict[str, Any] = {}
    try:
        built = build_backbone(shape)
        batches = settings["batch_items"]
        results["built"] = {"inprocess": _inprocess(str(built), shape, batches["built"],
                                                    settings["repeat"])}
        results["embedded"] = {"inprocess": _inprocess(None, None, batches["embedded"],
                                                       settings["repeat"])}
        targets = [("embedded", ServerSpec(), batches["embedded"])]
        if not quick:
            built_spec = ServerSpec(backbone=str(built), max_length=shape.max_length)
            targets.insert(0, ("built", built_spec, batches["built"]))
        settings["servers"] = {name: spec.record() for name, spec, _ in targets}
        for name, spec, batch in targets:
            results[name]["server"] = _server(pool.get(spec).url, batch,
                                              settings["server_requests"])
    finally:
        if own_pool:
            pool.close()
    label = f"{shape.layers}-layer/{shape.hidden} S={shape.max_length}"
    headlines = [Headline("overhead", f"module ÷ backbone, {label}, D_p={d}",
                          results["built"]["inprocess"]["ratio"][str(d)], "×",
                          None if quick else TARGET, higher_is_better=False) for d in POLICY_HIDDEN]
    headlines += [Headline("overhead", f"module ÷ backbone, embedded default, D_p={d}",
                           results["embedded"]["inprocess"]["ratio"][str(d)], "×",
                           higher_is_better=False)
                  for d in POLICY_HIDDEN]
    for name in ("built", "embedded"):
        for d, server in results[name].get("server", {}).items():
            headlines.append(Headline(
                "overhead", f"server r2m_module_overhead_ratio (mean), "
                f"{'embedded default' if name == 'embedded' else label}, D_p={d}",
                server["overhead_ratio_mean"], "×", higher_is_better=False))
    path = write_result("overhead", settings, results, out_dir, headlines)
    return {"path": str(path), "headlines": headlines, **results}


def _long_texts(tag: str) -> TextSource:
    """Prompts longer than any max length (the backbone cuts them to exactly S tokens)."""
    return TextSource(tag, prompt_words=700, response_words=60)


def _inprocess(source: str | None, shape: BackboneShape | None, batch: int,
               repeat: int) -> dict[str, Any]:
    import torch

    from r2m_service.backbone import Backbone
    from r2m_service.r2m_module import R2MModule
    from r2m_service.text_format import TextPair

    backbone = Backbone(source, max_length=shape.max_length if shape else None,
                        max_batch_size=batch)
    texts = _long_texts("overhead")
    encoded = backbone.formatter.encode([TextPair(*texts.pair(), "x") for _ in range(batch)])
    rte = backbone.embed(encoded).rtes  # warm-up, and the module's input
    generator = torch.Generator().manual_seed(0)
    modules, hidden = {}, {}
    for d in POLICY_HIDDEN:
        torch.manual_seed(d)
        modules[d] = R2MModule(backbone.hidden_size, d, min(backbone.hidden_size, 2048)).eval()
        hidden[d] = [torch.randn(HIDDEN_SEQ, d, generator=generator).to(torch.bfloat16)
                     for _ in range(batch)]

    def module_once(d: int) -> float:
        """Seconds of one module forward, as the engine's `_rewards` runs it."""
        started = time.perf_counter()
        with torch.no_grad():
            modules[d](rte, hidden[d], 0.6).float().cpu()
        return time.perf_counter() - started

    for d in POLICY_HIDDEN:
        module_once(d)
    backbone_s: list[float] = []
    module_s: dict[int, list[float]] = {d: [] for d in POLICY_HIDDEN}
    for _ in range(repeat):  # interleaved, so drift in the machine's load hits both alike
        started = time.perf_counter()
        backbone.embed(encoded)
        backbone_s.append(time.perf_counter() - started)
        for d in POLICY_HIDDEN:
            for _ in range(5):
                module_s[d].append(module_once(d))
    backbone_p50 = median(backbone_s)
    return {
        "backbone": backbone.name if source is None else "built", "batch_items": batch,
        "text_tokens": [len(e.input_ids) for e in encoded], "reward_hidden": backbone.hidden_size,
        "backbone_s": backbone_s, "backbone_p50_s": backbone_p50,
        "module_p50_s": {str(d): median(module_s[d]) for d in POLICY_HIDDEN},
        "ratio": {str(d): median(module_s[d]) / backbone_p50 for d in POLICY_HIDDEN},
    }


def _server(url: str, batch: int, requests: int) -> dict[str, Any]:
    """Drive cold-cache score traffic with hidden states; read the server's own overhead."""
    import torch

    texts = _long_texts("overhead-server")
    out: dict[str, Any] = {}
    with R2MClient(url, timeout=600, retries=0, max_request_bytes=1 << 30) as rm:
        for d in POLICY_HIDDEN:
            run_id = rm.create_run(policy_hidden_size=d, total_steps=100).run_id
            states = [torch.randn(HIDDEN_SEQ, d).to(torch.bfloat16) for _ in range(batch)]

            def score(rm: R2MClient = rm, run_id: str = run_id,
                      states: list[torch.Tensor] = states) -> None:
                prompts, responses = texts.pairs(batch)
                rm.score(run_id, prompts, responses, states, step=OMEGA_STEP)

            score()  # warm-up, outside the scraped window
            before = scrape(url)
            for _ in range(requests):
                score()
            after = scrape(url)
            module = histogram_delta(before, after, "r2m_module_duration_seconds", phase="score")
            backbone = histogram_delta(before, after, "r2m_backbone_duration_seconds")
            ratio = histogram_delta(before, after, "r2m_module_overhead_ratio")
            out[str(d)] = {
                "requests": requests, "batch_items": batch,
                "overhead_ratio_mean": ratio["mean"], "overhead_ratio_count": ratio["count"],
                "module_seconds": module["sum"], "backbone_seconds": backbone["sum"],
                "module_over_backbone_sums": module["sum"] / backbone["sum"]
                if backbone["sum"] else 0.0,
            }
    return out
