"""Small helpers shared by the server tests (JSON tensors, random hidden states)."""

from __future__ import annotations

import base64

import torch

D_P = 16  # the policy hidden size the tests' runs use

WIRE_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}

PROMPTS = ["What is the capital of France?", "Name a prime number.", "Say hello.",
           "Explain gravity in one sentence."]
RESPONSES = ["Paris is the capital of France.", "Seven.", "Hello there, nice to meet you!",
             "Mass attracts mass."]


def wire(tensor: torch.Tensor) -> dict[str, object]:
    """A tensor in the JSON body form `{dtype, shape, data: base64}`."""
    raw = tensor.contiguous().view(torch.uint8).numpy().tobytes()
    return {"dtype": WIRE_DTYPES[tensor.dtype], "shape": list(tensor.shape),
            "data": base64.b64encode(raw).decode()}


def hidden(lengths: list[int], width: int, seed: int = 0,
           dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, width, generator=g).to(dtype) for n in lengths]
