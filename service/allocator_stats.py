"""`r2m_allocator_bytes{allocator,kind}`: the C allocator's own byte counts, read at each scrape.

RSS alone cannot tell a leak from an allocator that keeps freed pages for reuse (the image's
jemalloc does so on purpose: docs/deploy.md, "Memory"); both make it rise. The allocator's count
of bytes in live allocations can: it grows with a leak and stays flat under retention or
fragmentation, while what the allocator holds from the OS rises. This module reads both from
whichever allocator the process runs: jemalloc when preloaded (`mallctl`), glibc's malloc
otherwise (`mallinfo2`, glibc 2.33+), and nothing under any other (musl, say): no samples, no
error.

Kinds: `allocated` and `held` exist for both allocators, so a dashboard can compare them across
images; `active` and `retained` (jemalloc) and `free` (glibc) are what each allocator adds.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

HELP = ("Bytes counted by the C allocator (malloc), by allocator and kind, at each scrape. "
        "allocated: in live allocations, what the program uses (a leak grows it); held: what the "
        "allocator holds from the OS (jemalloc: resident pages; glibc: heap arenas plus mmapped "
        "blocks), which RSS follows; active (jemalloc): pages holding live allocations, held - "
        "active being freed pages kept for reuse; retained (jemalloc): address space given back "
        "to the OS but kept mapped, not in RSS; free (glibc): free bytes inside held, kept for "
        "reuse. allocated flat while held and RSS rise is retention, not a leak.")
# Kind -> jemalloc statistic (size_t), read after an `epoch` write refreshes them.
JEMALLOC_STATS = {"allocated": b"stats.allocated", "held": b"stats.resident",
                  "active": b"stats.active", "retained": b"stats.retained"}

Reader = Callable[[], dict[str, int]]


class _MallInfo2(ctypes.Structure):
    """glibc's `struct mallinfo2`: ten size_t, summed over all arenas."""

    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _jemalloc(mallctl: Any) -> Reader:
    mallctl.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t),
                        ctypes.c_void_p, ctypes.c_size_t]
    mallctl.restype = ctypes.c_int

    def read() -> dict[str, int]:
        epoch = ctypes.c_uint64(1)
        mallctl(b"epoch", None, None, ctypes.byref(epoch), ctypes.sizeof(epoch))
        found = {}
        for kind, name in JEMALLOC_STATS.items():
            value = ctypes.c_size_t()
            size = ctypes.c_size_t(ctypes.sizeof(value))
            if mallctl(name, ctypes.byref(value), ctypes.byref(size), None, 0) == 0:
                found[kind] = value.value
        return found

    return read


def _glibc(mallinfo2: Any) -> Reader:
    mallinfo2.argtypes = []
    mallinfo2.restype = _MallInfo2

    def read() -> dict[str, int]:
        info = mallinfo2()
        # Blocks above the mmap threshold are mapped one by one: hblkhd, outside the arenas.
        return {"allocated": info.uordblks + info.hblkhd, "held": info.arena + info.hblkhd,
                "free": info.fordblks}

    return read


def allocator() -> tuple[str, Reader] | None:
    """The allocator this process runs and a reader of its byte counts, or None if neither."""
    process = ctypes.CDLL(None)
    if hasattr(process, "mallctl"):
        return "jemalloc", _jemalloc(process.mallctl)
    if hasattr(process, "mallinfo2"):
        return "glibc", _glibc(process.mallinfo2)
    return None


class AllocatorCollector(Collector):
    """`r2m_allocator_bytes{allocator,kind}` from the allocator's counts at each scrape."""

    def __init__(self) -> None:
        self._allocator = allocator()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if self._allocator is None:
            return
        name, read = self._allocator
        family = GaugeMetricFamily("r2m_allocator_bytes", HELP, labels=["allocator", "kind"])
        for kind, value in read().items():
            family.add_metric([name, kind], value)
        yield family
