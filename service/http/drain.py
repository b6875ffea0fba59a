"""Graceful stop for rolling restarts: SIGTERM → `/readyz` answers 503 for `drain_s` (load
balancers and orchestrators stop routing here while requests still succeed) → uvicorn's own
shutdown: stop accepting, finish in-flight requests (up to its graceful timeout), exit.

Without the first phase a replica vanishes from under its balancer at once, and every request
already routed to it, or sent on a kept-alive connection, fails. A second signal stops at once.
"""

from __future__ import annotations

import logging
import threading
from types import FrameType

import uvicorn
from starlette.datastructures import State

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app_state: State, drain_s: float) -> None:
        super().__init__(config)
        self._app_state = app_state
        self._drain_s = drain_s
        self._timer: threading.Timer | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._timer is not None or self._drain_s <= 0:
            super().handle_exit(sig, frame)
            return
        self._app_state.draining = True
        log.info("signal %d: /readyz now answers 503; draining for %.1fs, then finishing "
                 "in-flight requests and exiting", sig, self._drain_s)
        self._timer = threading.Timer(self._drain_s, super().handle_exit, (sig, frame))
        self._timer.daemon = True
        self._timer.start()
