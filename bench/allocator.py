"""The memory allocator the image ships (Dockerfile; docs/deploy.md, "Memory"), for benchmarks
that start servers the way the image runs them.

jemalloc, preloaded, with no separate arena for large allocations (`oversize_threshold:0`) and
its purging done by a background thread (`background_thread:true`) on the default decay (pages
unused for ~10 s). jemalloc's default arena for large allocations purges a freed 64 MiB body at
once, so the next one page-faults fresh memory (~45% of large-body throughput); on the normal
decay a steady stream of bodies reuses the same pages (0.97× the throughput of never purging,
measured interleaved), while a one-off peak goes back to the OS instead of staying in RSS for
ever, which is what made RSS grow in steps over a soak with purging off (bench/RESULTS.md).
"""

from __future__ import annotations

from pathlib import Path

JEMALLOC_CONF = "oversize_threshold:0,background_thread:true"
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
