"""The settings table as every worker holds it in memory, and effective-configuration lookup.

Rows of the compacted table topic (key -> JSON value):
  ws/<workspace id>      {"registration": {...}|null, "config": {...}|null, "command": {...}, "format": ...}
  partner/<partner id>   {"config": {...}|null, "command": {...}, "format": ...}
  cmd/<command id>       {"offset", "issued_at", "result"}   (replay protection; tombstoned when expired)

Each row is the whole state of its key, written by one command, so a command is one atomic
write. `format` is the processor's mark that the row holds models it validated (`row_format`). A configuration is turned into a `Route` once, when its row is applied, so the hot
path is two dict lookups and no parsing.
"""

from __future__ import annotations

import functools
import hashlib
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

from streamer.settings.model import Configuration, Registration
from streamer.templates import CompiledTemplate, try_compile


@dataclass(frozen=True, slots=True)
class Route:
    """An enabled configuration, compiled for routing."""

    destination_id: str  # "partner:<id>" or "workspace:<id>": the delivery topic key
    scope: str
    jobs: str  # off | status | details
    user_activity: bool
    template: CompiledTemplate | None
    destination_type: str  # s3 | http
    destination: bytes  # the destination as stored (secrets encrypted), sent with each delivery
    s3_prefix: str = ""

    def wants(self, kind: str) -> bool:
        if kind == "user_activity":
            return self.user_activity
        if kind == "job_summary":
            return self.jobs == "status"
        return self.jobs == "details"


def build_route(destination_id: str, scope: str, config: Configuration,
                destination: bytes | None = None) -> Route | None:
    """`destination`: the destination's JSON when the caller has it already (applying a row
    dumps the whole configuration once; the destination is its last part)."""
    if not config.enabled:
        return None
    dest = config.destination
    if destination is None:
        destination = _exact(orjson.dumps(dest.model_dump(mode="json")))
    # Not getattr(dest, "prefix", ""): on a model without the field that goes through
    # pydantic's missing-attribute path, a tenth of applying a row.
    prefix = dest.prefix if "prefix" in type(dest).model_fields else ""
    return _route(destination_id, scope, config.jobs, config.user_activity, config.template, dest.type,
                  destination, prefix)


def _route(destination_id: str, scope: str, jobs: str, user_activity: bool, template: str | None,
           destination_type: str, destination: bytes, prefix: str | None) -> Route:
    """A route, from a validated configuration or a marked row's dump alike. Interned: JSON
    gives every row its own copy of these few words (40 MB a million workspaces)."""
    compiled, _warning = try_compile(template)
    return Route(destination_id=destination_id, scope=scope, jobs=sys.intern(jobs), user_activity=user_activity,
                 template=compiled, destination_type=sys.intern(destination_type), destination=destination,
                 s3_prefix=prefix or "")


class WorkspaceEntry:
    """One workspace row as held in memory, compactly: a worker holds every workspace.

    The registration and configuration were validated when the row was applied; they are
    kept as their compact JSON (a pydantic model costs kilobytes) and rebuilt as models on
    access, which only command handling and the admin CLI do. Routing reads `partner_id`
    and `route`. The destination, the last and largest part of a configuration, is kept
    once: when the route holds it, `_config` stops just before it (`_config_tail`), which
    takes a third off a million-workspace table.
    """

    __slots__ = ("partner_id", "route", "command_id", "_registration", "_config", "_config_tail")

    def __init__(self, partner_id: str | None, registration_json: bytes | None, config_json: bytes | None,
                 route: Route | None, command_id: str | None):
        self.partner_id = sys.intern(partner_id) if partner_id is not None else None
        self.route = route
        self.command_id = command_id
        self._registration = registration_json
        self._config = config_json
        self._config_tail = False
        if route is not None and self._config is not None:
            ending = route.destination + b"}"
            if self._config.endswith(ending):
                self._config = self._config[:-len(ending)]
                self._config_tail = True

    def _config_json(self) -> bytes | None:
        if self._config_tail:
            return self._config + self.route.destination + b"}"
        return self._config

    @property
    def registration(self) -> Registration | None:
        return None if self._registration is None else Registration.model_validate_json(self._registration)

    @property
    def config(self) -> Configuration | None:
        data = self._config_json()
        return None if data is None else Configuration.model_validate_json(data)

    def fingerprint(self, ws: str) -> bytes:
        """orjson of [ws, registration dump, configuration dump], without rebuilding the models."""
        return orjson.dumps([ws, _fragment(self._registration), _fragment(self._config_json())])

    def __repr__(self) -> str:
        return (f"WorkspaceEntry(partner_id={self.partner_id!r}, registered={self._registration is not None}, "
                f"configured={self._config is not None}, command_id={self.command_id!r})")


