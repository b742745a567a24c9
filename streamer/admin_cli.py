"""`streamer settings ...`: admin commands from the shell, signed with STREAMER_SIGNING_KEYS.

Exit status: 0 accepted (a warning is printed), 1 rejected, 2 usage or connection error.
Secrets are printed redacted.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import yaml

from streamer.settings.secrets import redact


def add_admin_parsers(sub) -> None:
    p = sub.add_parser("settings", help="register workspaces; put, get, list and delete configurations")
    p.add_argument("--bootstrap-servers", default=None)
    p.add_argument("--actor", default=None, help="who is acting (default: $USER)")
    ss = p.add_subparsers(dest="action", required=True)
    r = ss.add_parser("register", help="link a workspace to its partner")
    r.add_argument("--workspace", required=True)
    r.add_argument("--partner", required=True)
    r.add_argument("--role", choices=["customer", "admin"], default="customer")
    r.add_argument("--external-id", default=None)
    u = ss.add_parser("unregister")
    u.add_argument("--workspace", required=True)
    for scope in ("partner", "workspace"):
        put = ss.add_parser(f"put-{scope}", help=f"set a {scope} configuration from a JSON or YAML file")
        put.add_argument(f"--{scope}", required=True)
        put.add_argument("--file", required=True)
        d = ss.add_parser(f"delete-{scope}")
        d.add_argument(f"--{scope}", required=True)
    g = ss.add_parser("get", help="show a workspace's or partner's settings (redacted)")
    g.add_argument("--workspace")
    g.add_argument("--partner")
    ss.add_parser("list", help="list registrations and configurations (redacted)")
    t = ss.add_parser("test", help="send a test event to the effective destination (or --file's); exit 1 if it fails")
    ts = t.add_mutually_exclusive_group(required=True)
    ts.add_argument("--workspace")
    ts.add_argument("--partner")
    t.add_argument("--file", default=None, help="a configuration to test before saving it")
    t.add_argument("--check", choices=["write", "probe"], default="write",
                   help="write (default): send a test event (object stores: a real object under the prefix). "
                        "probe: ask without writing where the provider can be asked (S3 HeadBucket, Azure Blob "
                        "container properties, GCS bucket, Datadog key validation, Splunk HEC health); Sumo "
                        "Logic, generic HTTP and Azure Monitor have no probe endpoint and are written to")

    d = sub.add_parser("dlq", help="list, inspect and replay dead letters")
    d.add_argument("--bootstrap-servers", default=None)
    d.add_argument("--actor", default=None)
    ds = d.add_subparsers(dest="action", required=True)
    for name, text in (("list", "dead letters matching the filters, one JSON line each"),
                       ("replay", "send matching dead letters back to delivery (a signed command)")):
        x = ds.add_parser(name, help=text)
        x.add_argument("--workspace")
        x.add_argument("--destination")
        x.add_argument("--event-id", action="append", dest="event_ids")
        x.add_argument("--since", type=_when, help="ISO-8601; dead-lettered at or after")
        x.add_argument("--until", type=_when, help="ISO-8601; dead-lettered before")
        x.add_argument("--limit", type=int, default=10_000)
    i = ds.add_parser("inspect", help="one dead letter in full, with its message")
    i.add_argument("--partition", type=int, required=True)
    i.add_argument("--offset", type=int, required=True)


def _when(text: str):
    from datetime import datetime, timezone

    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def run_dlq(args, cfg, bootstrap: str) -> int:
    import getpass

    from streamer.admin import AdminClient, CommandRefused
    from streamer.dlq import read_dead_letters
    from streamer.topics import DEAD_LETTERS

    topic = cfg.topic(DEAD_LETTERS)
    if args.action == "inspect":
        letters = asyncio.run(read_dead_letters(bootstrap, topic))
        found = [d for d in letters if (d.partition, d.offset) == (args.partition, args.offset)]
        if not found:
            print("no such dead letter", file=sys.stderr)
            return 1
        print(json.dumps({**found[0].summary(), "message": found[0].value.decode("utf-8", "replace")}, indent=2))
        return 0
    filters = dict(workspace_id=args.workspace, destination_id=args.destination, event_ids=args.event_ids,
                   since=args.since, until=args.until)
    if args.action == "list":
        for d in asyncio.run(read_dead_letters(bootstrap, topic, limit=args.limit, **filters)):
            print(json.dumps(d.summary()))
        return 0
    fields = {k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in filters.items() if v is not None}

    async def go():
        async with AdminClient(bootstrap, cfg.topic_prefix, cfg.signing_keys, cfg.encryption_keys,
                               actor=args.actor or getpass.getuser()) as admin:
            return await admin.run("replay_dead_letters", timeout=120, max_records=args.limit, **fields)

    try:
        result = asyncio.run(go())
    except CommandRefused as e:
        print(f"refused: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 1 if result["status"] == "rejected" else 0


def _load(path: str) -> dict:
    text = Path(path).read_text()
    return yaml.safe_load(text) if path.endswith((".yaml", ".yml")) else json.loads(text)


def run_admin(args) -> int:
    import getpass

    from streamer.admin import AdminClient, CommandRefused, read_settings
    from streamer.config import Config

    cfg = Config.from_env()
    bootstrap = args.bootstrap_servers or cfg.bootstrap_servers
    if args.cmd == "dlq":
        return run_dlq(args, cfg, bootstrap)
    if args.action in ("get", "list"):
        state = asyncio.run(read_settings(bootstrap, cfg.topic_prefix))
        rows = []
        for ws, e in sorted(state.workspaces.items()):
            if args.action == "list" or ws == args.workspace:
                rows.append({"workspace": ws, "registration": e.registration and e.registration.model_dump(mode="json"),
                             "config": e.config and redact(e.config.model_dump(mode="json")),
                             "effective": (state.effective(ws) or None) and state.effective(ws).destination_id})
        for pid, p in sorted(state.partners.items()):
            if args.action == "list" or pid == args.partner:
                rows.append({"partner": pid, "config": redact(p.config.model_dump(mode="json"))})
        print(json.dumps(rows, indent=2))
        return 0
    if not cfg.signing_keys:
        print("error: STREAMER_SIGNING_KEYS is not set", file=sys.stderr)
        return 2
    fields: dict
    kind = {"register": "register_workspace", "unregister": "unregister_workspace",
            "put-partner": "put_partner_config", "delete-partner": "delete_partner_config",
            "put-workspace": "put_workspace_config", "delete-workspace": "delete_workspace_config",
            "test": "test_destination"}[args.action]
    if args.action == "register":
        fields = {"workspace_id": args.workspace, "partner_id": args.partner, "role": args.role,
                  "external_id": args.external_id}
    elif args.action == "test":
        fields = {"workspace_id": args.workspace} if args.workspace else {"partner_id": args.partner}
        if args.file:
            fields["config"] = _load(args.file)
        if args.check != "write":  # left out by default: a worker from before probes takes the command
            fields["check"] = args.check
    elif args.action.endswith("partner"):
        fields = {"partner_id": args.partner}
    else:
        fields = {"workspace_id": args.workspace}
    if args.action.startswith("put-"):
        fields["config"] = _load(args.file)

    async def go():
        async with AdminClient(bootstrap, cfg.topic_prefix, cfg.signing_keys, cfg.encryption_keys,
                               actor=args.actor or getpass.getuser()) as admin:
            return await admin.run(kind, **fields)

    from aiokafka.errors import KafkaError

    try:
        result = asyncio.run(go())
    except CommandRefused as e:  # refused before anything was produced
        print(json.dumps({"status": "rejected", "reason": str(e), "sent": False}, indent=2))
        print(f"refused: {e}", file=sys.stderr)
        return 1
    except (KafkaError, OSError):
        raise  # the caller explains connection, TLS, SASL and ACL failures (exit 2)
    except Exception as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(redact(result), indent=2))
    if result["status"] == "rejected":
        if args.action == "test":  # the reason on its own line, as for a refusal
            print(f"failed: {result.get('reason')}", file=sys.stderr)
        return 1
    return 0
