"""Every topic the streamer reads or writes, as code.

`streamer topics apply` creates the missing ones and reports drift in the rest; it never
changes or deletes a topic, because a partition count or retention change on a live audit
stream is an operator's decision, not a deploy side effect.

Raw and delivery topics allow 50 MiB records: the spec lets one log message be 40 MB,
and a delivery record carries the message plus a small envelope.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

DAY_MS = 24 * 3600 * 1000
BIG_RECORD = str(50 * 1024 * 1024)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    purpose: str
    replication_factor: int = 1
    configs: dict[str, str] = field(default_factory=dict)


JOBS_SUMMARY = "audit.jobs.summary.v1"
JOBS_DETAILS = "audit.jobs.details.v1"
USER_ACTIVITY = "audit.user_activity.v1"
SETTINGS_COMMANDS = "audit.settings.commands.v1"
SETTINGS_RESULTS = "audit.settings.results.v1"
SETTINGS_TABLE = "audit.settings.table.v1"
DELIVERIES_S3 = "audit.deliveries.s3.v1"
DELIVERIES_HTTP = "audit.deliveries.http.v1"
DELIVERIES_RETRY = "audit.deliveries.retry.v1"
DEAD_LETTERS = "audit.deliveries.dead_letter.v1"
REJECTED = "audit.rejected.v1"
DESTINATION_STATUS = "audit.destinations.status.v1"
NOTIFICATIONS = "audit.notifications.v1"

RAW_TOPICS = (JOBS_SUMMARY, JOBS_DETAILS, USER_ACTIVITY)

_raw = {"cleanup.policy": "delete", "retention.ms": str(7 * DAY_MS), "max.message.bytes": BIG_RECORD}
_delivery = {"cleanup.policy": "delete", "retention.ms": str(8 * DAY_MS), "max.message.bytes": BIG_RECORD}

TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(JOBS_SUMMARY, 6, "raw job summaries, key = workspace id", configs=_raw),
    TopicSpec(JOBS_DETAILS, 6, "raw job details with recipe steps, key = workspace id", configs=_raw),
    TopicSpec(USER_ACTIVITY, 6, "raw user activity, key = workspace id", configs=_raw),
    # One partition: commands are applied in one total order, by one worker at a time.
    # LogAppendTime: a command's freshness is judged against the time the broker took its
    # record, which no producer can set; 2 MiB leaves room for the 1 MiB command cap.
    TopicSpec(SETTINGS_COMMANDS, 1, "signed settings commands from admins",
              configs={"cleanup.policy": "delete", "retention.ms": str(30 * DAY_MS),
                       "message.timestamp.type": "LogAppendTime", "max.message.bytes": str(2 * 1024 * 1024)}),
    TopicSpec(SETTINGS_RESULTS, 1, "one result per settings command, key = command id",
              configs={"cleanup.policy": "delete", "retention.ms": str(30 * DAY_MS)}),
    # The settings table: every worker reads all of it (see streamer/settings/view.py).
    TopicSpec(SETTINGS_TABLE, 1, "compacted settings table (registrations, configurations)",
              configs={"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"}),
    TopicSpec(DELIVERIES_S3, 6, "rendered messages bound for S3, key = destination id", configs=_delivery),
    TopicSpec(DELIVERIES_HTTP, 6, "rendered messages bound for REST providers, key = destination id",
              configs=_delivery),
    # Retry horizon is 7 days by default, so parked deliveries must outlive it.
    TopicSpec(DELIVERIES_RETRY, 6, "deliveries parked until their next attempt", configs=_delivery),
    TopicSpec(DEAD_LETTERS, 3, "deliveries that exhausted the retry horizon, with their errors",
              configs={**_delivery, "retention.ms": str(30 * DAY_MS)}),
    TopicSpec(REJECTED, 3, "raw records that could not be processed, with the reason",
              configs={**_raw, "retention.ms": str(14 * DAY_MS)}),
    # One row per destination and worker run (streamer/status.py); compacted, and rows of
    # workers gone for a week expire (live workers re-publish theirs hourly).
    TopicSpec(DESTINATION_STATUS, 1, "per-destination delivery status, key = <destination id>/<worker id>",
              configs={"cleanup.policy": "compact,delete", "retention.ms": str(7 * DAY_MS),
                       "min.compaction.lag.ms": "60000"}),
    TopicSpec(NOTIFICATIONS, 1, "a destination started failing or recovered, for the platform's mailer",
              configs={"cleanup.policy": "delete", "retention.ms": str(30 * DAY_MS)}),
)

BY_NAME = {t.name: t for t in TOPICS}


# Replication per environment: (replication factor, min.insync.replicas). `streamer topics
# apply --profile prod` and the Strimzi KafkaTopics (scripts/gen_k8s_topics.py) use prod.
PROFILES = {"dev": (1, 1), "prod": (3, 2)}


def for_environment(specs: tuple[TopicSpec, ...], replication_factor: int | None = None,
                    min_insync_replicas: int | None = None) -> tuple[TopicSpec, ...]:
    """The topic definitions with this environment's replication: a laptop has one broker,
    production three or more. min.insync.replicas defaults to one less than the replication
    factor (2 of 3): with acks=all an acknowledged write is on two brokers and survives the
    loss of one, and one broker may be down (a rolling restart) without stopping producers."""
    if replication_factor is None:
        return specs
    isr = min_insync_replicas or max(1, replication_factor - 1)
    if not 1 <= isr <= replication_factor:
        raise ValueError(f"min.insync.replicas {isr} must be between 1 and the replication factor {replication_factor}")
    return tuple(replace(s, replication_factor=replication_factor,
                         configs={**s.configs, "min.insync.replicas": str(isr)}) for s in specs)
