"""The paper's experiments in miniature: a real RLOO loop that gets its rewards from an r2m
service through the public client only, with a gold reward to make overoptimization measurable.

Run `python -m examples.r2m_experiments --help` from the repository root (EXPERIMENTS.md).
"""
