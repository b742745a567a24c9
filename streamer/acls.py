"""The least privilege each streamer principal needs on a cluster with an authorizer.

This is the single statement of what a worker may do; docs/deploy.md and
k8s/strimzi/kafkauser.yaml say the same for SREs (tests/test_deploy.py checks the KafkaUser
against `worker_acls`), and `streamer dev up --secure` and the security tests grant exactly
these, so a worker that needed more would fail its end-to-end test.

  worker   read the raw, commands, delivery, retry and settings-table topics, and the dead
           letters (a replay command re-reads them); write the delivery, retry, dead-letter,
           rejected, results and settings-table topics; its consumer group; idempotent write.
  admin    (`streamer settings`, `streamer dlq`): write commands, read results, the table and
           the dead letters. Topics are created by a deploy-time principal with Create.
"""

from __future__ import annotations

from dataclasses import dataclass

from streamer import topics as T

# Kafka's wire codes (org.apache.kafka.common.resource / acl).
RESOURCE = {"topic": 2, "group": 3, "cluster": 4}
OPERATION = {"Read": 3, "Write": 4, "Create": 5, "Describe": 8, "DescribeConfigs": 10, "IdempotentWrite": 12}
LITERAL, ALLOW = 3, 3

WORKER_READS = (*T.RAW_TOPICS, T.SETTINGS_COMMANDS, T.DELIVERIES_S3, T.DELIVERIES_HTTP, T.DELIVERIES_RETRY,
                T.SETTINGS_TABLE, T.DEAD_LETTERS, T.DESTINATION_STATUS)
WORKER_WRITES = (T.DELIVERIES_S3, T.DELIVERIES_HTTP, T.DELIVERIES_RETRY, T.DEAD_LETTERS, T.REJECTED,
                 T.SETTINGS_RESULTS, T.SETTINGS_TABLE, T.DESTINATION_STATUS, T.NOTIFICATIONS)
ADMIN_READS = (T.SETTINGS_RESULTS, T.SETTINGS_TABLE, T.DEAD_LETTERS, T.DESTINATION_STATUS)
ADMIN_WRITES = (T.SETTINGS_COMMANDS,)


@dataclass(frozen=True, order=True)
class Acl:
    resource: str  # topic | group | cluster
    name: str
    operation: str

    def describe(self) -> str:
        return f"{self.operation} on {self.resource} {self.name}"


def worker_acls(prefix: str = "", group: str = "streamer") -> list[Acl]:
    out = {Acl("topic", prefix + t, op) for t in WORKER_READS for op in ("Read", "Describe")}
    out |= {Acl("topic", prefix + t, op) for t in WORKER_WRITES for op in ("Write", "Describe")}
    out |= {Acl("group", group, "Read"), Acl("cluster", "kafka-cluster", "IdempotentWrite")}
    return sorted(out)


def admin_acls(prefix: str = "") -> list[Acl]:
    out = {Acl("topic", prefix + t, op) for t in ADMIN_READS for op in ("Read", "Describe")}
    out |= {Acl("topic", prefix + t, op) for t in ADMIN_WRITES for op in ("Write", "Describe")}
    out.add(Acl("cluster", "kafka-cluster", "IdempotentWrite"))  # the CLI's producer is idempotent
    return sorted(out)


async def grant(bootstrap: str, principal: str, acls: list[Acl], security=None) -> None:
    """Create ALLOW bindings for `principal` (e.g. "User:streamer") from any host.

    aiokafka 0.14's admin client has no create_acls, but ships the CreateAcls request; this
    sends one request per binding through it. Needs a principal allowed to alter ACLs.
    """
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.protocol.admin import CreateAclsRequest

    from streamer.kafka_client import client_kwargs

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000, **client_kwargs(security))
    await admin.start()
    try:
        for acl in acls:
            response = await admin._send_request(CreateAclsRequest(
                RESOURCE[acl.resource], acl.name, LITERAL, principal, "*", OPERATION[acl.operation], ALLOW))
            for code, message in response.creation_responses:
                if code:
                    raise RuntimeError(f"granting {acl.describe()} to {principal} failed: error {code} {message}")
    finally:
        await admin.close()


def kafka_acls_commands(principal: str, acls: list[Acl], bootstrap: str = "$BOOTSTRAP") -> list[str]:
    """The same grants as `kafka-acls.sh` command lines (for docs and SREs without Strimzi)."""
    lines = []
    for acl in acls:
        target = {"topic": f"--topic {acl.name}", "group": f"--group {acl.name}", "cluster": "--cluster"}[acl.resource]
        lines.append(f"kafka-acls.sh --bootstrap-server {bootstrap} --command-config admin.properties --add "
                     f"--allow-principal {principal} --operation {acl.operation} {target}")
    return lines
