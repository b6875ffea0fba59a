"""Request ids, the access log and per-route latency/failure metrics, as one pure ASGI middleware
(bodies stream through untouched).

A trainer that sends `X-Request-ID` can find its request in the service's logs (and the id comes
back on the response either way), so one id follows a call from the client through a load
balancer into every log record the request caused. Ids that could smuggle text into a log line are
replaced, not trusted. The access log is one structured record per request, naming the API key
(by its name in the key file) that made it; probe and scrape routes log at debug so a health
check every few seconds does not bury the traffic.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from r2m_proto.media import REQUEST_ID_HEADER
from r2m_service.logging_setup import request_id_var
from r2m_service.metrics import Metrics

access_log = logging.getLogger("r2m.access")

_HEADER = REQUEST_ID_HEADER.lower().encode()
_SAFE_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
_QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def accept_request_id(value: bytes | None) -> str:
    """The caller's id when it is short and printable; otherwise a fresh one."""
    if value is not None:
        text = value.decode("latin-1")
        if _SAFE_ID.fullmatch(text):
            return text
    return uuid.uuid4().hex


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = dict(scope["headers"]).get(_HEADER)
        request_id = accept_request_id(sent)
        # Not reset afterwards: each request runs in its own task (its own context), and the
        # app's last-resort 500 handler runs outside this middleware and should still log the id.
        request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != _HEADER]
                message = {**message, "headers": [*headers, (_HEADER, request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", "unmatched")  # the template: few series
            self.metrics.request_duration.labels(route).observe(seconds)
            if status >= 400:
                self.metrics.request_failures.labels(route, str(status)).inc()
            path = scope.get("path", "")
            access_log.log(
                logging.DEBUG if path in _QUIET_PATHS else logging.INFO,
                "%s %s %d", scope.get("method", ""), path, status,
                extra={"method": scope.get("method", ""), "path": path, "status": status,
                       "duration_ms": round(seconds * 1000, 3),
                       "client": (scope.get("client") or ("", 0))[0],
                       "key": scope.get("state", {}).get("api_key_name")})
