"""The Faust application's settings and the process that runs it, shared by the worker
(`streamer/app.py`) and the benchmark's framework floor (`streamer/benchmark/floor.py`), so the
floor measures exactly the consumer, producer and worker the pipeline runs on.
"""

from __future__ import annotations

import logging
import os
import threading

from streamer.batching import App
from streamer.config import Config
from streamer.kafka_client import KafkaSecurity
from streamer.logs import logging_config

log = logging.getLogger("streamer")
BIG = 52 * 1024 * 1024


def new_app(cfg: Config, app_id: str | None = None) -> App:
    App.queue_max_bytes = cfg.queue_max_bytes
    App.fetch_min_bytes = cfg.fetch_min_bytes
    App.fetch_max_wait_ms = cfg.fetch_max_wait_ms
    return App(
        app_id or cfg.app_id,
        broker=f"kafka://{cfg.bootstrap_servers}",
        store="memory://",
        web_enabled=True,
        web_port=cfg.web_port,
        web_bind=cfg.web_host,
        web_host=cfg.web_host,
        datadir=cfg.data_dir,
        topic_allow_declare=False,  # topics are created by `streamer topics apply`, never by a worker
        topic_disable_leader=True,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        producer_max_request_size=BIG,
        producer_linger_ms=5,
        # aiokafka's default batch is 16 KB: a 500-event routing batch became ~250 record batches
        # of two delivery records each, every one with its own futures, callbacks and broker
        # bookkeeping (the cyclic garbage the worker collected was mostly these). The request size
        # is still bounded by the produce byte budget (streamer/produce.py), not by this.
        producer_max_batch_size=1024 * 1024,
        producer_acks=-1,
        # Per partition and fetch. The broker still returns a first record larger than this
        # (a 40 MB message passes, tested); it bounds how much a backlog buffers: peak RSS on a
        # 40,000-event backlog 382 -> 310 MB against 52 MB.
        consumer_max_fetch_size=4 * 1024 * 1024,
        # A worker killed with -9 keeps its partitions until the group notices: keep that short.
        broker_session_timeout=cfg.session_timeout_s,
        broker_heartbeat_interval=max(1.0, cfg.session_timeout_s / 4),
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        stream_buffer_maxsize=8192,
        stream_wait_empty=False,
        worker_redirect_stdouts=False,
        logging_config=logging_config(cfg.log_level),
        # TLS/SASL from STREAMER_SECURITY_PROTOCOL etc.; the view and the replay reader pick up
        # the same settings from the environment (streamer/kafka_client.py).
        **KafkaSecurity.from_env().faust(),
        # Static membership (STREAMER_INSTANCE_ID, e.g. the pod name): a restarted member
        # with the same id gets its partitions back without a group rebalance.
        consumer_group_instance_id=cfg.instance_id,
    )


def run(app: App, cfg: Config, loglevel: str | None = None) -> None:
    """Run `app` as a worker process until it is stopped."""
    from faust.worker import Worker

    if cfg.event_loop == "uvloop":
        # Before the first loop exists: Faust's and its consumer thread's loops both come
        # from the policy this installs.
        import mode.loop

        mode.loop.use("uvloop")

    class GracefulWorker(Worker):
        """On SIGTERM Faust stops fetching, stops the agents and commits what was acked; a
        batch still in flight is not acked, so it is processed again after the restart
        (at least once). The watchdog bounds the whole shutdown by the grace period."""

        def _on_sigterm(self) -> None:
            def expire() -> None:
                log.error("shutdown exceeded the %.0fs grace period; exiting", cfg.shutdown_grace_s)
                os._exit(1)

            timer = threading.Timer(cfg.shutdown_grace_s, expire)
            timer.daemon = True
            timer.start()
            super()._on_sigterm()

        def on_setup_root_logger(self, logger, level) -> None:
            """No terminal spinner. At log level warning or above Faust adds one, and to
            spin it on every record it sets the root logger to DEBUG: every debug call of
            every library (botocore logs one per signature, aiokafka per request) then
            builds a LogRecord, and the spinner writes escape codes into the JSON log."""
            self.spinner = None

    level = loglevel or cfg.log_level
    GracefulWorker(app, loglevel=level, logging_config=logging_config(level),
                   redirect_stdouts=False).execute_from_commandline()
