"""Per-run readers–writer gate: scores read a run, updates write it.

A score request may span several model batches; without the gate an update could land between
two of them and one response would mix two versions. Writers are preferred (a waiting update
stops new scores from entering), so a stream of scores cannot starve training.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class RunGate:
    def __init__(self) -> None:
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0
        self._retired: Exception | None = None
        self._changed = asyncio.Condition()

    def retire(self, error: Exception) -> None:
        """No one reads or writes this run object again: every waiting and later `read()` or
        `write()` raises `error`. Called by the writer (inside `write()`) whose run could not be
        put back to a committed version, so nothing serves its uncommitted state; its exit
        wakes the waiters."""
        self._retired = error

    def _check(self) -> None:
        if self._retired is not None:
            raise self._retired

    @asynccontextmanager
    async def read(self) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: self._retired is not None or (
                not self._writing and not self._writers_waiting))
            self._check()
            self._readers += 1
        try:
            yield
        finally:
            async with self._changed:
                self._readers -= 1
                self._changed.notify_all()

    @asynccontextmanager
    async def write(self) -> AsyncIterator[None]:
        async with self._changed:
            self._writers_waiting += 1
            try:
                await self._changed.wait_for(lambda: self._retired is not None or (
                    not self._writing and not self._readers))
            finally:
                self._writers_waiting -= 1
                self._changed.notify_all()
            self._check()
            self._writing = True
        try:
            yield
        finally:
            async with self._changed:
                self._writing = False
                self._changed.notify_all()
