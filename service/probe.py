"""`python -m r2m_service.probe [/healthz|/readyz]`: exit 0 when the local service answers 200.

For container health checks: the slim image has no curl, and this imports only the standard
library, so a probe every few seconds costs milliseconds, not a torch import. It reads the port
from `R2M_PORT`, like the service, so one image works whatever port it is given.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def probe(path: str = "/healthz", port: int | None = None, timeout_s: float = 3.0) -> bool:
    port = port or int(os.environ.get("R2M_PORT", "8000"))
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout_s) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def main(argv: list[str]) -> int:
    path = argv[0] if argv else "/healthz"
    if path not in ("/healthz", "/readyz"):
        print(f"probe: unknown path {path!r}; use /healthz or /readyz", file=sys.stderr)
        return 2
    return 0 if probe(path) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
