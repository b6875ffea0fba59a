"""Backbones of realistic shape, built from a config with random weights (no download).

Timing needs the shape, not trained weights: a 12-layer, 768-wide BERT reward model (one-label
`BertForSequenceClassification`, the RM kind the service hooks) with the MiniLM tokenizer, so
S = 512-token inputs exercise exactly the code path a real encoder RM takes. Built once per
process and shape, in a temp dir removed at exit.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_BUILT: dict[BackboneShape, Path] = {}


@dataclass(frozen=True)
class BackboneShape:
    layers: int = 12
    hidden: int = 768
    heads: int = 12
    intermediate: int = 3072
    max_length: int = 512  # S: tokens per (prompt, response)

    def record(self) -> dict[str, Any]:
        return {"kind": "BertForSequenceClassification (random weights, MiniLM tokenizer)",
                **asdict(self)}


REALISTIC = BackboneShape()
QUICK = BackboneShape(layers=2, hidden=256, heads=4, intermediate=1024, max_length=128)


def build_backbone(shape: BackboneShape) -> Path:
    """The model dir for `shape` (built on first use in this process)."""
    if shape in _BUILT:
        return _BUILT[shape]
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from r2m_service.backbone import embedded_backbone_path

    path = Path(tempfile.mkdtemp(prefix=f"r2m-bench-bert{shape.layers}x{shape.hidden}-"))
    atexit.register(shutil.rmtree, path, True)
    tokenizer = AutoTokenizer.from_pretrained(embedded_backbone_path())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=shape.hidden,
                        num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                        intermediate_size=shape.intermediate,
                        max_position_embeddings=max(512, shape.max_length), num_labels=1)
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    _BUILT[shape] = path
    return path
