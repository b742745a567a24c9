"""The benchmark workload: synthetic audit events of realistic sizes and a settings table of
many workspaces, both deterministic for a given seed.

Events carry a token `~<seq>~<sent_ns>~` in an extra field (`bench`): unknown fields pass
through the streamer unchanged, and the token survives every wire format (no character in
it is escaped in JSON, even twice), so a receiver finds it in a request body with one regex
instead of parsing every message.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable

import orjson

from streamer import topics as T
from streamer.settings.state import SettingsState

# The event mix: 70% job summaries (~1 KB), 10% job details (~20 KB), 20% user activity (~1 KB).
MIX = (("job_summary", 70), ("job_details", 10), ("user_activity", 20))
TOPIC_OF_KIND = {"job_summary": T.JOBS_SUMMARY, "job_details": T.JOBS_DETAILS, "user_activity": T.USER_ACTIVITY}
TOKEN_FIELD = "bench"

TEMPLATES = (
    '{"source": "workato", "environment": "bench", "logEntries": {{log_message}}}',
    '{"s": {{{log_message_str}}}, "at": {{{now_utc}}}}',
    '{"e": {{{log_message}}}, "t": {{{now}}}}',
)


def token(seq: int, sent_ns: int) -> str:
    return f"~{seq}~{sent_ns}~"


def kinds(n: int, seed: int = 1) -> list[str]:
    """n event kinds in the exact proportions of MIX, shuffled."""
    out: list[str] = []
    total = sum(w for _, w in MIX)
    for kind, weight in MIX:
        out += [kind] * (n * weight // total)
    out += ["job_summary"] * (n - len(out))
    random.Random(seed).shuffle(out)
    return out


def _job_common(ws: int, seq: int, sent_ns: int) -> dict[str, Any]:
    handle = f"j-bench{seq:08d}-Hk2sLd"
    recipe = 4_410_000 + seq % 997
    return {
        "id": handle, "master_job_id": handle, "recipe_id": recipe, "calling_job_id": None,
        "calling_recipe_id": None, "root_job_handle": handle, "root_recipe_id": recipe,
        "title": f"New invoice {seq} in NetSuite", "status": "failed" if seq % 11 == 0 else "succeeded",
        "is_repeat": False, "is_test": False, "started_at": "2026-03-14T09:29:58-07:00",
        "completed_at": "2026-03-14T09:30:02-07:00", "repeat_count": 0, "action_count": 3,
        "parent_id": None, "flow_id": recipe, "error_type": None, "is_poll_error": False,
        "account_id": ws, "account_name": "Acme Freight (customer)", "environment_type": "prod",
        "environment_id": ws, "error": None, "report": {"invoice_number": str(seq), "amount": 1250.5},
        "context": {"user_id": ws, "user_external_id": f"ext-{ws}", "user_name": "Acme Freight (customer)",
                    "user_email": "ops@acme-freight.example", "recipe_id": recipe,
                    "recipe_url": f"https://app.example.com/recipes/{recipe}",
                    "recipe_name": "Sync invoices to ledger", "recipe_path": "Home/Finance", "job_id": handle,
                    "master_job_id": handle},
        TOKEN_FIELD: token(seq, sent_ns),
    }


def job_summary(ws: int, seq: int, sent_ns: int = 0) -> dict[str, Any]:
    return _job_common(ws, seq, sent_ns)


def _line(n: int) -> dict[str, Any]:
    return {"recipe_line_number": n, "adapter_name": "netsuite" if n % 2 else "postgresql",
            "adapter_operation": "search_records" if n % 3 else "insert_row",
            "input": {"since": "2026-03-14T09:00:00-07:00", "filter": {"status": "open", "page": n},
                      "fields": ["id", "number", "amount", "currency", "customer", "memo"]},
            "output": {"records": [{"id": f"{n}-{i}", "amount": "1250.00", "currency": "EUR",
                                    "memo": "Quarterly subscription renewal"} for i in range(2)]},
            "mask_data": False,
            "line_stat": {"total": 0.412, "details": [{"name": "execute", "count": 1, "total": 0.398,
                                                        "min": 0.398, "max": 0.398, "average": 0.398}]}}


_LINES = [_line(n) for n in range(33)]


def job_details(ws: int, seq: int, sent_ns: int = 0) -> dict[str, Any]:
    return {**_job_common(ws, seq, sent_ns), "lines": _LINES}


def user_activity(ws: int, seq: int, sent_ns: int = 0) -> dict[str, Any]:
    return {
        "id": f"ua-bench-{seq:010d}", "event": "user_login" if seq % 3 else "recipe_renamed",
        "timestamp": "2026-03-14 16:31:07 UTC",
        "user": {"id": 99120 + seq % 50, "external_id": "u-4471", "name": "Dana Okafor",
                 "email": "dana@acme-freight.example"},
        "team": {"id": ws, "external_id": f"ext-{ws}", "name": "Acme Freight (customer)",
                 "email": "ops@acme-freight.example"},
        "resource": {"id": 99120, "type": "User", "name": "Dana Okafor", "email": "dana@acme-freight.example",
                     "email_confirmed_at": "2025-11-02 10:15:44 -0800"},
        "resource_changes": {"name": {"old_value": "Nightly export", "new_value": "Nightly export v2"}},
        "details": {"request": {"ip_address": "203.0.113.24",
                                "user_agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like "
                                              "Gecko) Chrome/131.0.0.0 Safari/537.36"},
                    "activity": "sso_login", "sso_provider": "google", "session": f"s-{seq:012d}",
                    "roles": ["Admin", "Operator", "Analyst"], "workspace_path": "Home/Finance/Invoices/EU",
                    "trace_id": f"00-{seq:032x}-{seq:016x}-01"},
        TOKEN_FIELD: token(seq, sent_ns),
    }


BUILDERS: dict[str, Callable[[int, int, int], dict]] = {
    "job_summary": job_summary, "job_details": job_details, "user_activity": user_activity}


def event_bytes(kind: str, ws: str, seq: int, sent_ns: int = 0) -> bytes:
    return orjson.dumps(BUILDERS[kind](int(ws), seq, sent_ns))


# -- settings ---------------------------------------------------------------------------------

@dataclass
class Settings:
    rows: list[tuple[bytes, bytes]]  # (key, value) rows of the settings table, in order
    state: SettingsState  # the same rows applied, as a worker holds them
    streamed: dict[str, list[str]] = field(default_factory=dict)  # kind -> workspaces it is delivered for
    destinations: int = 0  # enabled configurations (= delivery destination ids)

    def workspace_for(self, kind: str, rng: random.Random) -> str:
        candidates = self.streamed[kind]
        return candidates[rng.randrange(len(candidates))]


def build_settings(destination: Callable[[str], dict], workspaces: int = 5000, partners: int = 50,
                   partner_wide: int = 10, configured_share: float = 0.5, seed: int = 7,
                   encryption_keys: dict[str, bytes] | None = None, apply: bool = True) -> Settings:
    """`workspaces` registered in `partners` equal partners. The first `partner_wide`
    partners stream all their workspaces to one partner-wide destination each; in the others
    a `configured_share` of the workspaces have their own configuration and the rest none.
    Configurations mix jobs=status (70%) and details (30%), user activity on (90%), and a
    template (25%). Secrets are encrypted as the admin CLI does. `destination(name)` gives
    a configuration's destination (plaintext secrets)."""
    from streamer.admin import encrypt_secrets
    from streamer.settings.model import Configuration
    from streamer.settings.state import row_format

    rng = random.Random(seed)
    keys = encryption_keys or {}
    per_partner = max(1, workspaces // partners)

    def config(name: str, scope: str) -> dict:
        c = {"jobs": "details" if rng.random() < 0.3 else "status", "user_activity": rng.random() < 0.9,
             "destination": destination(name)}
        if rng.random() < 0.25:
            c["template"] = TEMPLATES[rng.randrange(len(TEMPLATES))]
        return encrypt_secrets(c, keys, scope) if keys else c

    def command(i: int) -> dict:
        return {"id": f"bench-seed-{i}", "offset": i, "issued_at": "2026-01-01T00:00:00+00:00", "actor": "bench"}

    def as_written(c: dict | None) -> dict | None:
        # As the settings processor writes a configuration: validated, dumped, marked (row_format).
        return None if c is None else Configuration.model_validate(c).model_dump(mode="json")

    rows: list[tuple[bytes, bytes]] = []
    for p in range(min(partner_wide, partners)):
        rows.append((f"partner/bp{p}".encode(),
                     orjson.dumps({"config": as_written(config(f"partner-bp{p}", f"partner/bp{p}")),
                                   "command": command(len(rows)), "format": row_format()})))
    for i in range(workspaces):
        ws = str(1_000_000 + i)
        p = min(i // per_partner, partners - 1)
        own = p >= partner_wide and rng.random() < configured_share
        rows.append((f"ws/{ws}".encode(), orjson.dumps({
            "registration": {"workspace_id": ws, "partner_id": f"bp{p}",
                             "role": "admin" if i % per_partner == 0 else "customer", "external_id": f"ext-{ws}"},
            "config": as_written(config(f"ws-{ws}", f"ws/{ws}")) if own else None,
            "command": command(len(rows)), "format": row_format()})))
    state = SettingsState()
    settings = Settings(rows, state)
    if not apply:
        return settings
    for offset, (k, v) in enumerate(rows):
        state.apply(k, v, offset)
    for kind, _ in MIX:
        settings.streamed[kind] = [ws for ws in state.workspaces
                                   if (r := state.effective(ws)) is not None and r.wants(kind)]
    settings.destinations = (sum(1 for p in state.partners.values() if p.route is not None)
                             + sum(1 for e in state.workspaces.values() if e.route is not None))
    return settings


def datadog_destination(base_url: str, api_key: str) -> Callable[[str], dict]:
    return lambda name: {"type": "http", "provider": "datadog", "url": f"{base_url}/dd/{name}", "api_key": api_key,
                         "ddtags": "env:bench", "service": "audit-log"}


def s3_destination(endpoint: str, bucket: str) -> Callable[[str], dict]:
    return lambda name: {"type": "s3", "bucket": bucket, "endpoint_url": endpoint, "prefix": name,
                         "access_key_id": "testing", "secret_access_key": "testing"}


def raw_events(settings: Settings, n: int, seed: int = 1, first_seq: int = 0) -> list[tuple[str, str, int]]:
    """(kind, workspace, seq) of n events, every one delivered under `settings`."""
    rng = random.Random(seed)
    return [(kind, settings.workspace_for(kind, rng), first_seq + i) for i, kind in enumerate(kinds(n, seed))]
