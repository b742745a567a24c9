"""Prometheus metrics. Labels are bounded: kinds, destination types, outcomes, topic
partitions; never workspace, destination or event ids, and never anything secret."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

REGISTRY = CollectorRegistry(auto_describe=True)

events_consumed = Counter("streamer_events_consumed_total", "Raw audit records consumed", ["kind"], registry=REGISTRY)
events_routed = Counter("streamer_events_routed_total", "Events routed to a delivery topic",
                        ["kind", "destination_type"], registry=REGISTRY)
events_skipped = Counter("streamer_events_skipped_total", "Events not streamed (no configuration, or not selected)",
                         ["kind", "reason"], registry=REGISTRY)
events_rejected = Counter("streamer_events_rejected_total", "Raw records sent to the rejected topic",
                          ["kind"], registry=REGISTRY)
deliveries = Counter("streamer_deliveries_total", "Deliveries by final outcome of a pass: delivered, parked "
                     "(retry topic) or dead_lettered", ["destination_type", "outcome"], registry=REGISTRY)
retries_superseded = Counter("streamer_retries_superseded_total", "Parked deliveries read again after a restart "
                             "whose retry chain had already moved on (a later attempt was read): acked, not sent",
                             registry=REGISTRY)
attempts = Counter("streamer_delivery_attempts_total", "Delivery attempts by result (ok, retryable, fatal)",
                   ["destination_type", "result"], registry=REGISTRY)
breakers_open = Gauge("streamer_breakers_open", "Destinations whose circuit breaker is open",
                      ["destination_type"], registry=REGISTRY)
# Cluster-wide, from every worker's status rows; only the worker deciding notifications
# reports it (the others report 0), so sum() over workers is the figure. No per-tenant
# label: which ones are failing is `streamer status --failing`.
destinations_failing = Gauge("streamer_destinations_failing", "Destinations whose merged status is failing",
                             registry=REGISTRY)
notifications = Counter("streamer_notifications_total", "Destination notifications sent, by state",
                        ["state"], registry=REGISTRY)
latency = Histogram("streamer_delivery_latency_seconds", "From raw event produced to destination acknowledgement",
                    ["destination_type"], registry=REGISTRY,
                    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400))
settings_commands = Counter("streamer_settings_commands_total", "Settings commands by result status",
                            ["status"], registry=REGISTRY)
settings_version = Gauge("streamer_settings_version", "Offset of the last settings row applied", registry=REGISTRY)
settings_workspaces = Gauge("streamer_settings_workspaces", "Workspaces known to this worker", registry=REGISTRY)
settings_partners = Gauge("streamer_settings_partner_configs", "Partner-wide configurations", registry=REGISTRY)
settings_ready = Gauge("streamer_settings_ready", "1 once the settings view is complete", registry=REGISTRY)
consumer_lag = Gauge("streamer_consumer_lag", "Records behind the end of each assigned partition",
                     ["topic", "partition"], registry=REGISTRY)
gc_seconds = Counter("streamer_gc_seconds_total", "Time spent in Python's cyclic garbage collector",
                     ["generation"], registry=REGISTRY)
group_assignments = Counter("streamer_group_assignments_total", "Partition assignments this worker received: one per "
                            "consumer group rebalance it took part in", registry=REGISTRY)
group_generation = Gauge("streamer_group_generation", "Consumer group generation of the last assignment",
                         registry=REGISTRY)
# What the worker runs on, read from the running loop rather than the configuration, so a
# platform that silently fell back to asyncio's loop shows it.
worker = Info("streamer_worker", "The worker's event loop implementation", registry=REGISTRY)
