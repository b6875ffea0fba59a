"""Entry point: `python -m examples.r2m_experiments --help` (from the repository root)."""

import sys

from .cli import main

sys.exit(main())
