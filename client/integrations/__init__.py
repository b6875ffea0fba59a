"""Adapters that plug r2m into RL trainers: each one speaks its framework's own extension point.

- `r2m_client.integrations.trl`: a TRL `GRPOTrainer` subclass (R2M with hidden states) and a
  reward function.
- `r2m_client.integrations.verl`: a veRL custom reward function (`compute_score`).
- OpenRLHF needs no adapter: point `--reward.remote_url` at the service's `/get_reward`.

Each module imports its framework, so none is imported here; `import r2m_client` stays light.
"""
