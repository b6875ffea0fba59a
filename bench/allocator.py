"""The memory allocator the image ships (Dockerfile; docs/deploy.md, "Memory"), for benchmarks
that start servers the way the image runs them.

jemalloc, preloaded, with its decay-based purging off (`dirty_decay_ms:-1`) and no separate
arena for large allocations (`oversize_threshold:0`): freed body buffers and tensors stay mapped
and are reused, as glibc's 1 GiB trim threshold kept them, so a 64 MiB body does not page-fault
fresh memory (purging cost ~45% of large-body throughput), while jemalloc's size classes keep
the reuse from fragmenting into growth (glibc's arenas grew in steps over a soak).
"""

from __future__ import annotations

from pathlib import Path

JEMALLOC_CONF = "oversize_threshold:0,dirty_decay_ms:-1,muzzy_decay_ms:-1"
# Where Debian's libjemalloc2 puts it (amd64, arm64), and the image's link to it.
JEMALLOC_PATHS = ("/usr/local/lib/libjemalloc.so.2", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
                  "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2")


def allocator_env() -> dict[str, str]:
    """The server environment for the shipped allocator; without jemalloc here, glibc with two
    arenas (the closest glibc setting), recorded by the caller in its settings."""
    library = next((path for path in JEMALLOC_PATHS if Path(path).is_file()), None)
    if library is None:
        return {"MALLOC_ARENA_MAX": "2"}
    return {"LD_PRELOAD": library, "MALLOC_CONF": JEMALLOC_CONF}


ALLOCATOR_ENV = allocator_env()
