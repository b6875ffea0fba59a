"""Stop working for a client that has gone away.

Once a request body has been read, the next ASGI `receive()` only returns when the client
disconnects. Racing it against the handler's work lets a score request leave the batch queue the
moment its trainer gives up (timeout, crash), instead of costing model time nobody will read.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

from fastapi import Request

from r2m_proto.errors import ErrorCode, WireError

T = TypeVar("T")


class ClientDisconnected(WireError):
    def __init__(self) -> None:
        super().__init__("the client disconnected before the answer was ready", None,
                         ErrorCode.CLIENT_CLOSED)


async def unless_disconnected(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """Await `work`; cancel it (and raise `ClientDisconnected`) if the client leaves first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            watcher.cancel()
            raise ClientDisconnected
        watcher.cancel()
    return task.result()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
