"""`r2m bench [NAME|all] [--quick] [--out DIR]`: run benchmarks, write JSON, print a short table.

All benchmarks of one invocation share a pool of servers (identical specs start once), and the
table lists each benchmark's headline numbers next to the issue's targets. `--quick` is the CI
mode: small shapes and short windows, numbers only good for checking that everything runs.
Servers run the allocator the image ships (bench/allocator.py: jemalloc with `MALLOC_CONF`); run
this command under the same two variables for in-process numbers comparable to the servers'.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from r2m_bench.allocator import ALLOCATOR_ENV
from r2m_bench.common import RESULTS_DIR, Headline, write_result
from r2m_bench.servers import (
    ServerPool,
    ServerSpec,
    Target,
    set_target,
    set_torch_threads,
    torch_threads,
)

BENCHMARKS = ("efficiency", "overhead", "wire", "batching", "update", "overhead_per_item")
EXTRA = ("score_latency", "scale_out", "split", "overlap", "get_reward", "soak", "paper_state",
         "latency_under_load", "serve_rm")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="r2m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", nargs="*", default=["all"], choices=("all", *BENCHMARKS, *EXTRA),
                        help="benchmarks to run in one server pool, or all of the core ones "
                             "(default)")
    parser.add_argument("--quick", action="store_true", help="CI mode: small and fast")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR,
                        help=f"directory for the JSON results (default {RESULTS_DIR})")
    parser.add_argument("--minutes", type=float, default=None,
                        help="soak only: how long to hold the load (default 10, quick 1)")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="overhead_per_item only: an older r2m checkout to run alongside, "
                             "call by call, for a before/after")
    parser.add_argument("--device", default=Target.device,
                        help="torch device of servers and in-process baselines, e.g. cuda")
    parser.add_argument("--dtype", default=Target.dtype,
                        choices=("float32", "bfloat16", "float16"), help="backbone dtype")
    parser.add_argument("--backbone", default=None,
                        help="model dir the servers and baselines load (default: embedded); "
                             "`python -m r2m_bench.models` builds one from a config")
    parser.add_argument("--window-s", type=float, default=None,
                        help="efficiency and batching only: seconds of each load window "
                             "(default: their own; bench/gpu.sh shortens them)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="efficiency and batching only: alternating rounds (default: theirs)")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch threads of servers and in-process baselines "
                             "(default: all cores but one)")
    args = parser.parse_args(argv)
    names = BENCHMARKS if "all" in args.name else tuple(args.name)
    set_target(Target(args.device, args.dtype, args.backbone))
    if args.torch_threads is not None:
        set_torch_threads(args.torch_threads)
    if any(os.environ.get(name) != value for name, value in ALLOCATOR_ENV.items()):
        print("note: this process does not run the servers' allocator "
              f"({' '.join(f'{k}={v}' for k, v in ALLOCATOR_ENV.items())}), so in-process "
              "baselines allocate differently (see --help)", file=sys.stderr)

    headlines: list[Headline] = []
    timings: dict[str, float] = {}
    started = time.perf_counter()
    with ServerPool() as pool:
        if "batching" in names or len(names) > 1:  # the two servers most benchmarks share
            pool.prestart([ServerSpec(), ServerSpec(batching=False)] if "batching" in names
                          else [ServerSpec()])
        for name in names:
            t0 = time.perf_counter()
            module = importlib.import_module(f"r2m_bench.{name}")
            options = {"minutes": args.minutes} if args.minutes is not None else {}
            if args.baseline is not None and name == "overhead_per_item":
                options["baseline"] = args.baseline
            if name in ("efficiency", "batching"):
                options.update({"window_s": args.window_s, "rounds": args.rounds})
            result = module.run(quick=args.quick, out_dir=args.out, pool=pool, **options)
            timings[name] = time.perf_counter() - t0
            headlines += result.get("headlines", [])
            print(f"[{name}] {time.perf_counter() - t0:.1f}s -> {result['path']}",
                  file=sys.stderr, flush=True)
    summary: dict[str, Any] = {"benchmarks": list(names), "seconds": timings,
                               "total_seconds": time.perf_counter() - started}
    write_result("summary", {"names": list(names), "quick": args.quick,
                             "torch_threads": torch_threads()}, summary, args.out, headlines)
    print(format_table(headlines))
    return 0


def format_table(headlines: Sequence[Headline]) -> str:
    """Benchmark | metric | value | target | status, as fixed-width text."""
    rows = [("benchmark", "metric", "value", "target", "")]
    for h in headlines:
        op = "≥" if h.higher_is_better else "≤"
        target = "" if h.target is None else f"{op} {_number(h.target)}{h.unit}"
        status = {None: "", True: "met", False: "MISSED"}[h.met]
        rows.append((h.benchmark, h.metric, f"{_number(h.value)} {h.unit}".strip(), target,
                     status))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths).rstrip())
    return "\n".join(lines)


def _number(x: float) -> str:
    if x == 0 or 0.01 <= abs(x) < 10_000:
        return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"
    return f"{x:.2e}" if abs(x) < 0.01 else f"{x:.0f}"


if __name__ == "__main__":
    sys.exit(main())
