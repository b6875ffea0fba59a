#!/usr/bin/env bash
# The one GPU run of issue 12, prepared to run once and quickly (at most 8 minutes: the steps'
# limits add up to 470 s; none of it has run on a GPU yet):
#   bench/gpu.sh [OUT_DIR]             # default: $OUT, else bench/results/gpu
#   bench/gpu.sh --dry-run [OUT_DIR]   # the same steps on the CPU, tiny model, --quick (a test)
#
# Steps, each an existing `r2m bench` subcommand in its own process and time limit, so a step
# that fails or overruns costs only its own numbers (its status lands in gpu.json):
#   1. build an 8B-like bf16 reward model from a config (`python -m r2m_bench.models
#      llama-8b-like`: Llama-3-8B's width, 4 of its 32 layers; bench/models.py says why few);
#   2. split: split vs full mode (bytes, round time, module ÷ backbone time per mode);
#   3. efficiency: HTTP ÷ in-process items/s at 32 clients;
#   4. batching: batcher on ÷ off items/s at 1, 8, 32, 128 clients (the c = 32 row is the goal).
# The module overhead is read from step 2's server histograms (module ÷ backbone time of the
# score phases) at S = 512, D_p = 4096 on the 8B-like model, and on the 12×768 BERT RM.
# Everything lands as JSON under OUT_DIR: one directory per step and gpu.json (status, GPU,
# headline table).
set -uo pipefail

dry_run=0
if [[ "${1:-}" == "--dry-run" ]]; then
    dry_run=1
    shift
fi
out_dir="${1:-${OUT:-bench/results/gpu}}"
mkdir -p "$out_dir"
out_dir="$(cd "$out_dir" && pwd)"
cd "$(dirname "$0")/.."
python="${PYTHON:-python}"
export GLIBC_TUNABLES="glibc.malloc.mmap_threshold=268435456:glibc.malloc.trim_threshold=1073741824"
export HF_HUB_OFFLINE=1

if (( dry_run )); then
    shape=tiny-llama device=cpu mode=(--quick)
    limits=(build=300 split=600 efficiency=600 batching=600)
else  # shorter load windows than the CPU defaults: a GPU reaches its steady rate in a second
    shape=llama-8b-like device=cuda mode=(--window-s 6 --rounds 2)
    limits=(build=90 split=170 efficiency=100 batching=110)
fi
limit() { local kv; for kv in "${limits[@]}"; do [[ "${kv%%=*}" == "$1" ]] && echo "${kv#*=}"; done; }

status="$out_dir/status.tsv"
: > "$status"
step() {  # step NAME COMMAND...: run with its time limit, record rc and seconds
    local name="$1"; shift
    local started=$SECONDS rc=0
    echo "== $name (limit $(limit "$name") s): $*" >&2
    timeout --kill-after=10 "$(limit "$name")" "$@" > "$out_dir/$name.log" 2>&1 || rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$(( SECONDS - started ))" >> "$status"
    tail -n 20 "$out_dir/$name.log" >&2
}

backbone="$out_dir/backbone-$shape"
step build "$python" -m r2m_bench.models "$shape" "$backbone"
common=(--device "$device" --dtype bfloat16 --backbone "$backbone" "${mode[@]}")
for name in split efficiency batching; do
    step "$name" "$python" -m r2m_bench.cli "$name" "${common[@]}" --out "$out_dir/$name"
done
rm -rf "$backbone"  # gigabytes of random weights: rebuilt in seconds when needed

"$python" - "$out_dir" "$shape" "$device" "$dry_run" <<'EOF'
"""gpu.json: what ran, how it ended, on which GPU, and every headline."""
import json
import subprocess
import sys
from pathlib import Path

out, shape, device, dry_run = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4] == "1"
steps = {}
for line in (out / "status.tsv").read_text().splitlines():
    name, rc, seconds = line.split("\t")
    steps[name] = {"rc": int(rc), "seconds": int(seconds), "timed_out": rc in ("124", "137")}
headlines = []
for name in steps:
    summary = out / name / "summary.json"
    if summary.exists():
        headlines += json.loads(summary.read_text()).get("headlines", [])
try:
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                          "--format=csv,noheader"], capture_output=True, text=True,
                         timeout=30).stdout.strip()
except (OSError, subprocess.TimeoutExpired):
    gpu = None
report = {"dry_run": dry_run, "backbone_shape": shape, "device": device, "dtype": "bfloat16",
          "gpu": gpu, "steps": steps, "headlines": headlines}
(out / "gpu.json").write_text(json.dumps(report, indent=2) + "\n")
print(json.dumps({"steps": steps, "gpu": gpu}))
EOF
