"""App assembly: settings in, a FastAPI app out; the backbone loads in the background.

/healthz answers at once; /readyz and the model routes answer 503 until the backbone is loaded,
so an orchestrator can tell "starting" from "dead".
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI

from r2m_service import __version__
from r2m_service.backbone import Backbone
from r2m_service.engine import Engine
from r2m_service.http.auth import announce, install_auth
from r2m_service.http.docs_ui import install_docs_ui
from r2m_service.http.errors import install_error_handlers
from r2m_service.http.openapi import install_openapi
from r2m_service.http.openrlhf import router as openrlhf_router
from r2m_service.http.request_context import RequestContextMiddleware
from r2m_service.http.routes import router
from r2m_service.http.split_routes import router as split_router
from r2m_service.metrics import Metrics
from r2m_service.settings import Settings
from r2m_service.state.factory import open_store

log = logging.getLogger(__name__)


def load_engine(settings: Settings, metrics: Metrics) -> Engine:
    if settings.torch_threads is not None:
        torch.set_num_threads(settings.torch_threads)
    backbone = Backbone(settings.backbone, device=settings.device, dtype=settings.dtype,
                        max_length=settings.max_length, max_batch_size=settings.max_batch_size,
                        max_batch_tokens=settings.max_batch_tokens)
    log.info("backbone ready: %s (%s, D_rm=%d, max_length=%d)", backbone.name, backbone.kind,
             backbone.hidden_size, backbone.max_length)
    return Engine(backbone, metrics, settings, open_store(settings, metrics))


async def start_engine(settings: Settings, metrics: Metrics) -> Engine:
    """Load the backbone off the event loop, then connect the store and restore runs."""
    engine = await asyncio.to_thread(load_engine, settings, metrics)
    await engine.start()
    freeze_startup_heap()
    return engine


def freeze_startup_heap() -> None:
    """Take what start-up left alive (torch, transformers, the backbone, restored runs: about a
    million objects) out of the cyclic garbage collector's reach. Requests keep adding cached
    tensors, which keeps triggering full collections, and each would walk all of it again:
    pauses of ~0.2 s, several µs per scored item (bench/RESULTS.md, "Overhead per item")."""
    gc.collect()
    gc.freeze()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        announce(app.state.keyring)
        log.info("r2m %s starting: loading backbone %s on %s", __version__,
                 settings.backbone or "(embedded default)", settings.device)
        loading = asyncio.create_task(start_engine(settings, metrics))
        progress = asyncio.create_task(_log_loading_progress(loading))

        def ready(task: asyncio.Task[Engine]) -> None:
            if not task.cancelled() and task.exception() is None:
                app.state.engine = task.result()
            elif not task.cancelled():
                app.state.load_error = f"{type(task.exception()).__name__}: {task.exception()}"
                log.error("backbone failed to load", exc_info=task.exception())

        loading.add_done_callback(ready)
        yield
        log.info("shutting down: in-flight requests have drained, stopping the model thread")
        progress.cancel()
        if not loading.done():
            await asyncio.wait([loading])
        if app.state.engine is not None:
            await app.state.engine.close()

    app = FastAPI(title="r2m", version=__version__, lifespan=lifespan,
                  description="Reward model as a service with R2M policy feedback "
                              "(score and online update over HTTP).")
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.engine = None
    app.state.load_error = None
    app.state.draining = False  # set on SIGTERM (http/drain.py): /readyz fails first
    app.include_router(router)
    app.include_router(openrlhf_router)
    app.include_router(split_router)
    install_error_handlers(app)
    install_auth(app, settings)
    install_openapi(app)
    install_docs_ui(app)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    return app


async def _log_loading_progress(loading: asyncio.Task[Engine], every_s: float = 5.0) -> None:
    """Say the backbone is still loading, so a slow start (a large model, a cold disk) is not
    mistaken for a hang by whoever watches the logs."""
    started = time.monotonic()
    while not loading.done():
        await asyncio.wait([loading], timeout=every_s)
        if not loading.done():
            log.info("backbone still loading (%.0f s)", time.monotonic() - started)