def _json(model: Registration | Configuration | None) -> bytes | None:
    return None if model is None else _exact(orjson.dumps(model.model_dump(mode="json")))


def _exact(data: bytes) -> bytes:
    """A copy of exactly its size. orjson's output keeps the capacity of its write buffer (4 KB
    for a 500-byte document): fine for a message on its way out, not for the 100,000 held here."""
    return bytes(memoryview(data))


def _fragment(data: bytes | None) -> orjson.Fragment | None:
    return None if data is None else orjson.Fragment(data)


# Bump when a validator of Registration or Configuration changes what it accepts or how it
# normalises without changing the JSON Schema (the schema's hash covers the rest).
_ROW_FORMAT_REVISION = 1


@functools.cache
def row_format() -> str:
    """The mark the settings processor writes on a table row whose registration and
    configuration are the JSON dump of models this code validated.

    Applying such a row needs no second validation, which was most of the cost of
    recovering a large table (docs/performance.md, Fifth round). A row without the mark, or with
    another one (written by another version, restored from elsewhere, produced by hand),
    is validated as before. The mark is not a signature: only the processor may write the
    table topic (docs/security.md), and a writer that could forge it could as well write
    any valid destination."""
    schemas = orjson.dumps([Registration.model_json_schema(), Configuration.model_json_schema()],
                           option=orjson.OPT_SORT_KEYS)
    return f"{_ROW_FORMAT_REVISION}.{hashlib.sha256(schemas).hexdigest()[:16]}"


def _entry_as_written(ws: str, registration: dict | None, config: dict | None,
                      command_id: str | None) -> WorkspaceEntry:
    """The entry of a marked row, built from its dumps as they are: the same bytes and the
    same route that validating and dumping them again would give (tests/test_hotpath.py)."""
    route = config_json = None
    if config is not None:
        config_json = _exact(orjson.dumps(config))
        if config["enabled"]:
            dest = config["destination"]
            route = _route(f"workspace:{ws}", "workspace", config["jobs"], config["user_activity"],
                           config["template"], dest["type"], _exact(orjson.dumps(dest)), dest.get("prefix"))
    return WorkspaceEntry(registration["partner_id"] if registration is not None else None,
                          _exact(orjson.dumps(registration)) if registration is not None else None,
                          config_json, route, command_id)


@dataclass(slots=True)
class PartnerEntry:
    config: Configuration | None
    route: Route | None
    command_id: str | None


# The commands topic keeps records 30 days (streamer/topics.py); the broker deletes a whole
# segment only once its newest record is past retention, which adds up to a segment's span
# (segment.ms, 7 days by default). tests/test_pure.py ties this to the topic definition.
SEEN_HORIZON = timedelta(days=30 + 7 + 1)


@dataclass(slots=True)
class SeenCommand:
    offset: int
    issued_at: datetime
    result: dict[str, Any] | None  # None: the state row was written but not yet the cmd row


