"""Why a trainer framework is missing, for the integration tests' skip reasons.

`.ci/run` installs each framework and, when the install fails, keeps pip's output in
`build/install-<name>.log`; a test that skips quotes its end, so the CI log says why.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOG_LINES = 15


def why_missing(name: str, hint: str) -> str:
    """The tail of the failed install's log, or `hint` (how to install it) when none was tried."""
    log = ROOT / "build" / f"install-{name}.log"
    if log.exists():
        return f"{name} could not be installed:\n" + "\n".join(
            log.read_text(errors="replace").splitlines()[-LOG_LINES:])
    return f"{name} is not installed ({hint})"
