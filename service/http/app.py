"""App assembly: settings in, a FastAPI app out; the backbone loads in the background.

/healthz answers at once; /readyz and the model routes answer 503 until the backbone is loaded,
so an orchestrator can tell "starting" from "dead".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI

from r2m_service import __version__
from r2m_service.backbone import Backbone
from r2m_service.engine import Engine
from r2m_service.http.errors import install_error_handlers
from r2m_service.http.openapi import install_openapi
from r2m_service.http.routes import router
from r2m_service.http.timing import TimingMiddleware
from r2m_service.metrics import Metrics
from r2m_service.settings import Settings

log = logging.getLogger(__name__)


def load_engine(settings: Settings, metrics: Metrics) -> Engine:
    if settings.torch_threads is not None:
        torch.set_num_threads(settings.torch_threads)
    backbone = Backbone(settings.backbone, device=settings.device, dtype=settings.dtype,
                        max_length=settings.max_length, max_batch_size=settings.max_batch_size)
    log.info("backbone ready: %s (%s, D_rm=%d, max_length=%d)", backbone.name, backbone.kind,
             backbone.hidden_size, backbone.max_length)
    return Engine(backbone, metrics, rte_cache_size=settings.rte_cache_size,
                  idempotency_ttl_s=settings.idempotency_ttl_s)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(asyncio.to_thread(load_engine, settings, metrics))

        def ready(task: asyncio.Task[Engine]) -> None:
            if not task.cancelled() and task.exception() is None:
                app.state.engine = task.result()
            elif not task.cancelled():
                app.state.load_error = f"{type(task.exception()).__name__}: {task.exception()}"
                log.error("backbone failed to load", exc_info=task.exception())

        loading.add_done_callback(ready)
        yield
        if not loading.done():
            await asyncio.wait([loading])
        if app.state.engine is not None:
            app.state.engine.close()

    app = FastAPI(title="r2m", version=__version__, lifespan=lifespan,
                  description="Reward model as a service with R2M policy feedback "
                              "(score and online update over HTTP).")
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.engine = None
    app.state.load_error = None
    app.include_router(router)
    install_error_handlers(app)
    install_openapi(app)
    app.add_middleware(TimingMiddleware, metrics=metrics)
    return app
