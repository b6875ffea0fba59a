"""Where a message's tensors go while the message is built, for the client's requests and the
service's split-mode answers alike: each tensor becomes its field as either the name of a tensor
kept for a safetensors body, or an inline base64 `WireTensor` of a JSON body."""

from __future__ import annotations

from r2m_proto.safetensors_body import encode_safetensors
from r2m_proto.tensors import TensorView, WireTensor, encode_wire_tensor


class TensorSink:
    def __init__(self, binary: bool) -> None:
        self.binary = binary
        self.tensors: list[tuple[str, str, tuple[int, ...], memoryview]] = []

    def field(self, name: str, tensor: TensorView) -> WireTensor | str:
        if self.binary:
            self.tensors.append((name, tensor.dtype, tensor.shape, tensor.data))
            return name
        return encode_wire_tensor(tensor.dtype, tensor.shape, tensor.data)

    def safetensors(self, message_json: str, key: str) -> list[memoryview | bytes]:
        """The safetensors body: the message's JSON under `__metadata__[key]`, then the tensors
        its fields name (their bytes uncopied)."""
        return encode_safetensors(self.tensors, metadata={key: message_json})
