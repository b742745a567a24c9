"""`streamer status`: the merged per-destination status, as a table or JSON.

Selection and formatting are plain functions over a `StatusTable` and a `SettingsState`
(tested without a broker); `run_status` only reads the two topics.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone

from streamer.settings.state import SettingsState
from streamer.status import MergedStatus, StatusTable


def select(table: StatusTable, state: SettingsState, workspace: str | None = None, partner: str | None = None,
           failing: bool = False, now_ms: int | None = None) -> tuple[list[MergedStatus], str | None]:
    """The destinations to show, and a note when a workspace has nothing to show.

    --workspace: its effective destination (partner-wide when its partner has one enabled);
    --partner: the partner-wide destination and those of the partner's workspaces."""
    merged = table.merged(now_ms)
    note = None
    if workspace is not None:
        route = state.effective(workspace)
        if route is None:
            return [], f"workspace {workspace} is not streamed (unregistered, or no enabled configuration)"
        ids = {route.destination_id}
        if route.destination_id not in merged:
            note = f"{route.destination_id}: no deliveries reported yet"
    elif partner is not None:
        ids = {f"partner:{partner}"} | {f"workspace:{ws}" for ws, e in state.workspaces.items()
                                        if e.partner_id == partner}
    else:
        ids = set(merged)
    rows = [merged[d] for d in sorted(ids) if d in merged and (not failing or merged[d].state == "failing")]
    return rows, note


def _when(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


COLUMNS = ("DESTINATION", "STATE", "BREAKER", "LAST SUCCESS", "LAST FAILURE", "STATUS", "FAILS", "PARKED",
           "DEAD", "REASON")


def table_text(rows: list[MergedStatus]) -> str:
    lines = [COLUMNS]
    for r in rows:
        since = f" since {_when(r.failing_since_ms)}" if r.failing_since_ms else ""
        lines.append((r.destination_id, r.state, r.breaker, _when(r.last_success_ms), _when(r.last_failure_ms),
                      str(r.last_failure_status or "-"), str(r.consecutive_failures), str(r.parked),
                      str(r.dead_lettered), ((r.last_failure_reason or "-") + since)[:120]))
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)) + "  " + line[-1] for line in lines)


def run_status(args, bootstrap: str) -> int:
    from streamer import topics as T
    from streamer.admin import read_settings
    from streamer.config import Config
    from streamer.status_io import read_status

    cfg = Config.from_env()
    prefix = cfg.topic_prefix

    async def go():
        table = await read_status(bootstrap, prefix + T.DESTINATION_STATUS)
        state = await read_settings(bootstrap, prefix) if (args.workspace or args.partner) else SettingsState()
        return table, state

    table, state = asyncio.run(go())
    rows, note = select(table, state, args.workspace, args.partner, args.failing)
    if args.json:
        print(json.dumps({"destinations": [r.as_dict() for r in rows], "note": note}, indent=2))
    else:
        print(table_text(rows))
        if note:
            print(note)
    return 0