@dataclass
class SettingsState:
    workspaces: dict[str, WorkspaceEntry] = field(default_factory=dict)
    partners: dict[str, PartnerEntry] = field(default_factory=dict)
    seen: dict[str, SeenCommand] = field(default_factory=dict)
    version: int = -1  # offset of the last table row applied
    # Commands issued before this can no longer be on the commands topic, so no record can
    # replay them: the command that wrote a row is remembered only if it is newer. (Else a
    # worker would hold, and the processor then tombstone, one id per workspace ever set.)
    seen_floor: datetime = field(default_factory=lambda: datetime.now(timezone.utc) - SEEN_HORIZON)

    # -- applying table rows -------------------------------------------------------------
    def apply(self, key: bytes, value: bytes | None, offset: int) -> None:
        # The table is one partition, read in order, so a row at or below the last offset
        # applied is a re-read and already in force. (An offset per key would say the same
        # at ~100 bytes a workspace.)
        if offset <= self.version:
            return
        self.version = offset
        kind, _, ident = key.decode().partition("/")
        row = orjson.loads(value) if value is not None else None
        if kind == "ws":
            self._apply_workspace(ident, row)
        elif kind == "partner":
            self._apply_partner(ident, row)
        elif kind == "cmd":
            if row is None:
                self.seen.pop(ident, None)
            else:
                self.seen[ident] = SeenCommand(row["offset"], datetime.fromisoformat(row["issued_at"]),
                                               row["result"])
        if row is not None and "command" in row:
            cmd = row["command"]
            if cmd["id"] not in self.seen:
                issued_at = datetime.fromisoformat(cmd["issued_at"])
                if issued_at >= self.seen_floor:
                    self.seen[cmd["id"]] = SeenCommand(cmd["offset"], issued_at, None)

    def _apply_workspace(self, ws: str, row: dict | None) -> None:
        if row is None or (row.get("registration") is None and row.get("config") is None):
            self.workspaces.pop(ws, None)
            return
        command_id = row.get("command", {}).get("id")
        if row.get("format") == row_format():
            try:
                self.workspaces[ws] = _entry_as_written(ws, row["registration"], row["config"], command_id)
                return
            except (KeyError, TypeError, AttributeError):
                pass  # not what the mark says: validated like any other row
        reg = Registration.model_validate(row["registration"]) if row.get("registration") else None
        config = Configuration.model_validate(row["config"]) if row.get("config") else None
        config_json = route = None
        if config is not None:
            dumped = config.model_dump(mode="json")  # once: the entry's JSON and the route's destination
            config_json = _exact(orjson.dumps(dumped))
            route = build_route(f"workspace:{ws}", "workspace", config, _exact(orjson.dumps(dumped["destination"])))
        self.workspaces[ws] = WorkspaceEntry(reg.partner_id if reg is not None else None, _json(reg),
                                             config_json, route, command_id)

    def _apply_partner(self, partner: str, row: dict | None) -> None:
        if row is None or row.get("config") is None:
            self.partners.pop(partner, None)
            return
        config = Configuration.model_validate(row["config"])
        route = build_route(f"partner:{partner}", "partner", config)
        self.partners[partner] = PartnerEntry(config, route, row.get("command", {}).get("id"))

    def forget_seen_before(self, cutoff: datetime, limit: int | None = None) -> list[str]:
        """Forget (at most `limit`) command ids issued before `cutoff`; returns them, so the
        caller can tombstone their table rows."""
        expired = [cid for cid, s in self.seen.items() if s.issued_at < cutoff][:limit]
        for cid in expired:
            del self.seen[cid]
        return expired

    def digest(self) -> str:
        """A fingerprint of every registration and configuration, to compare workers' views."""
        h = hashlib.sha256()
        for ws in sorted(self.workspaces):
            h.update(self.workspaces[ws].fingerprint(ws))
        for pid in sorted(self.partners):
            h.update(orjson.dumps([pid, self.partners[pid].config.model_dump(mode="json")]))
        return h.hexdigest()

    # -- resolution (spec section 2) ------------------------------------------------------
    def effective(self, workspace_id: str) -> Route | None:
        """The configuration that governs this workspace's events, or None: not streamed.

        1. the partner's enabled partner-wide configuration, whatever the workspace says;
        2. else the workspace's own enabled configuration;
        3. else nothing (an unregistered workspace is never streamed).
        """
        entry = self.workspaces.get(workspace_id)
        if entry is None or entry.partner_id is None:
            return None
        partner = self.partners.get(entry.partner_id)
        if partner is not None and partner.route is not None:
            return partner.route
        return entry.route

    def partner_wide_enabled(self, partner_id: str) -> bool:
        p = self.partners.get(partner_id)
        return p is not None and p.route is not None
