"""Deployment configuration: one typed, validated model read from `STREAMER_*` variables.

Every knob is an environment variable so the same image runs under docker compose,
Kubernetes and the tests. pydantic-settings parses and validates them, so a typo'd number
or a setting that contradicts another fails at start with a message naming the variable,
instead of misbehaving later. The README's table of variables is generated from this
model (`streamer config --markdown`; a test fails when it is stale), and `streamer config`
prints the effective configuration with secrets redacted. Kafka's TLS/SASL settings live
in `streamer/kafka_client.py`. Secrets (signing and encryption keys) come from the
environment too, never from a topic.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MiB = 1024 * 1024
SECRET_FIELDS = ("signing_keys", "encryption_keys")


def parse_keyring(text: str) -> dict[str, bytes]:
    """Parse `kid:base64key,kid2:base64key` into {kid: key}; the first entry is the active key."""
    keys: dict[str, bytes] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        kid, sep, b64 = part.partition(":")
        if not sep or not kid:
            raise ValueError(f"keyring entry {kid!r} must look like 'key_id:base64key'")
        keys[kid] = base64.b64decode(b64)
    return keys


Keyring = Annotated[dict[str, bytes], NoDecode]


class ConfigError(ValueError):
    """The environment does not make a valid configuration; the message names the variables."""


class Config(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STREAMER_", frozen=True, extra="ignore")

    bootstrap_servers: str = Field("127.0.0.1:9092", description="Kafka")
    app_id: str = Field("streamer", description="Faust app id = consumer group")
    topic_prefix: str = Field("", description="prefix of every topic name")
    web_host: str = Field("127.0.0.1", description="`/health`, `/live`, `/ready`, `/metrics`, `/settings`")
    web_port: int = Field(6066, ge=1, le=65535, description="port of those pages")
    data_dir: str = Field(".local/worker", description="Faust's scratch folder")
    signing_keys: Keyring = Field(default_factory=dict, description=(
        "`kid:base64key,...` HMAC keys; any listed key verifies (required to apply commands)"))
    encryption_keys: Keyring = Field(default_factory=dict, description=(
        "`kid:base64-32-bytes,...`; the first encrypts, all decrypt (required for secrets)"))
    allow_private_destinations: bool = Field(False, description="allow http and private addresses (tests, local dev)")
    private_networks_allowed: str = Field("", description=(
        "comma-separated CIDRs of private networks destinations may be in (private endpoints, an "
        "in-VPC log server); never loopback, link-local or multicast. The CLI needs the same value"))
    command_max_age_s: float = Field(300.0, gt=0, description=(
        "issued-at window of settings commands, around their record's broker timestamp"))
    max_message_bytes: int = Field(40 * MiB, gt=0, description="the 40 MB message limit")
    retry_horizon_s: float = Field(7 * 24 * 3600.0, gt=0, description="after this, a failing delivery is dead-lettered")
    inline_retries: int = Field(2, ge=0, description="quick retries before parking")
    retry_base_s: float = Field(0.2, gt=0, description="backoff base")
    retry_max_backoff_s: float = Field(300.0, gt=0, description="backoff cap, and the cap on `Retry-After`")
    http_timeout_s: float = Field(5.0, gt=0, description=(
        "per request; at most the delivery deadline, which would cut a longer request off anyway"))
    delivery_deadline_s: float = Field(5.0, gt=0, description="a destination group not done by then is parked")
    destination_concurrency: int = Field(4, ge=1, description="concurrent requests per REST destination")
    destination_linger_s: float = Field(0.0, ge=0, description=(
        "a REST destination's records wait up to this long for more of its records from the agent's other "
        "batches in flight, for fewer, fuller requests (Vector's `batch.timeout_secs`); off by default: "
        "it adds about one linger to latency (docs/performance.md, Sixth round)"))
    linger_batches_in_flight: int = Field(8, ge=1, description=(
        "batches the REST delivery agent works on at once while `STREAMER_DESTINATION_LINGER_S` is on: a "
        "lingering batch waits without using the CPU, so the worker reads on and later batches join its "
        "groups; their bytes stay within `STREAMER_BATCHES_IN_FLIGHT` × `STREAMER_BATCH_MAX_BYTES`"))
    breaker_failures: int = Field(5, ge=1, description="failures in a row that open a destination's breaker")
    breaker_reset_s: float = Field(10.0, gt=0, description="how long a breaker stays open before a trial")
    batch_max: int = Field(500, ge=1, description="events per batch")
    batch_linger_s: float = Field(0.05, ge=0, description=(
        "how long a batch waits to fill while the agent is busy with another"))
    batches_in_flight: int = Field(2, ge=1, description=(
        "batches the routing and delivery agents work on at once; acks still follow offset order"))
    batch_max_bytes: int = Field(64 * MiB, ge=1, description=(
        "a batch also ends at this many value bytes (40 MB events come one at a time)"))
    queue_max_bytes: int = Field(64 * MiB, ge=1, description=(
        "an agent's queue of fetched events is full at this many value bytes (Faust bounds it only by count)"))
    fetch_min_bytes: int = Field(64 * 1024, ge=1, description=(
        "the broker answers a worker's fetch once it has this many bytes for it, or after "
        "`STREAMER_FETCH_MAX_WAIT_MS`: one worker moved 39% more events a second than with aiokafka's 1 byte, "
        "for 36 ms more p99 at 2,000 events/s (docs/performance.md, Ninth round)"))
    fetch_max_wait_ms: int = Field(100, ge=0, le=10_000, description=(
        "… and at most this long: what a record waits on each of its two hops when traffic is too light to "
        "fill a fetch; an idle worker fetches this often"))
    produce_max_inflight_bytes: int = Field(64 * MiB, ge=MiB, description=(
        "bytes handed to the producer and not yet acked; keeps every produce request under the broker's "
        "`socket.request.max.bytes`"))
    retry_hold_max_bytes: int = Field(64 * MiB, ge=1, description=(
        "parked deliveries held in memory until due; past it the retry agent reads on only as they come due"))
    liveness_stall_s: float = Field(300.0, gt=0, description="`/health` answers 503 once a batch has been in flight this long")
    gc_gen0_threshold: int = Field(50_000, ge=0, description=(
        "young collections run this rarely from startup, and the heap is frozen before and after the settings "
        "are recovered (`0`: Python's defaults); see docs/performance.md"))
    event_loop: Literal["uvloop", "asyncio"] = Field("uvloop", description=(
        "the worker's event loop: uvloop (libuv) spent 14% less worker CPU per event than asyncio's own loop "
        "while this machine was slow, the same when it was fast (docs/performance.md, Sixth round); "
        "`asyncio` for a platform without uvloop"))
    s3_endpoint_url: str | None = Field(None, description="default S3 endpoint (MinIO, moto)")
    s3_destination_concurrency: int = Field(32, ge=1, description=(
        "most concurrent PUTs per S3 destination; each destination's cap adapts below it "
        "(AIMD from 4: halves on errors, timeouts and slow answers)"))
    shutdown_grace_s: float = Field(20.0, gt=0, description="SIGTERM grace period")
    session_timeout_s: float = Field(10.0, gt=0, description=(
        "consumer group session timeout (how fast a killed worker's partitions move)"))
    instance_id: str | None = Field(None, description=(
        "static group membership (`group.instance.id`, e.g. the pod name); see docs/deploy.md"))
    topic_replication_factor: int = Field(1, ge=1, description="what `streamer topics apply` creates and checks")
    topic_min_insync_replicas: int | None = Field(None, ge=1, description=(
        "`min.insync.replicas` of the topics (default: replication factor − 1, at least 1)"))
    status_interval_s: float = Field(2.0, gt=0, description=(
        "a destination's status row is published at most this often when its state changes (a failure, "
        "a recovery, the breaker)"))
    status_counters_interval_s: float = Field(30.0, gt=0, description=(
        "… and at most this often when only its counters moved (deliveries, parks): with thousands of "
        "busy destinations, rows would otherwise be a fifth of the Kafka traffic"))
    notify_min_interval_s: float = Field(300.0, ge=0, description=(
        "at most one notification per destination this often"))
    log_level: str = Field("info", description="JSON logs on stdout")

    @field_validator("signing_keys", "encryption_keys", mode="before")
    @classmethod
    def _keyring(cls, value: Any) -> Any:
        return parse_keyring(value) if isinstance(value, str) else value

    @field_validator("encryption_keys")
    @classmethod
    def _aes_keys(cls, value: dict[str, bytes]) -> dict[str, bytes]:
        for kid, key in value.items():
            if len(key) != 32:
                raise ValueError(f"encryption key {kid!r} is {len(key)} bytes; AES-256 needs 32")
        return value

    @field_validator("s3_endpoint_url", "instance_id", "topic_min_insync_replicas", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value in ("", "0", 0) else value

    @field_validator("private_networks_allowed")
    @classmethod
    def _networks(cls, value: str) -> str:
        from streamer.settings.urls import parse_networks

        parse_networks(value)  # raises ValueError naming the bad entry
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.lower() not in {"debug", "info", "warning", "error", "critical"}:
            raise ValueError("must be one of debug, info, warning, error, critical")
        return value.lower()

    @model_validator(mode="after")
    def _consistent(self) -> "Config":
        problems = []
        if self.delivery_deadline_s < self.http_timeout_s:
            problems.append(f"STREAMER_DELIVERY_DEADLINE_S ({self.delivery_deadline_s:g}) is shorter than "
                            f"STREAMER_HTTP_TIMEOUT_S ({self.http_timeout_s:g}): every slow request would be "
                            f"cut off by the deadline before its own timeout")
        if self.retry_horizon_s < self.retry_max_backoff_s:
            problems.append(f"STREAMER_RETRY_HORIZON_S ({self.retry_horizon_s:g}) is shorter than "
                            f"STREAMER_RETRY_MAX_BACKOFF_S ({self.retry_max_backoff_s:g}): deliveries would be "
                            f"dead-lettered before their first retry from the retry topic")
        if self.retry_base_s > self.retry_max_backoff_s:
            problems.append("STREAMER_RETRY_BASE_S is larger than STREAMER_RETRY_MAX_BACKOFF_S")
        if self.max_message_bytes + MiB > 50 * MiB:
            problems.append(f"STREAMER_MAX_MESSAGE_BYTES ({self.max_message_bytes}) leaves no room under the "
                            f"topics' 50 MiB max.message.bytes for the delivery envelope")
        if (self.topic_min_insync_replicas is not None
                and self.topic_min_insync_replicas > self.topic_replication_factor):
            problems.append("STREAMER_TOPIC_MIN_INSYNC_REPLICAS is larger than STREAMER_TOPIC_REPLICATION_FACTOR")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @classmethod
    def from_env(cls) -> "Config":
        """The configuration of this process's environment, or `ConfigError` saying what
        is wrong with it (every variable at fault, not just the first)."""
        try:
            return cls()
        except ValidationError as e:
            raise ConfigError(describe(e)) from None

    def topic(self, name: str) -> str:
        """The physical name of a logical topic; the prefix lets tests own their topics."""
        return f"{self.topic_prefix}{name}"

    def redacted(self) -> dict[str, Any]:
        """The effective configuration, secrets replaced by their key ids."""
        out = self.model_dump(mode="json", exclude=set(SECRET_FIELDS))
        for name in SECRET_FIELDS:
            out[name] = {kid: "***" for kid in getattr(self, name)}
        return out


def describe(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        where = f"STREAMER_{loc.upper()}" if loc else "configuration"
        lines.append(f"{where}: {e['msg'].removeprefix('Value error, ')}")
    return "; ".join(lines)


def markdown_table() -> str:
    """The README's table of variables, generated from the model."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, f in Config.model_fields.items():
        default = f.get_default(call_default_factory=True)
        if default in (None, "", {}):
            shown = "empty"
        elif isinstance(default, bool):
            shown = f"`{str(default).lower()}`"
        else:
            shown = f"`{default:g}`" if isinstance(default, float) else f"`{default}`"
        rows.append(f"| `STREAMER_{name.upper()}` | {shown} | {f.description} |")
    return "\n".join(rows) + "\n"
