"""Reward-model backbones built from a config with random weights (no download): the one place
tests and benchmarks get their models from.

Timing needs the shape, not trained weights: the benchmarks' default is a 12-layer, 768-wide
BERT reward model (one-label `BertForSequenceClassification`, the RM kind the service hooks) with
the MiniLM tokenizer, so S = 512-token inputs exercise exactly the code path a real encoder RM
takes. Plumbing and exact-math tests use tiny shapes of both kinds (encoder and causal).
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

_BUILT: dict[BackboneShape, Path] = {}


@dataclass(frozen=True)
class BackboneShape:
    layers: int = 12
    hidden: int = 768
    heads: int = 12
    intermediate: int = 3072
    max_length: int = 512  # S: tokens per (prompt, response)
    arch: Literal["bert", "llama"] = "bert"
    kv_heads: int | None = None  # llama: grouped-query attention
    positions: int | None = None  # max position embeddings; default max(512, max_length)

    def record(self) -> dict[str, Any]:
        kind = {"bert": "BertForSequenceClassification",
                "llama": "LlamaForSequenceClassification"}[self.arch]
        return {"kind": f"{kind} (random weights, MiniLM tokenizer)", **asdict(self)}


REALISTIC = BackboneShape()
QUICK = BackboneShape(layers=2, hidden=256, heads=4, intermediate=1024, max_length=128)
# The tests' models: small enough to build in a second, two layers so attention mixes tokens.
TINY_LLAMA = BackboneShape(layers=2, hidden=32, heads=4, intermediate=64, max_length=256,
                           arch="llama", kv_heads=2, positions=256)
TINY_BERT = BackboneShape(layers=2, hidden=32, heads=4, intermediate=64, max_length=128,
                          positions=128)
# An 8B-policy-sized causal RM (Llama-3-8B's width: 4096 wide, 32 heads, 8 KV heads, MLP 14336)
# with only 4 of its 32 layers: layers are identical, so a forward costs about 4/32 of the full
# model's and the module's share of it comes out about 8× too high (a bound, not an estimate),
# while the model builds in seconds and loads as 2 GB of bf16 instead of 16 GB (bench/gpu.sh).
LLAMA_8B_LIKE = BackboneShape(layers=4, hidden=4096, heads=32, intermediate=14336,
                              max_length=1024, arch="llama", kv_heads=8, positions=8192)
SHAPES = {"llama-8b-like": LLAMA_8B_LIKE, "realistic": REALISTIC, "quick": QUICK,
          "tiny-llama": TINY_LLAMA}


def save_reward_model(path: Path, shape: BackboneShape, *, seed: int = 0,
                      head_std: float | None = None, chat_template: str | None = None) -> Path:
    """Write a one-label sequence-classification model of `shape` and the MiniLM tokenizer to
    `path`. `head_std` redraws the scoring head with that spread, so that a random model's
    rewards differ visibly between inputs."""
    import torch
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForSequenceClassification,
        LlamaConfig,
        LlamaForSequenceClassification,
    )

    from r2m_service.backbone import embedded_backbone_path

    tokenizer = AutoTokenizer.from_pretrained(embedded_backbone_path())
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    positions = shape.positions or max(512, shape.max_length)
    common = {"vocab_size": tokenizer.vocab_size, "hidden_size": shape.hidden,
              "num_hidden_layers": shape.layers, "num_attention_heads": shape.heads,
              "intermediate_size": shape.intermediate, "max_position_embeddings": positions,
              "num_labels": 1}
    torch.manual_seed(seed)
    if shape.arch == "llama":
        model = LlamaForSequenceClassification(LlamaConfig(
            **common, num_key_value_heads=shape.kv_heads or shape.heads,
            pad_token_id=tokenizer.pad_token_id))
        head = model.score.weight
    else:
        model = BertForSequenceClassification(BertConfig(**common))
        head = model.classifier.weight
    if head_std is not None:
        with torch.no_grad():
            head.normal_(0, head_std)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_backbone(shape: BackboneShape) -> Path:
    """The model dir for `shape` (built on first use in this process, removed at exit)."""
    if shape in _BUILT:
        return _BUILT[shape]
    path = Path(tempfile.mkdtemp(prefix=f"r2m-bench-{shape.arch}{shape.layers}x{shape.hidden}-"))
    atexit.register(shutil.rmtree, path, True)
    _BUILT[shape] = save_reward_model(path, shape)
    return path


def main(argv: list[str] | None = None) -> int:
    """`python -m r2m_bench.models SHAPE DIR`: build once, then point `r2m bench --backbone DIR`
    (or `r2m serve --backbone DIR`) at it."""
    parser = argparse.ArgumentParser(prog="python -m r2m_bench.models",
                                     description="Write a reward model built from a config "
                                                 "(random weights, MiniLM tokenizer) to DIR.")
    parser.add_argument("shape", choices=sorted(SHAPES))
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    save_reward_model(args.out, SHAPES[args.shape], head_std=1.0)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
