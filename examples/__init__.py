"""Runnable examples of the r2m service (not installed; run them from the repository root)."""
