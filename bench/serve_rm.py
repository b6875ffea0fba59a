"""r2m side by side with OpenRLHF's `serve_rm` (issue 11): the same bf16 reward model, the same
`/get_reward` bodies, the same load, measured alternately in one process.

What runs as `serve_rm`: OpenRLHF's own `python -m openrlhf.cli.serve_rm`, unchanged (the
`openrlhf` package of the CI venv, 0.11.x), with `--ds.attn_implementation sdpa` (its default,
flash_attention_2, needs a GPU). It imports two GPU-only packages at module level:
- `flash_attn` (for ring attention and sample packing, neither used when serving). It cannot be
  installed on a CPU-only host: its build needs CUDA, and without the CUDA build the package
  fails at import. A stub package written here stands in for the four names imported; they raise
  if ever called, and serving never calls them.
- `deepspeed` (ZeRO-3 loading, unused when serving), and `peft`, `accelerate` (for
  `device_map="auto"`): real CPU installs, kept out of the project's venv in `build/`:

    DS_BUILD_OPS=0 .venv/bin/pip install --no-deps --no-build-isolation \\
        --target build/serve-rm-site peft accelerate deepspeed hjson py-cpuinfo ninja einops msgpack

Both servers get the same torch thread count. The model is a random LlamaForSequenceClassification
with OpenRLHF's head name (`score`, no bias), loaded as bfloat16 by both (serve_rm's default
dtype; r2m `--dtype bfloat16`). The body is OpenRLHF's: `query` = prompt + response, and
`prompts`, which r2m uses to split the pair and serve_rm ignores. The results add each server's
resident memory (VmRSS) after the matrix, and r2m's RTE cache bytes at that point.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from r2m_bench.common import RESULTS_DIR, Headline, MiB, write_result
from r2m_bench.latency_under_load import (
    Target,
    compare,
    comparison_headlines,
    get_reward_route,
    scenario_settings,
)
from r2m_bench.models import BackboneShape, build_backbone
from r2m_bench.servers import ServerPool, ServerSpec, scrape, torch_threads
from r2m_service.launch import free_port

SITE = Path("build/serve-rm-site")
SHAPE = BackboneShape(layers=4, hidden=256, heads=4, intermediate=1024, max_length=256,
                      arch="llama", kv_heads=2, positions=512)
QUICK_SHAPE = BackboneShape(layers=1, hidden=32, heads=4, intermediate=64, max_length=128,
                            arch="llama", kv_heads=2, positions=128)
# the names OpenRLHF imports from flash_attn; serving without packing never calls them
_FLASH_ATTN_STUB = {
    "__init__.py": '"""Stand-in for a GPU-only package (see r2m_bench.serve_rm)."""\n',
    "bert_padding.py": (
        "def _gpu_only(*args, **kwargs):\n"
        "    raise NotImplementedError('flash_attn is GPU-only; this stub only satisfies "
        "imports')\n\n\n"
        "index_first_axis = pad_input = rearrange = unpad_input = _gpu_only\n"),
    "utils/__init__.py": "",
    "utils/distributed.py": "from flash_attn.bert_padding import _gpu_only as all_gather\n",
}


def run(quick: bool = False, out_dir: Path = RESULTS_DIR, pool: ServerPool | None = None
        ) -> dict[str, Any]:
    if not (SITE / "deepspeed").is_dir():
        raise RuntimeError(f"serve_rm needs its CPU dependencies in {SITE}: see `python -m "
                           "pydoc r2m_bench.serve_rm` for the one pip command")
    shape = QUICK_SHAPE if quick else SHAPE
    model = build_backbone(shape)
    spec = ServerSpec(backbone=str(model), extra=("--dtype", "bfloat16"))
    settings = scenario_settings(quick)
    settings["repeats"] = 1 if quick else 5
    settings.update({"model": shape.record(), "dtype": "bfloat16",
                     "torch_threads": torch_threads(), "r2m_server": spec.record(),
                     "serve_rm": "python -m openrlhf.cli.serve_rm --ds.attn_implementation "
                                 "sdpa (OpenRLHF 0.11, flash_attn stubbed: see the docstring)",
                     "route": "/get_reward on both", "cache": "cold (unique texts)"})
    own_pool = pool is None
    pool = pool or ServerPool()
    try:
        with tempfile.TemporaryDirectory(prefix="r2m-serve-rm-") as tmp:
            serve_rm = _start_serve_rm(model, Path(tmp))
            try:
                r2m = pool.get(spec)
                targets = [Target("r2m", r2m.url, get_reward_route),
                           Target("serve_rm", serve_rm[0], get_reward_route)]
                results = compare(targets, settings)
                results["rss_mib_after_matrix"] = {"r2m": _rss_mib(r2m.process.pid),
                                                   "serve_rm": _rss_mib(serve_rm[1].pid)}
                results["r2m_score_batch_tokens"] = httpx.get(
                    f"{r2m.url}/v1/info").json()["score_batch_tokens"]
                results["r2m_rte_cache_mib"] = scrape(r2m.url).get(
                    ("r2m_store_bytes", (("kind", "rte_cache"),)), 0.0) / MiB
            finally:
                serve_rm[1].terminate()
                serve_rm[1].wait(30)
    finally:
        if own_pool:
            pool.close()
    headlines = comparison_headlines("serve_rm", settings, results, "r2m", "serve_rm")
    headlines += [Headline("serve_rm", f"{name}: RSS after the matrix", mib, "MiB",
                           higher_is_better=False)
                  for name, mib in results["rss_mib_after_matrix"].items()]
    path = write_result("serve_rm", settings, results, out_dir, headlines)
    return {"path": str(path), "headlines": headlines, **results}


def _start_serve_rm(model: Path, tmp: Path, timeout_s: float = 300.0
                    ) -> tuple[str, subprocess.Popen[bytes]]:
    """OpenRLHF's serve_rm on a free loopback port, ready once `/get_reward` answers."""
    for name, text in _FLASH_ATTN_STUB.items():
        path = tmp / "stubs" / "flash_attn" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{SITE.resolve()}:{tmp / 'stubs'}",
           "OMP_NUM_THREADS": str(torch_threads()), "PYTHONUNBUFFERED": "1"}
    with (tmp / "serve_rm.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "openrlhf.cli.serve_rm", "--reward.model_name_or_path",
             str(model), "--ds.attn_implementation", "sdpa", "--host", "127.0.0.1", "--port",
             str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"serve_rm exited with {process.returncode}:\n"
                               f"{(tmp / 'serve_rm.log').read_text(errors='replace')[-3000:]}")
        try:
            if httpx.post(f"{url}/get_reward", json={"query": ["warm-up"]},
                          timeout=30).status_code == 200:
                return url, process
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"serve_rm was not ready within {timeout_s:.0f}s")


def _rss_mib(pid: int) -> float:
    """Resident memory of a process, from /proc (MiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")

