"""uvicorn's httptools protocol with a request body that reaches the app in fewer copies and
fewer wake-ups: the hot path of `/v1/score` with a 64 MiB body (bench/RESULTS.md, "Wire").

Stock uvicorn appends every parsed chunk to a per-request `bytearray` (a copy), hands the app
`bytes(that bytearray)` (a second copy), and pauses the socket as soon as 64 KiB wait, so a
64 MiB body costs about a thousand pause/resume round trips between the parser and the app. Here
the parser's chunks are kept as they are, joined once when the app asks (no copy when one chunk
waits), and the socket pauses only past `read_ahead_bytes` per connection: memory stays bounded,
and the app's `read_body` copies each joined piece once into its preallocated buffer.

This leans on two details of uvicorn's `HttpToolsProtocol` (checked by tests/test_wire.py
against the pinned version): `on_body` fills `cycle.body`, and `receive` answers
`bytes(cycle.body)` and then resets it to a fresh `bytearray`.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _Chunks:
    """Stands in for uvicorn's per-request body `bytearray` between two `receive` calls."""

    __slots__ = ("parts", "size")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def __bytes__(self) -> bytes:
        return self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)


def read_ahead_protocol(read_ahead_bytes: int) -> type[HttpToolsProtocol]:
    """The protocol class for `uvicorn.Config(http=...)`."""

    class ReadAheadProtocol(HttpToolsProtocol):
        def on_body(self, body: bytes) -> None:
            cycle = self.cycle
            if (self.parser.should_upgrade() and self._should_upgrade()) \
                    or cycle.response_complete:
                return
            chunks = cycle.body
            if not isinstance(chunks, _Chunks):  # uvicorn's fresh (empty) bytearray
                chunks = cycle.body = _Chunks()  # type: ignore[assignment]
            chunks.parts.append(body)
            chunks.size += len(body)
            if chunks.size > read_ahead_bytes:
                self.flow.pause_reading()
            cycle.message_event.set()

    return ReadAheadProtocol
