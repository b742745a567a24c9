"""Benchmarks (docs/performance.md). Run from the repository root:

  python -m streamer.benchmark [pipeline] [--runs 3] [--events N] [--quick]
      a real Kafka broker and moto S3 on free ports; a raw aiokafka passthrough as the
      baseline, then real `streamer worker` subprocesses: REST (Datadog-style batches)
      throughput, p50/p99 end-to-end latency at a fixed offered rate, S3 throughput into moto
      and into a keep-alive stand-in (streamer/benchmark/s3standin.py), peak RSS and CPU per
      event. Medians of the runs; JSON in bench-results/<timestamp>.json.
  python -m streamer.benchmark micro      the pure hot path, µs per event
  python -m streamer.benchmark memory     RSS with 100,000 workspaces, effective() at 1k vs 100k
      (--through-kafka: a settings view recovering them from a real broker: seconds to ready, RSS)
  python -m streamer.benchmark s3put      client CPU per S3 object: aiobotocore put_object vs the sink
  python -m streamer.benchmark httppost   client CPU per REST request: a bare aiohttp POST vs the HTTP sink
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

COMMANDS = ("pipeline", "micro", "memory", "s3put", "httppost")


def _save(results: dict, suffix: str = "") -> Path:
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    path = out / f"{time.strftime('%Y%m%dT%H%M%S')}{suffix}.json"
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return path


def _machine() -> dict:
    import os
    import platform

    from streamer.benchmark.loop import worker_loop
    from streamer.benchmark.speed import reference_us

    model = ""
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    machine = {
        "cpus": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
        "platform": platform.platform(), "loadavg_at_start": load, "commit": _commit(),
        # the pipeline's --worker-env may choose another; its options are saved with it
        "event_loop": worker_loop(),
        # This machine's speed at the start and end of the command (µs, lower is faster):
        # figures taken at references far apart are not comparable (streamer/benchmark/speed.py).
        "speed_reference_us": {"start": _SPEED_AT_START, "end": (end := reference_us())}}
    print(f"machine speed reference at the end: {end:.2f} µs", flush=True)
    return machine


def _commit() -> str | None:
    """The checkout measured: HEAD, and whether the work tree had changes on top of it."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+changes" if dirty else "")


_SPEED_AT_START: float | None = None


def main(argv: list[str] | None = None) -> int:
    global _SPEED_AT_START
    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:  # the pipeline benchmark reuses tests/support.py (worker process, env)
        sys.path.insert(0, root)
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "pipeline"
    if not {"-h", "--help"} & set(argv):
        from streamer.benchmark.speed import reference_us

        _SPEED_AT_START = reference_us()
        print(f"machine speed reference: {_SPEED_AT_START:.2f} µs (a fixed workload; lower is faster; "
              f"streamer/benchmark/speed.py)", flush=True)
    parser = argparse.ArgumentParser(prog=f"python -m streamer.benchmark {command}", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    if command == "micro":
        parser.add_argument("--events", type=int, default=3000, help="events per pass (default 3000)")
        parser.add_argument("--repeats", type=int, default=7, help="timed passes per stage (default 7)")
        parser.add_argument("--profile", action="store_true", help="print a cProfile of the hot path instead")
        args = parser.parse_args(argv)
        from streamer.benchmark.micro import report, run_micro

        result = run_micro(args.events, args.repeats, profile=args.profile)
        print(report(result))
        if args.profile:
            return 0
        print(f"results: {_save({'machine': _machine(), 'micro': result}, '-micro')}")
        return 0
    if command == "memory":
        parser.add_argument("--workspaces", type=int, default=100_000)
        parser.add_argument("--small", type=int, default=1_000, help="the small state for the lookup comparison")
        parser.add_argument("--through-kafka", action="store_true",
                            help="instead: produce the rows to a real broker and time a worker's settings view "
                                 "recovering them (RSS and seconds to ready)")
        args = parser.parse_args(argv)
        if args.through_kafka:
            from streamer.benchmark.memory import report_recovery, run_recovery

            result = run_recovery(args.workspaces)
            print(report_recovery(result))
            print(f"results: {_save({'machine': _machine(), 'recovery': result}, '-recovery')}")
            return 0
        from streamer.benchmark.memory import report, run_memory

        result = run_memory(args.workspaces, args.small)
        print(report(result))
        print(f"results: {_save({'machine': _machine(), 'memory': result}, '-memory')}")
        return 0

    if command == "s3put":
        parser.add_argument("--objects", type=int, default=2000, help="objects per pass (default 2000)")
        parser.add_argument("--destinations", type=int, default=50, help="destinations they go to (default 50)")
        parser.add_argument("--repeats", type=int, default=3, help="timed passes (default 3)")
        parser.add_argument("--size", type=int, default=1000, help="object bytes (default 1000)")
        args = parser.parse_args(argv)
        from streamer.benchmark.s3put import report, run_s3put
        result = run_s3put(args.objects, args.destinations, args.repeats, args.size)
        print(report(result))
        print(f"results: {_save({'machine': _machine(), 's3put': result}, '-s3put')}")
        return 0
    if command == "httppost":
        parser.add_argument("--requests", type=int, default=4000, help="requests per pass (default 4000)")
        parser.add_argument("--destinations", type=int, default=500, help="destinations they go to (default 500)")
        parser.add_argument("--repeats", type=int, default=3, help="timed passes (default 3)")
        args = parser.parse_args(argv)
        from streamer.benchmark.httppost import report, run_httppost
        result = run_httppost(args.requests, args.destinations, args.repeats)
        print(report(result))
        print(f"results: {_save({'machine': _machine(), 'httppost': result}, '-httppost')}")
        return 0
    from streamer.benchmark.pipeline import Options, report, run_pipeline

    parser.add_argument("--runs", type=int, default=3, help="repetitions; medians are reported (default 3)")
    parser.add_argument("--events", type=int, default=None,
                        help="pre-produced events for the throughput runs (default 40000, --quick 15000)")
    parser.add_argument("--s3-events", type=int, default=None, help="events for the S3 run into moto (default 3000)")
    parser.add_argument("--s3-keepalive-events", type=int, default=None,
                        help="events for the S3 run into the keep-alive stand-in (default 15000)")
    parser.add_argument("--rate", type=int, default=2000, help="offered events/s of the latency run")
    parser.add_argument("--latency-seconds", type=float, default=None, help="length of the latency run (15)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--workspaces", type=int, default=5000, help="in partners of 100 workspaces")
    parser.add_argument("--partner-wide", type=int, default=10,
                        help="partners streaming partner-wide (default 10 of 50); the other partners' workspaces "
                             "have their own destination half of the time")
    parser.add_argument("--quick", action="store_true", help="1 run, fewer events, shorter latency run")
    parser.add_argument("--skip", action="append", default=[], choices=["baseline", "floor", "rest", "latency", "s3"],
                        help="leave a phase out (repeatable; skipping rest skips latency too)")
    parser.add_argument("--worker-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for the workers, e.g. STREAMER_BATCH_MAX=1000 (repeatable)")
    parser.add_argument("--profile-worker", action="store_true",
                        help="run the REST and S3 workers under cProfile and print where their time goes")
    args = parser.parse_args(argv)
    opts = Options.from_args(args)
    result = run_pipeline(opts)
    result["machine"] = _machine()
    print(report(result))
    print(f"results: {_save(result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
