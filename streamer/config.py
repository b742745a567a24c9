"""Deployment configuration, read once from the environment.

Every knob is a `STREAMER_*` variable so the same image runs under docker compose,
Kubernetes and the tests; the README lists them all. Secrets (signing and encryption
keys) come from the environment too, never from a topic.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field


def _env(name: str, default: str) -> str:
    return os.environ.get(f"STREAMER_{name}", default)


def _bool(name: str, default: bool) -> bool:
    return _env(name, "1" if default else "0").strip().lower() in {"1", "true", "yes", "on"}


def parse_keyring(text: str) -> dict[str, bytes]:
    """Parse `kid:base64key,kid2:base64key` into {kid: key}; the first entry is the active key."""
    keys: dict[str, bytes] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        kid, sep, b64 = part.partition(":")
        if not sep or not kid:
            raise ValueError(f"keyring entry {kid!r} must look like 'key_id:base64key'")
        keys[kid] = base64.b64decode(b64)
    return keys


@dataclass(frozen=True)
class Config:
    bootstrap_servers: str = "127.0.0.1:9092"
    app_id: str = "streamer"
    topic_prefix: str = ""
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    data_dir: str = ".local/worker"
    signing_keys: dict[str, bytes] = field(default_factory=dict)
    encryption_keys: dict[str, bytes] = field(default_factory=dict)
    allow_private_destinations: bool = False
    command_max_age_s: float = 300.0
    max_message_bytes: int = 40 * 1024 * 1024
    retry_horizon_s: float = 7 * 24 * 3600.0
    inline_retries: int = 2
    retry_base_s: float = 0.2
    retry_max_backoff_s: float = 300.0
    http_timeout_s: float = 10.0
    delivery_deadline_s: float = 5.0
    destination_concurrency: int = 4
    breaker_failures: int = 5
    breaker_reset_s: float = 10.0
    batch_max: int = 500
    batch_linger_s: float = 0.05
    batches_in_flight: int = 2
    batch_max_bytes: int = 64 * 1024 * 1024
    queue_max_bytes: int = 64 * 1024 * 1024
    produce_max_inflight_bytes: int = 64 * 1024 * 1024
    retry_hold_max_bytes: int = 64 * 1024 * 1024
    liveness_stall_s: float = 300.0
    gc_gen0_threshold: int = 50_000
    s3_endpoint_url: str | None = None
    s3_destination_concurrency: int = 32  # most concurrent PUTs per S3 destination (adaptive below it)
    shutdown_grace_s: float = 20.0
    session_timeout_s: float = 10.0
    instance_id: str | None = None
    topic_replication_factor: int = 1
    topic_min_insync_replicas: int | None = None
    status_interval_s: float = 2.0  # a destination's status row is published at most this often
    notify_min_interval_s: float = 300.0  # at most one notification per destination this often
    log_level: str = "info"

    @classmethod
    def from_env(cls) -> "Config":
        return cls(
            bootstrap_servers=_env("BOOTSTRAP_SERVERS", cls.bootstrap_servers),
            app_id=_env("APP_ID", cls.app_id),
            topic_prefix=_env("TOPIC_PREFIX", cls.topic_prefix),
            web_host=_env("WEB_HOST", cls.web_host),
            web_port=int(_env("WEB_PORT", str(cls.web_port))),
            data_dir=_env("DATA_DIR", cls.data_dir),
            signing_keys=parse_keyring(_env("SIGNING_KEYS", "")),
            encryption_keys=parse_keyring(_env("ENCRYPTION_KEYS", "")),
            allow_private_destinations=_bool("ALLOW_PRIVATE_DESTINATIONS", False),
            command_max_age_s=float(_env("COMMAND_MAX_AGE_S", str(cls.command_max_age_s))),
            max_message_bytes=int(_env("MAX_MESSAGE_BYTES", str(cls.max_message_bytes))),
            retry_horizon_s=float(_env("RETRY_HORIZON_S", str(cls.retry_horizon_s))),
            inline_retries=int(_env("INLINE_RETRIES", str(cls.inline_retries))),
            retry_base_s=float(_env("RETRY_BASE_S", str(cls.retry_base_s))),
            retry_max_backoff_s=float(_env("RETRY_MAX_BACKOFF_S", str(cls.retry_max_backoff_s))),
            http_timeout_s=float(_env("HTTP_TIMEOUT_S", str(cls.http_timeout_s))),
            delivery_deadline_s=float(_env("DELIVERY_DEADLINE_S", str(cls.delivery_deadline_s))),
            destination_concurrency=int(_env("DESTINATION_CONCURRENCY", str(cls.destination_concurrency))),
            breaker_failures=int(_env("BREAKER_FAILURES", str(cls.breaker_failures))),
            breaker_reset_s=float(_env("BREAKER_RESET_S", str(cls.breaker_reset_s))),
            batch_max=int(_env("BATCH_MAX", str(cls.batch_max))),
            batch_linger_s=float(_env("BATCH_LINGER_S", str(cls.batch_linger_s))),
            batches_in_flight=max(1, int(_env("BATCHES_IN_FLIGHT", str(cls.batches_in_flight)))),
            batch_max_bytes=int(_env("BATCH_MAX_BYTES", str(cls.batch_max_bytes))),
            queue_max_bytes=int(_env("QUEUE_MAX_BYTES", str(cls.queue_max_bytes))),
            produce_max_inflight_bytes=int(_env("PRODUCE_MAX_INFLIGHT_BYTES", str(cls.produce_max_inflight_bytes))),
            retry_hold_max_bytes=int(_env("RETRY_HOLD_MAX_BYTES", str(cls.retry_hold_max_bytes))),
            liveness_stall_s=float(_env("LIVENESS_STALL_S", str(cls.liveness_stall_s))),
            gc_gen0_threshold=int(_env("GC_GEN0_THRESHOLD", str(cls.gc_gen0_threshold))),
            s3_endpoint_url=_env("S3_ENDPOINT_URL", "") or None,
            s3_destination_concurrency=max(1, int(_env("S3_DESTINATION_CONCURRENCY", str(cls.s3_destination_concurrency)))),
            shutdown_grace_s=float(_env("SHUTDOWN_GRACE_S", str(cls.shutdown_grace_s))),
            session_timeout_s=float(_env("SESSION_TIMEOUT_S", str(cls.session_timeout_s))),
            instance_id=_env("INSTANCE_ID", "") or None,
            status_interval_s=float(_env("STATUS_INTERVAL_S", str(cls.status_interval_s))),
            notify_min_interval_s=float(_env("NOTIFY_MIN_INTERVAL_S", str(cls.notify_min_interval_s))),
            topic_replication_factor=int(_env("TOPIC_REPLICATION_FACTOR", "1")),
            topic_min_insync_replicas=int(_env("TOPIC_MIN_INSYNC_REPLICAS", "0")) or None,
            log_level=_env("LOG_LEVEL", cls.log_level),
        )

    def topic(self, name: str) -> str:
        """The physical name of a logical topic; the prefix lets tests own their topics."""
        return f"{self.topic_prefix}{name}"
