#!/usr/bin/env bash
# Build the r2m image with Debian's podman, with no image registry, then prove it: run it on the
# host network bound to 127.0.0.1 with a read-only root (as deploy/k8s runs it), and check that
# /readyz answers, a score works and the server runs as uid 10001. The last line printed is a
# JSON summary.
#
#   deploy/build-image.sh              # build and check
#   deploy/build-image.sh --no-check   # build only
#
# Environment (all optional):
#   R2M_IMAGE         the tag to build (default r2m:cpu)
#   R2M_BASE_IMAGE    FROM image of both stages (default localhost/r2m-base:bookworm, made here
#                     the first time with debootstrap from Debian's archive)
#   DEBIAN_MIRROR     the archive debootstrap uses (default http://deb.debian.org/debian)
#   TORCH_VERSION     (default 2.13.0)
#   TORCH_INDEX_URL   where the build's pip gets torch. Default: a local index on 127.0.0.1 of the
#                     wheels this host's pip resolves for torch==TORCH_VERSION, which must be the
#                     CPU build (e.g. a CPU wheel in pip's find-links).
#   TORCH_INDEX_PORT  port of that local index (default 47653; fixed, so the torch layer's build
#                     argument stays the same and the layer cache holds)
#
# Needs root with podman, runc and debootstrap (apt-get install podman buildah debootstrap runc).
# Containers run under runc with raised ulimits (crun fails on hybrid cgroup hosts). The build's
# pip reaches PyPI and the local index through the host network, never a bridge network.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${R2M_IMAGE:-r2m:cpu}
BASE=${R2M_BASE_IMAGE:-localhost/r2m-base:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
RUNTIME=(--runtime runc --ulimit nofile=1024:20000 --ulimit nproc=1024:20000)
WHEELS=${XDG_CACHE_HOME:-$HOME/.cache}/r2m-build/wheels  # kept: pip skips what it already has

work=$(mktemp -d)
index_server=""
container=""
cleanup() {
  [ -n "$container" ] && podman rm -f -t 45 "$container" >/dev/null 2>&1
  [ -n "$index_server" ] && kill "$index_server" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

log() { printf '[build-image] %s\n' "$*" >&2; }

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

make_base_image() {
  if podman image exists "$BASE"; then return; fi
  log "making $BASE: debootstrap bookworm (minbase + python3, venv, useradd) from $MIRROR"
  debootstrap --variant=minbase \
    --include=python3,python3-venv,python-is-python3,ca-certificates,passwd \
    bookworm "$work/rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
    || { cat "$work/debootstrap.log" >&2; return 1; }
  rm -rf "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/lib/apt/lists/*
  tar -C "$work/rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
  rm -rf "$work/rootfs"
}

# Sets TORCH_INDEX_URL, serving a PEP 503 index of this host's torch wheels when it is unset.
serve_torch_index() {
  if [ -n "${TORCH_INDEX_URL:-}" ]; then return; fi
  mkdir -p "$WHEELS"
  python3 -m pip download -q --only-binary :all: --dest "$WHEELS" "torch==$TORCH_VERSION"
  if ! compgen -G "$WHEELS/torch-$TORCH_VERSION+cpu-*.whl" >/dev/null; then
    log "pip resolved no CPU build of torch $TORCH_VERSION; set TORCH_INDEX_URL"
    return 1
  fi
  for wheel in "$WHEELS"/*.whl; do
    name=$(basename "$wheel" | cut -d- -f1 | tr 'A-Z_.' 'a-z--')
    mkdir -p "$work/index/$name"
    ln -s "$wheel" "$work/index/$name/"
  done
  local port=${TORCH_INDEX_PORT:-47653}
  python3 -m http.server --bind 127.0.0.1 --directory "$work/index" "$port" >/dev/null 2>&1 &
  index_server=$!
  TORCH_INDEX_URL="http://127.0.0.1:$port/"
}

# Build-time mounts (never in the image): where this host's pip trusts a CA bundle of its own
# (PIP_CERT, e.g. behind a TLS-inspecting proxy), the build's pip trusts the same one.
build_mounts() {
  if [ -z "${PIP_CERT:-}" ]; then return; fi
  printf '[global]\ncert = /etc/r2m-build/ca.pem\n' >"$work/pip.conf"
  printf '%s\n' --volume "$PIP_CERT:/etc/r2m-build/ca.pem:ro" \
    --volume "$work/pip.conf:/etc/pip.conf:ro"
}

build() {
  log "building $IMAGE from $BASE (torch $TORCH_VERSION from $TORCH_INDEX_URL)"
  local mounts
  mapfile -t mounts < <(build_mounts)
  podman build --format docker --network host --layers "${RUNTIME[@]}" "${mounts[@]}" \
    --build-arg BASE_IMAGE="$BASE" \
    --build-arg TORCH_VERSION="$TORCH_VERSION" \
    --build-arg TORCH_INDEX_URL="$TORCH_INDEX_URL" \
    --tag "$IMAGE" . >&2
}

# Runs the image as deploy/k8s does (read-only root, only /tmp writable) and checks it answers.
check() {
  local port
  port=$(free_port)
  container="r2m-check-$$"
  podman run --detach --name "$container" "${RUNTIME[@]}" --network host \
    --read-only --read-only-tmpfs=false --tmpfs /tmp \
    --env R2M_HOST=127.0.0.1 --env R2M_PORT="$port" "$IMAGE" >/dev/null
  local pid
  pid=$(podman inspect --format '{{.State.Pid}}' "$container")
  local uid
  uid=$(awk '/^Uid:/ {print $2}' "/proc/$pid/status")
  if ! python3 - "http://127.0.0.1:$port" "$IMAGE" "$uid" <<'EOF'; then
import base64, json, struct, sys, time, urllib.error, urllib.request

url, image, uid = sys.argv[1], sys.argv[2], int(sys.argv[3])

def call(path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, json.loads(response.read())

deadline = time.monotonic() + 300
while True:
    try:
        ready = call("/readyz")[0]
        break
    except (urllib.error.URLError, ConnectionError):
        if time.monotonic() > deadline:
            raise
        time.sleep(1)
run = call("/v1/runs", {"policy_hidden_size": 8, "total_steps": 10})[1]
hidden = {"dtype": "float32", "shape": [3, 8],
          "data": base64.b64encode(struct.pack("<24f", *[0.1 * i for i in range(24)])).decode()}
scored = call("/v1/score", {"run_id": run["run_id"], "step": 1, "items": [
    {"prompt": "Say hello.", "response": "Hello!", "hidden_states": hidden},
    {"prompt": "Say hello.", "response": "Go away."}]})[1]
assert ready == 200 and len(scored["rewards"]) == 2 and uid != 0, (scored, uid)
print(json.dumps({"image": image, "readyz": ready, "rewards": scored["rewards"], "uid": uid}))
EOF
    podman logs "$container" >&2
    return 1
  fi
}

make_base_image
serve_torch_index
previous=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
started=$SECONDS
build
log "built $IMAGE in $((SECONDS - started)) s"
if [ -n "$previous" ] && [ "$previous" != "$(podman image inspect --format '{{.Id}}' "$IMAGE")" ]; then
  podman rmi "$previous" >/dev/null 2>&1 || true  # the image this tag replaced, unless in use
fi
if [ "${1:-}" != "--no-check" ]; then
  check
fi
