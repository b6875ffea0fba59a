"""r2m benchmarks (`r2m bench …`): each writes JSON with the machine, versions and settings, and
compares ratios measured in the same run, because shared machines are noisy."""
