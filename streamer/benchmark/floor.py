"""The framework floor: the worker's two Kafka hops with none of streamer's work in them.

`python -m streamer.benchmark.floor` (started by the pipeline benchmark, configured by the same
`STREAMER_*` variables as a worker) runs the worker's Faust application (`streamer/faust_app.py`:
the same consumer, producer, settings and event loop) with two agents:

  raw audit topics --copy--> <prefix>bench.floor --drain--> (nothing)

`copy` hands every record on unchanged through the worker's durable producer; `drain` only
acks. Both take batches with `overlapped`, as the routing and delivery agents do. No parsing,
routing, settings, rendering or HTTP: what is left is what Faust, aiokafka and the batching
cost per event, the part of the pipeline's CPU per event that streamer's own code cannot
remove. (A delivery record is a little larger than the raw record it came from: it carries
the destination and five headers more.)

`/floor` answers `{"copied": n, "drained": n}`, `/ready` 200 once the group is joined.
"""

from __future__ import annotations

from streamer import topics as T
from streamer.batching import RawSchema, overlapped
from streamer.config import Config
from streamer.faust_app import new_app, run
from streamer.produce import DurableProducer

TOPIC = "bench.floor"  # 6 partitions, created by the benchmark


def main() -> None:
    cfg = Config.from_env()
    app = new_app(cfg, app_id=cfg.app_id + "-floor")
    raw_topics = app.topic(*(cfg.topic(n) for n in T.RAW_TOPICS), schema=RawSchema())
    floor_topic = app.topic(cfg.topic(TOPIC), schema=RawSchema())
    counts = {"copied": 0, "drained": 0}
    joined = {"yes": False}

    async def send(topic: str, key: bytes | None, value: bytes | None, headers: list | None):
        return await app.producer.send(topic, key, value, None, None, headers)

    producer = DurableProducer(send, cfg.produce_max_inflight_bytes)

    async def copy_batch(events) -> None:
        name = floor_topic.get_topic_name()
        await producer.send_all([(name, e.message.key, e.message.value, e.message.headers) for e in events])
        counts["copied"] += len(events)

    async def drain_batch(events) -> None:
        counts["drained"] += len(events)

    @app.agent(raw_topics)
    async def copy(stream):
        await overlapped(stream, cfg.batch_max, cfg.batch_linger_s, copy_batch, cfg.batches_in_flight,
                         cfg.batch_max_bytes)

    @app.agent(floor_topic)
    async def drain(stream):
        await overlapped(stream, cfg.batch_max, cfg.batch_linger_s, drain_batch, cfg.batches_in_flight,
                         cfg.batch_max_bytes)

    @app.on_partitions_assigned.connect
    async def on_assigned(app, assigned, **kwargs) -> None:
        joined["yes"] = True

    @app.page("/ready")
    async def ready(web, request):
        return web.json({"group_joined": joined["yes"]}, status=200 if joined["yes"] else 503)

    @app.page("/floor")
    async def floor(web, request):
        return web.json(counts)

    run(app, cfg)


if __name__ == "__main__":
    main()
