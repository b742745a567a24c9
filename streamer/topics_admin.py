"""`streamer topics apply`: create what is missing, report drift, change nothing else."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError

from streamer.kafka_client import KafkaSecurity, client_kwargs
from streamer.topics import TOPICS, TopicSpec, for_environment


@dataclass
class ApplyReport:
    created: list[str]
    unchanged: list[str]
    drift: list[str]  # human-readable lines, one per mismatch

    @property
    def ok(self) -> bool:
        return not self.drift


async def _describe(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    # A topic created moments ago may not be in the metadata yet; give it a few seconds.
    for _ in range(20):
        todo = [n for n in names if n not in out]
        if not todo:
            break
        for t in await admin.describe_topics(todo):
            if t.get("error_code", 0) == 0 and t.get("partitions"):
                out[t["topic"]] = t
        if len(out) < len(names):
            await asyncio.sleep(0.25)
    return out


async def _configs(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, dict[str, str]]:
    if not names:
        return {}
    resources = [ConfigResource(ConfigResourceType.TOPIC, n) for n in names]
    out: dict[str, dict[str, str]] = {}
    for response in await admin.describe_configs(resources):
        for _err, _msg, _rtype, rname, entries in response.resources:
            out[rname] = {e[0]: e[1] for e in entries}
    return out


async def apply_topics(bootstrap_servers: str, prefix: str = "", specs: tuple[TopicSpec, ...] = TOPICS,
                       security: KafkaSecurity | None = None, replication_factor: int | None = None,
                       min_insync_replicas: int | None = None) -> ApplyReport:
    specs = for_environment(specs, replication_factor, min_insync_replicas)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=30000,
                                **client_kwargs(security))
    try:
        await admin.start()
        wanted = {prefix + s.name: s for s in specs}
        existing = set(await admin.list_topics())
        missing = [n for n in wanted if n not in existing]
        created: list[str] = []
        if missing:
            new = [NewTopic(n, wanted[n].partitions, wanted[n].replication_factor,
                            topic_configs=dict(wanted[n].configs)) for n in missing]
            response = await admin.create_topics(new)
            for name, code, *rest in response.topic_errors:
                if code == 0:
                    created.append(name)
                elif code != TopicAlreadyExistsError.errno:  # a racing creator is fine: drift is checked below
                    raise RuntimeError(f"creating {name} failed: error {code} {rest[0] if rest else ''}")
        present = [n for n in wanted if n not in created]
        described = await _describe(admin, present)
        configs = await _configs(admin, present)
        drift: list[str] = []
        for name in present:
            spec = wanted[name]
            info = described.get(name)
            if info is None:
                drift.append(f"{name}: could not be described")
                continue
            parts = len(info["partitions"])
            if parts != spec.partitions:
                drift.append(f"{name}: partitions {parts}, defined {spec.partitions}")
            rf = len(info["partitions"][0]["replicas"]) if info["partitions"] else 0
            if rf != spec.replication_factor:
                drift.append(f"{name}: replication factor {rf}, defined {spec.replication_factor}")
            have = configs.get(name, {})
            for key, value in spec.configs.items():
                if have.get(key) != value:
                    drift.append(f"{name}: {key}={have.get(key)}, defined {value}")
        unchanged = [n for n in present]
        return ApplyReport(created=created, unchanged=unchanged, drift=drift)
    finally:
        await admin.close()


def run_apply(bootstrap_servers: str, prefix: str = "", replication_factor: int | None = None,
              min_insync_replicas: int | None = None, profile: str | None = None) -> int:
    """Options win over the profile, the profile over STREAMER_TOPIC_REPLICATION_FACTOR /
    STREAMER_TOPIC_MIN_INSYNC_REPLICAS."""
    from streamer.config import Config
    from streamer.topics import PROFILES

    cfg = Config.from_env()
    rf, isr = PROFILES[profile] if profile else (cfg.topic_replication_factor, cfg.topic_min_insync_replicas)
    report = asyncio.run(apply_topics(bootstrap_servers, prefix, replication_factor=replication_factor or rf,
                                      min_insync_replicas=min_insync_replicas or isr))
    for n in report.created:
        print(f"created   {n}")
    for n in report.unchanged:
        print(f"unchanged {n}")
    for line in report.drift:
        print(f"DRIFT     {line}")
    if report.drift:
        print("drift found: fix the topic or its definition in topics/; nothing was changed")
    return 0 if report.ok else 1
