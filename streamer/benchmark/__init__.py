"""Helpers of `python -m streamer.benchmark`: synthetic events and settings, a counting
Datadog-style receiver, /proc readings, and the three benchmarks (pipeline, micro, memory).
See docs/performance.md."""
