"""In-process baselines: the service's own `Backbone` without HTTP, queues or threads.

What the server could at best do with the same model, threads and batch size; the HTTP numbers
are divided by these.
"""

from __future__ import annotations

import time
from typing import Any

from r2m_bench.common import TextSource


def load_backbone(source: str | None = None, max_batch_size: int = 64,
                  max_length: int | None = None) -> Any:
    """A `Backbone` with the benchmark's torch thread count, device and dtype (those of the
    servers); `source` None: the servers' default backbone."""
    import torch

    from r2m_bench.servers import target, torch_threads
    from r2m_service.backbone import Backbone

    torch.set_num_threads(torch_threads())
    where = target()
    return Backbone(source or where.backbone, device=where.device, dtype=where.dtype,
                    max_batch_size=max_batch_size, max_length=max_length)


def embed_rate(backbone: Any, texts: TextSource, batch: int, window_s: float,
               min_batches: int = 2) -> dict[str, float]:
    """Items/s of `Backbone.embed` over fresh batches of `batch` texts for `window_s` (tokenizing
    timed separately: the server does it on another thread)."""
    from r2m_service.text_format import TextPair

    embed_s = total_s = 0.0
    batches = 0
    deadline = time.perf_counter() + window_s
    while time.perf_counter() < deadline or batches < min_batches:
        started = time.perf_counter()
        encoded = backbone.formatter.encode([TextPair(*texts.pair(), "x") for _ in range(batch)])
        tokenized = time.perf_counter()
        backbone.embed(encoded)
        done = time.perf_counter()
        embed_s += done - tokenized
        total_s += done - started
        batches += 1
    items = batches * batch
    return {"batch": batch, "items": items, "embed_items_per_s": items / embed_s,
            "tokenize_embed_items_per_s": items / total_s}
