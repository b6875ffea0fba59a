"""r2m on Ray Serve: the same FastAPI app and engine as `r2m serve`, one per Serve replica.

RL stacks built on Ray (OpenRLHF, veRL) already hold a Ray cluster. Serve places r2m replicas on
it with Ray's own resource accounting (CPUs, GPUs), restarts dead ones, scales on ongoing
requests and routes HTTP through its proxy; r2m adds nothing of its own to that. Replicas share
runs through the Redis store (`redis_url`), exactly as `r2m serve` replicas behind nginx do.

    serve run deploy/ray/serve.yaml        # or `serve deploy` onto a running cluster

The config's `args` are `r2m serve` settings by field name (`R2M_*` variables in the replica's
environment apply too); replica count, CPUs, GPUs and autoscaling are Serve's own options.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve import Application
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from r2m_service.http.app import create_app
from r2m_service.logging_setup import configure_logging
from r2m_service.settings import Settings

REPLICA_HEADER = "X-R2M-Replica"

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[Any]]


@serve.deployment(name="r2m")
@serve.ingress()
class R2MReplica:
    """One Serve replica: r2m's app, built inside the replica process from plain settings."""

    def __init__(self, settings: dict[str, Any]) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never download weights at run time
        self._settings = Settings(**settings)
        configure_logging(self._settings.log_level, self._settings.log_format)

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Serve calls this in the replica, after `__init__`, then runs the app's lifespan."""
        app = create_app(self._settings)
        app.router.lifespan_context = _ready_when_loaded(app.router.lifespan_context)
        replica = serve.get_replica_context().replica_tag
        app.add_middleware(ReplicaHeader, replica=replica)
        return app


def app_builder(args: dict[str, Any]) -> Application:
    """`import_path: r2m_service.ray:app_builder`. Unknown settings fail the deploy here, on the
    caller's side, instead of being ignored in every replica."""
    unknown = sorted(set(args) - set(Settings.model_fields))
    if unknown:
        raise ValueError(f"unknown r2m settings in the Serve config's args: {unknown}")
    return R2MReplica.bind(dict(args))


def _ready_when_loaded(lifespan: Lifespan) -> Lifespan:
    """Hold the lifespan's startup until the backbone has loaded.

    Serve routes traffic to a replica as soon as its startup returns, and `create_app` loads the
    backbone in the background (so that `/healthz` answers at once under `r2m serve`). Waiting
    here means a new or restarted replica only joins once it can score, and a backbone that fails
    to load fails the replica's start, which Serve reports and retries.
    """

    @asynccontextmanager
    async def ready_when_loaded(app: FastAPI) -> AsyncIterator[Any]:
        async with lifespan(app) as state:
            while app.state.engine is None:
                if app.state.load_error is not None:
                    raise RuntimeError(f"the backbone failed to load: {app.state.load_error}")
                await asyncio.sleep(0.1)
            yield state

    return ready_when_loaded


class ReplicaHeader:
    """Names the replica that answered in `X-R2M-Replica`: behind Serve's proxy it is the only
    way to tell which replica's logs to read for a request."""

    def __init__(self, app: ASGIApp, replica: str) -> None:
        self.app = app
        self.header = (REPLICA_HEADER.lower().encode(), replica.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), self.header]
            await send(message)

        await self.app(scope, receive, send_with_header)
