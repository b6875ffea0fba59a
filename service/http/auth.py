"""API-key auth as FastAPI dependencies: who may score, who may train a run, who may delete or
export one.

Many training jobs share one service, so a key says what its holder may do:

- `score`   POST /v1/score, POST /v1/split/{query,score}, POST /get_reward (OpenRLHF),
            GET /v1/runs/{id}, GET /v1/info
- `update`  POST /v1/update, POST /v1/split/{gradient,update}, POST /v1/runs
- `admin`   DELETE /v1/runs/{id}, GET and PUT /v1/runs/{id}/checkpoint, and everything above
- `metrics` GET /metrics, only when `R2M_METRICS_AUTH` is on (a scraper needs nothing else)

`/healthz` and `/readyz` are always open: orchestrators probe them without credentials. No key
configured at all: everything is open, and start-up says so loudly. A missing or unknown key is
401, a known key without the scope is 403, both with the `WWW-Authenticate` challenge of RFC 6750.
The key itself is never logged or echoed; only its name from the key file reaches the access log.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from r2m_proto.errors import ErrorCode, WireError
from r2m_service.api_keys import ApiKey, KeyRing, Scope
from r2m_service.http.errors import error_response
from r2m_service.settings import Settings

log = logging.getLogger(__name__)

REALM = "r2m"

__all__ = ["AuthError", "Scope", "announce", "authorize", "install_auth", "require"]


class AuthError(WireError):
    """A 401/403 that carries its `WWW-Authenticate` challenge."""

    def __init__(self, message: str, code: ErrorCode, challenge: str,
                 key: ApiKey | None = None) -> None:
        super().__init__(message, None, code)
        self.challenge = challenge
        self.key = key


def authorize(keyring: KeyRing, authorization: str | None, scope: Scope) -> ApiKey | None:
    """The key allowed `scope` (None when auth is off), or raise 401 or 403."""
    if not keyring.enabled:
        return None
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthError("missing API key: send `Authorization: Bearer <key>`",
                        ErrorCode.UNAUTHORIZED, f'Bearer realm="{REALM}"')
    key = keyring.find(token)
    if key is None:
        raise AuthError("invalid API key", ErrorCode.UNAUTHORIZED,
                        f'Bearer realm="{REALM}", error="invalid_token"')
    if not key.allows(scope):
        raise AuthError(f"this API key lacks the {scope.value!r} scope", ErrorCode.FORBIDDEN,
                        f'Bearer realm="{REALM}", error="insufficient_scope", '
                        f'scope="{scope.value}"', key)
    return key


def require(scope: Scope) -> Any:
    """A route dependency: the request must carry a key with `scope` (when keys are set)."""

    async def check(request: Request) -> None:  # async: no thread hop (http/routes.py)
        keyring: KeyRing = request.app.state.keyring
        if scope is Scope.METRICS and not keyring.metrics_auth:
            return
        key = authorize(keyring, request.headers.get("authorization"), scope)
        if key is not None:
            request.state.api_key_name = key.name

    return Depends(check)


def install_auth(app: FastAPI, settings: Settings) -> KeyRing:
    """Load the keys (a bad key file stops start-up) and answer auth errors with a challenge."""
    keyring = KeyRing.from_settings(settings)
    app.state.keyring = keyring

    @app.exception_handler(AuthError)
    async def _auth(request: Request, exc: AuthError) -> JSONResponse:
        if exc.key is not None:
            request.state.api_key_name = exc.key.name
        return error_response(exc.code, exc.message,
                              headers={"WWW-Authenticate": exc.challenge})

    return keyring


def announce(keyring: KeyRing) -> None:
    """Say at start-up whether the service is protected; loudly when it is not."""
    if keyring.enabled:
        log.info("auth on: %d API keys (%s); /metrics %s", len(keyring.keys),
                 ", ".join(k.name for k in keyring.keys),
                 "needs the metrics scope" if keyring.metrics_auth else "is open")
        return
    log.warning("AUTH DISABLED: no API keys configured (R2M_API_KEYS_FILE / R2M_API_KEYS), so "
                "anyone who can reach this port can score, train and delete runs. Create keys "
                "with `r2m keys new` before exposing the service beyond localhost.")
