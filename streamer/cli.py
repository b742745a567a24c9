"""The `streamer` command: worker, topics, schemas, settings admin, dead letters, local dev."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _bootstrap(args) -> str:
    from streamer.config import Config

    return args.bootstrap_servers or Config.from_env().bootstrap_servers


def _kafka_command(run, bootstrap: str) -> int:
    """Run a command that talks to Kafka; a connection, TLS, SASL or ACL failure ends it with
    exit 2 and one line saying what is wrong, instead of a traceback or a hang."""
    import ssl

    from aiokafka.errors import KafkaError

    from streamer.kafka_client import Causes, KafkaConfigError, explain

    with Causes() as causes:
        try:
            return run()
        except KafkaConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except (KafkaError, OSError, ssl.SSLError) as e:
            print(f"error: {explain(e, bootstrap, causes=causes.lines)}", file=sys.stderr)
            return 2


def _exit_on_sigterm_until_handled() -> None:
    """In a container the command is pid 1, and the kernel drops every signal pid 1 has no
    handler for: a worker stopped during its first seconds (building the parser, importing
    Faust, before Faust installs its own SIGTERM handler) ignored SIGTERM and was killed
    only after the whole grace period. So the first thing any command does is to exit on
    SIGTERM; the worker's Faust handler replaces this one once it runs, and until then
    nothing has been consumed, so there is nothing to commit. (The interpreter's own
    start-up, before this line, is still a window of some 0.1 s; an init process such as
    `docker run --init` closes that too.)"""
    import signal

    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))


def main(argv: list[str] | None = None) -> None:
    _exit_on_sigterm_until_handled()
    parser = argparse.ArgumentParser(prog="streamer", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("worker", help="run a stream-processing worker (configured by STREAMER_* env)")
    p.add_argument("--loglevel", default=None)

    p = sub.add_parser("dev", help="local Kafka (from Maven Central jars) and moto S3 on 127.0.0.1")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--kafka-port", type=int, default=9092)
    p.add_argument("--s3-port", type=int, default=5000)
    p.add_argument("--secure", action="store_true",
                   help="SASL_SSL listener (SCRAM/PLAIN users, a local CA) and ACLs for the worker principal")
    p.add_argument("--brokers", type=int, default=1, help="KRaft nodes (3: replicated topics, failover)")

    p = sub.add_parser("topics", help="topic definitions")
    p.add_argument("action", choices=["apply", "list"])
    p.add_argument("--bootstrap-servers", default=None)
    p.add_argument("--prefix", default=None, help="topic name prefix (default STREAMER_TOPIC_PREFIX)")
    p.add_argument("--profile", choices=["dev", "prod"], default=None,
                   help="replication per environment: dev 1 replica, prod 3 replicas with min.insync.replicas 2")
    p.add_argument("--replication-factor", type=int, default=None,
                   help="replicas per partition (default STREAMER_TOPIC_REPLICATION_FACTOR, else 1)")
    p.add_argument("--min-insync-replicas", type=int, default=None,
                   help="min.insync.replicas of every topic (default STREAMER_TOPIC_MIN_INSYNC_REPLICAS,"
                        " else replication factor - 1, at least 1)")

    p = sub.add_parser("config", help="print the effective configuration (secrets redacted) and check it")
    p.add_argument("--markdown", action="store_true", help="the README's table of variables instead")

    p = sub.add_parser("schemas", help="write JSON Schemas to schemas/, or --check they are current")
    p.add_argument("--check", action="store_true")
    p.add_argument("--dir", default="schemas")

    p = sub.add_parser("demo", help="run the main job on the local default with the sample events")
    p.add_argument("--samples", default=None)
    p.add_argument("--keep-running", action="store_true")
    p.add_argument("--use-running", action="store_true",
                   help="seed sample settings and events into an already running stack (docker compose)")
    p.add_argument("--receiver-url", default=None, help="with --use-running: the log receiver's URL")
    p.add_argument("--bucket", default="audit-demo", help="S3 bucket of the sample partner-wide destination")

    p = sub.add_parser("status", help="per-destination delivery status (last success and failure, breaker,"
                                      " parked, dead letters)")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("--workspace", default=None, help="the workspace's effective destination")
    scope.add_argument("--partner", default=None, help="the partner-wide destination and its workspaces' own")
    p.add_argument("--failing", action="store_true", help="only failing destinations")
    p.add_argument("--json", action="store_true")
    p.add_argument("--bootstrap-servers", default=None)

    from streamer.admin_cli import add_admin_parsers

    add_admin_parsers(sub)

    args = parser.parse_args(argv)
    if args.cmd == "config":
        from streamer.config import Config, ConfigError, markdown_table

        if args.markdown:
            print(markdown_table(), end="")
            return
        try:
            print(json.dumps(Config.from_env().redacted(), indent=2))
        except ConfigError as e:
            print(f"error: invalid configuration: {e}", file=sys.stderr)
            sys.exit(2)
    elif args.cmd == "worker":
        from streamer import preflight
        from streamer.config import Config, ConfigError

        try:
            Config.from_env()  # fail at start, with every variable at fault named
        except ConfigError as e:
            print(f"error: invalid configuration: {e}", file=sys.stderr)
            sys.exit(2)

        # Kafka must accept this worker's credentials before Faust starts (see preflight.py).
        if not preflight.run():
            sys.exit(0)
        from streamer.app import run_worker

        run_worker(args.loglevel)
    elif args.cmd == "dev":
        from streamer.dev.local import dev_command

        sys.exit(dev_command(args.action, args.kafka_port, args.s3_port, args.secure, args.brokers))
    elif args.cmd == "topics":
        from streamer.config import Config

        prefix = args.prefix if args.prefix is not None else Config.from_env().topic_prefix
        if args.action == "list":
            from streamer.topics import TOPICS

            for t in TOPICS:
                print(f"{prefix}{t.name:40} partitions={t.partitions} {t.configs.get('cleanup.policy')}  {t.purpose}")
            return
        from streamer.topics_admin import run_apply

        bootstrap = _bootstrap(args)
        sys.exit(_kafka_command(lambda: run_apply(bootstrap, prefix, args.replication_factor,
                                                  args.min_insync_replicas, args.profile), bootstrap))
    elif args.cmd == "schemas":
        from streamer.schemas import write_or_check

        stale = write_or_check(Path(args.dir), args.check)
        if args.check and stale:
            print("stale schemas (run `streamer schemas`): " + ", ".join(stale))
            sys.exit(1)
        print("schemas are current" if args.check else f"wrote {len(stale)} changed schema(s)")
    elif args.cmd == "status":
        from streamer.status_cli import run_status

        bootstrap = _bootstrap(args)
        sys.exit(_kafka_command(lambda: run_status(args, bootstrap), bootstrap))
    elif args.cmd == "demo":
        from streamer.demo import run_demo

        sys.exit(run_demo(args.samples, args.keep_running, args.use_running, args.receiver_url, args.bucket))
    else:
        from streamer.admin_cli import run_admin

        sys.exit(_kafka_command(lambda: run_admin(args), _bootstrap(args)))
