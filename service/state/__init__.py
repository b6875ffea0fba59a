"""Where run state lives: in this process (default) or in Redis (many replicas, one truth).

Everything above `StateStore` — the engine, the routes — is the same for both.
"""

from r2m_service.state.base import RunLock, StateStore, StoreUnavailable

__all__ = ["RunLock", "StateStore", "StoreUnavailable"]
