"""Where run state lives: in this process (default) or in Redis (many replicas, one truth).

Everything above `StateStore` — the run directory, the engine, the routes — is the same for both.
"""

from r2m_service.state.base import (
    Buffers,
    RunIdTaken,
    StateEncoder,
    StateStore,
    StoredRun,
    StoreUnavailable,
    UpdateTransaction,
)

__all__ = ["Buffers", "RunIdTaken", "StateEncoder", "StateStore", "StoreUnavailable", "StoredRun",
           "UpdateTransaction"]
