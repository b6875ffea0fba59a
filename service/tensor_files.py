"""float32 tensors ↔ safetensors bytes, deterministic, through the proto codec (no second
safetensors implementation, and the same bytes for the same state)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from r2m_proto.safetensors_body import decode_safetensors, encode_safetensors


def tensor_buffers(tensors: dict[str, torch.Tensor], metadata: dict[str, str]
                   ) -> list[memoryview | bytes]:
    """The safetensors file as buffers: the header, then each tensor's bytes — views of the
    tensors themselves when they are float32 on the CPU already, so a 400 MB run state is written
    out without being copied. Valid while the tensors do not change."""
    parts = []
    for name, tensor in tensors.items():
        data = tensor.detach().to("cpu", torch.float32).contiguous()
        raw = memoryview(data.numpy().reshape(-1)).cast("B") if data.numel() else b""
        parts.append((name, "float32", tuple(data.shape), raw))
    return encode_safetensors(parts, metadata)


def dump_tensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """Deterministic safetensors bytes (float32, CPU) via the proto encoder."""
    return b"".join(tensor_buffers(tensors, metadata))


def load_tensors(data: bytes | bytearray) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    metadata, views = decode_safetensors(bytearray(data))
    tensors = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for name, view in views.items():
            flat = (torch.frombuffer(view.data, dtype=torch.float32) if view.nbytes
                    else torch.empty(0))
            tensors[name] = flat.view(view.shape).clone()
    return metadata, tensors


def read_metadata(path: Path) -> dict[str, str]:
    """A safetensors file's `__metadata__`, reading only its header (not the tensors)."""
    with path.open("rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    return header.get("__metadata__", {})
