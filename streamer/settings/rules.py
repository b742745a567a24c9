"""Deciding a settings command: pure, given the current state. No I/O, so every rule is unit tested.

The order of checks matters for security: the size of the raw command, then the signature,
verified on the raw JSON before anything else is trusted or looked at, then the model, then
freshness and replay, then the rules. `authenticate` runs the first three; the processor
uses it to look up destination hosts only for commands that are signed and well formed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import orjson
from pydantic import TypeAdapter, ValidationError

from streamer.settings import limits, secrets, signing
from streamer.settings.model import (ApiKeyAuth, AzureBlobDestination, AzureMonitorDestination, BearerAuth, Command,
                                     Configuration, DeletePartnerConfig, DeleteWorkspaceConfig, GcsDestination,
                                     HttpDestination, OAuth2ClientCredentials, PutPartnerConfig, PutWorkspaceConfig,
                                     RegisterWorkspace, ReplayDeadLetters, Registration, S3Destination, TestDestination,
                                     UnregisterWorkspace)
from streamer.settings.state import SettingsState, row_format
from streamer.settings.urls import check_url
from streamer.templates import try_compile
from streamer.sinks.azure_blob import request as azure_blob_request
from streamer.sinks.gcs import request as gcs_request
from streamer.sinks.http import tls

_COMMAND = TypeAdapter(Command)
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # control characters except tab


@dataclass(frozen=True)
class Policy:
    signing_keys: dict[str, bytes]
    encryption_keys: dict[str, bytes]
    allow_private_destinations: bool
    command_max_age_s: float


@dataclass
class Decision:
    command_id: str
    status: str  # accepted | accepted_with_warning | rejected
    reason: str | None = None
    warning: str | None = None
    row_key: bytes | None = None  # the one state row this command writes
    row_value: dict[str, Any] | None = None
    issued_at: datetime | None = None  # set when the command is authentic: it is then recorded
    previous_result: dict[str, Any] | None = None  # a re-delivered command: publish this again
    already_applied: bool = False
    replay: ReplayDeadLetters | None = None  # the processor re-sends matching dead letters
    test: "TestTarget | None" = None  # the processor sends a test event to this destination


@dataclass(frozen=True)
class TestTarget:
    __test__ = False  # not a pytest test class

    destination_id: str
    destination_type: str  # s3 | http
    destination: bytes  # as stored (secrets encrypted)
    s3_prefix: str
    workspace_id: str
    check: str = "write"  # write | probe (streamer/sinks/testing.py)


def _reject(command_id: str, reason: str, issued_at: datetime | None = None) -> Decision:
    return Decision(command_id, "rejected", reason=reason, issued_at=issued_at)


_TAGS = {"register_workspace", "unregister_workspace", "put_partner_config", "delete_partner_config",
         "put_workspace_config", "delete_workspace_config", "replay_dead_letters", "http", "s3"}


_AUTH_TAGS = {"none", "basic", "api_key", "bearer", "oauth2_client_credentials"}
_UNION_MEMBERS = {"constrained-str", "Encrypted"}  # of a url that may be encrypted


def _field_error(err: ValidationError) -> str:
    first = err.errors()[0]
    # Union tags (the command, destination and auth type) are pydantic's path, not the field's.
    loc = ".".join(str(p) for i, p in enumerate(first["loc"])
                   if not (p in _TAGS and (i == 0 or first["loc"][i - 1] == "destination"))
                   and not (p in _AUTH_TAGS and i > 0 and first["loc"][i - 1] == "auth")
                   and p not in _UNION_MEMBERS)
    return f"field '{loc}': {first['msg']}" if loc else first["msg"]


def check_configuration(config: Configuration, policy: Policy, scope: str,
                        resolved: dict[str, list[str]] | None = None) -> tuple[str | None, str | None]:
    """(reason to reject, warning). `scope`: `ws/<id>` or `partner/<id>`, which the secrets must be bound to."""
    for field, envelope in secrets.find_envelopes(config.model_dump(mode="json")):
        try:
            plaintext = secrets.decrypt(envelope, policy.encryption_keys, scope, field, allow_v1=False)
        except secrets.SecretError as e:
            return str(e), None
        if len(plaintext.encode()) > limits.MAX_HEADER_VALUE_BYTES:
            return limits.too_big(f"secret {field}", len(plaintext.encode()), limits.MAX_HEADER_VALUE_BYTES), None
        if (isinstance(config.destination, HttpDestination) and _sent_as_header(field)
                and (not plaintext or _CONTROL.search(plaintext))):
            # Refused here with the reason, not at send time, where aiohttp's ValueError
            # would park every delivery of the destination until the retry horizon.
            return f"secret {field} is empty or contains a control character (it is sent as a header value)", None
    dest = config.destination
    if isinstance(dest, HttpDestination):
        reason = _check_http(dest, policy, lambda env, field: secrets.decrypt(env, policy.encryption_keys, scope, field),
                             resolved)
        if reason:
            return reason, None
    elif isinstance(dest, S3Destination):
        if dest.endpoint_url:
            reason = check_url(dest.endpoint_url, policy.allow_private_destinations, resolved)
            if reason:
                return f"s3 endpoint {reason}", None
        if (dest.access_key_id is None) != (dest.secret_access_key is None):
            return "s3 credentials need both access_key_id and secret_access_key, or neither", None
        if dest.kms_key_id and dest.server_side_encryption != "aws:kms":
            return "s3 kms_key_id needs server_side_encryption aws:kms", None
        if dest.external_id and not dest.role_arn:
            return "s3 external_id needs role_arn", None
    elif isinstance(dest, AzureBlobDestination):
        reason = check_url(dest.account_url, policy.allow_private_destinations, resolved)
        if reason:
            return f"azure_blob account_url {reason}", None
        reason = azure_blob_request.check_destination(dest.model_dump(mode="json"),
                                                      lambda env, field: secrets.decrypt(env, policy.encryption_keys, scope, field))
        if reason:
            return reason, None
    elif isinstance(dest, GcsDestination):
        if dest.service_account_key is not None:
            try:
                key = gcs_request.parse_key(secrets.decrypt(dest.service_account_key.enc, policy.encryption_keys, scope,
                                                                "destination.service_account_key"))
            except ValueError as e:
                return f"gcs {e}", None
            reason = gcs_request.check_token_uri(key, policy.allow_private_destinations)
            if reason:
                return f"gcs {reason}", None
        if dest.endpoint_url:
            reason = check_url(dest.endpoint_url, policy.allow_private_destinations, resolved)
            if reason:
                return f"gcs endpoint_url {reason}", None
    elif isinstance(dest, AzureMonitorDestination):
        for what, url in (("endpoint", dest.endpoint), ("authority", dest.authority)):
            reason = check_url(url, policy.allow_private_destinations, resolved)
            if reason:
                return f"azure_monitor {what} {reason}", None
    _template, warning = try_compile(config.template)
    return None, warning


def _sent_as_header(field: str) -> bool:
    """A REST destination's secret that goes out as a header value (DD-API-KEY, Splunk's
    Authorization, the tenant's own secret headers); auth's have their own check below."""
    return field in ("destination.api_key", "destination.token") or field.startswith("destination.secret_headers.")


def _check_http(dest: HttpDestination, policy: Policy, decrypt, resolved: dict[str, list[str]] | None) -> str | None:
    """Why a REST destination is refused, or None. Its secrets have decrypted already."""
    if isinstance(dest.url, str) and dest.provider == "sumo":
        # Its path carries the source's token. Stored rows with a plain URL still load and
        # deliver; a command must not put a new one on the commands topic (kept 30 days).
        return ("a sumo url carries its source token: it must be encrypted (the CLI encrypts it; "
                "re-put the configuration with this version of the CLI)")
    url = dest.url if isinstance(dest.url, str) else decrypt(dest.url.enc, "destination.url")
    reason = check_url(url, policy.allow_private_destinations, resolved)
    if reason:
        return f"destination {reason}"
    if dest.provider == "datadog" and dest.api_key is None:
        return "a datadog destination needs api_key"
    if dest.provider == "splunk" and dest.token is None:
        return "a splunk destination needs token"
    auth = dest.auth
    if isinstance(auth, OAuth2ClientCredentials):
        reason = check_url(auth.token_url, policy.allow_private_destinations, resolved)
        if reason:
            return f"auth token {reason}"
    header_secret = (decrypt(auth.value.enc, "destination.auth.value") if isinstance(auth, ApiKeyAuth) else
                     decrypt(auth.token.enc, "destination.auth.token") if isinstance(auth, BearerAuth) else None)
    if header_secret is not None and (not header_secret or _CONTROL.search(header_secret)):
        return "auth secret is empty or contains a control character (it is sent as a header value)"
    if dest.proxy_url is not None:
        reason = check_url(dest.proxy_url, policy.allow_private_destinations, resolved, proxy=True)
        if reason:
            return f"proxy {reason}"
    if dest.tls is not None:
        if urlsplit(url).scheme != "https":
            return "tls needs an https url"
        key = decrypt(dest.tls.client_key.enc, "destination.tls.client_key") if dest.tls.client_key else None
        reason = tls.problem(dest.tls.ca_bundle, dest.tls.client_cert, key)
        if reason:
            return reason
    return None


def command_id_of(body: Any) -> str:
    """The id a result is published under: the command's own when it has a usable one."""
    cid = body.get("command_id") if isinstance(body, dict) else None
    return cid[:128] if isinstance(cid, str) and cid else "unknown"


def authenticate(raw: bytes, policy: Policy, verify_signature: bool = True) -> tuple[str, Command | None, str | None]:
    """(command id, command, None) for a signed, well-formed command, else (command id, None, reason).

    Size first (nothing bigger is even parsed), then the signature over the raw JSON, then
    the model: nothing in an unsigned command is looked at beyond its id."""
    if len(raw) > limits.MAX_COMMAND_BYTES:
        return "unknown", None, limits.too_big("command", len(raw), limits.MAX_COMMAND_BYTES)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        return "unknown", None, f"command is not valid JSON: {e}"
    if not isinstance(body, dict):
        return "unknown", None, "command is not a JSON object"
    command_id = command_id_of(body)
    if verify_signature:
        bad_signature = signing.verify(body, policy.signing_keys)
        if bad_signature:
            return command_id, None, bad_signature
    try:
        cmd = _COMMAND.validate_python(body)
    except ValidationError as e:
        return command_id, None, f"malformed command: {_field_error(e)}"
    if cmd.issued_at.tzinfo is None:
        return command_id, None, "issued_at must carry a UTC offset"
    return command_id, cmd, None


def scope_of(cmd: Command) -> str | None:
    """The settings scope a command's configuration (and its secrets) belongs to."""
    if isinstance(cmd, (PutWorkspaceConfig, TestDestination)) and cmd.workspace_id is not None:
        return f"ws/{cmd.workspace_id}"
    if isinstance(cmd, (PutPartnerConfig, TestDestination)) and cmd.partner_id is not None:
        return f"partner/{cmd.partner_id}"
    return None


def check_standalone(cmd: Command, policy: Policy, resolved: dict[str, list[str]] | None = None) -> str | None:
    """The checks that need no settings state: what the admin CLI runs before producing
    (with the worker's rules, so a command it lets through is refused by the worker only
    for a state rule, such as a workspace that is not registered)."""
    config = getattr(cmd, "config", None)
    if config is None:
        return None
    reason, _warning = check_configuration(config, policy, scope_of(cmd), resolved)
    return reason


def decide(state: SettingsState, raw: bytes, offset: int, policy: Policy, now: datetime,
           resolved: dict[str, list[str]] | None = None) -> Decision:
    """`resolved`: the destination hosts' addresses, looked up by the caller (no I/O here).
    `now`: the time freshness is judged against, the broker timestamp of the command's
    record (see SettingsProcessor.handle), so a queue on the commands topic does not age
    the commands waiting in it."""
    command_id, cmd, reason = authenticate(raw, policy)
    if cmd is None:
        return _reject(command_id, reason)
    age = (now - cmd.issued_at).total_seconds()
    if abs(age) > policy.command_max_age_s:
        return _reject(command_id, f"issued_at is {age:.0f}s from the command's record time, outside the "
                                   f"allowed window of {policy.command_max_age_s:.0f}s")
    seen = state.seen.get(cmd.command_id)
    if seen is not None:
        if seen.offset == offset:  # the same record again after a crash: answer as before
            return Decision(cmd.command_id, "accepted", previous_result=seen.result,
                            already_applied=seen.result is None, issued_at=cmd.issued_at)
        return _reject(cmd.command_id, f"command id {cmd.command_id!r} was already used (replay refused)")

    decision = _rules(state, cmd, policy, resolved)
    decision.issued_at = cmd.issued_at
    if decision.row_value is not None:
        decision.row_value["command"] = {"id": cmd.command_id, "offset": offset,
                                         "issued_at": cmd.issued_at.isoformat(), "actor": cmd.actor}
        # Every row's registration and configuration are dumps of models validated here.
        decision.row_value["format"] = row_format()
    return decision


def _rules(state: SettingsState, cmd, policy: Policy, resolved: dict[str, list[str]] | None) -> Decision:
    cid = cmd.command_id
    if isinstance(cmd, RegisterWorkspace):
        entry = state.workspaces.get(cmd.workspace_id)
        if entry and entry.registration and entry.registration.partner_id != cmd.partner_id:
            return _reject(cid, f"workspace {cmd.workspace_id} is registered to partner "
                                f"{entry.registration.partner_id}; unregister it first")
        reg = Registration(workspace_id=cmd.workspace_id, partner_id=cmd.partner_id, role=cmd.role,
                           external_id=cmd.external_id)
        config = entry.config if entry else None
        return _accept(cid, f"ws/{cmd.workspace_id}", {"registration": reg.model_dump(mode="json"),
                                                        "config": _dump(config)})
    if isinstance(cmd, UnregisterWorkspace):
        entry = state.workspaces.get(cmd.workspace_id)
        if not entry or not entry.registration:
            return _reject(cid, f"workspace {cmd.workspace_id} is not registered")
        # Its own configuration goes too: a workspace re-registered later, maybe under
        # another partner, must not inherit a destination chosen for it before.
        return _accept(cid, f"ws/{cmd.workspace_id}", {"registration": None, "config": None})
    if isinstance(cmd, PutWorkspaceConfig):
        entry = state.workspaces.get(cmd.workspace_id)
        if not entry or not entry.registration:
            return _reject(cid, f"workspace {cmd.workspace_id} is not registered")
        reg = entry.registration
        if reg.role == "customer" and state.partner_wide_enabled(reg.partner_id):
            return _reject(cid, f"partner {reg.partner_id} has partner-wide streaming enabled "
                                f"(stream all customers), which overrides workspace settings; "
                                f"disable it first")
        reason, warning = check_configuration(cmd.config, policy, f"ws/{cmd.workspace_id}", resolved)
        if reason:
            return _reject(cid, reason)
        return _accept(cid, f"ws/{cmd.workspace_id}", {"registration": reg.model_dump(mode="json"),
                                                        "config": _dump(cmd.config)}, warning)
    if isinstance(cmd, DeleteWorkspaceConfig):
        entry = state.workspaces.get(cmd.workspace_id)
        if not entry or not entry.config:
            return _reject(cid, f"workspace {cmd.workspace_id} has no configuration")
        return _accept(cid, f"ws/{cmd.workspace_id}", {"registration": _dump(entry.registration), "config": None})
    if isinstance(cmd, PutPartnerConfig):
        reason, warning = check_configuration(cmd.config, policy, f"partner/{cmd.partner_id}", resolved)
        if reason:
            return _reject(cid, reason)
        return _accept(cid, f"partner/{cmd.partner_id}", {"config": _dump(cmd.config)}, warning)
    if isinstance(cmd, DeletePartnerConfig):
        if cmd.partner_id not in state.partners:
            return _reject(cid, f"partner {cmd.partner_id} has no partner-wide configuration")
        return _accept(cid, f"partner/{cmd.partner_id}", {"config": None})
    if isinstance(cmd, ReplayDeadLetters):
        if not (cmd.workspace_id or cmd.destination_id or cmd.event_ids or cmd.since or cmd.until):
            return _reject(cid, "a replay needs at least one filter (workspace, destination, event ids or time)")
        return Decision(cid, "accepted", replay=cmd)
    if isinstance(cmd, TestDestination):
        return _test(state, cmd, policy, resolved)
    raise AssertionError(f"unhandled command {type(cmd).__name__}")


def _test(state: SettingsState, cmd: TestDestination, policy: Policy,
          resolved: dict[str, list[str]] | None) -> Decision:
    """Which destination a test command tries: the given configuration (checked like a put),
    else the workspace's effective destination, else the partner's partner-wide one."""
    cid = cmd.command_id
    if (cmd.workspace_id is None) == (cmd.partner_id is None):
        return _reject(cid, "a test needs exactly one of workspace_id and partner_id")
    scope, ident = ("workspace", cmd.workspace_id) if cmd.workspace_id else ("partner", cmd.partner_id)
    if cmd.config is not None:
        settings_scope = f"ws/{ident}" if scope == "workspace" else f"partner/{ident}"
        reason, _warning = check_configuration(cmd.config, policy, settings_scope, resolved)
        if reason:
            return _reject(cid, reason)
        from streamer.settings.state import build_route

        route = build_route(f"{scope}:{ident}", scope, cmd.config.model_copy(update={"enabled": True}))
    elif cmd.workspace_id is not None:
        route = state.effective(cmd.workspace_id)
        if route is None:
            return _reject(cid, f"workspace {cmd.workspace_id} has no effective destination (not registered, "
                                f"or no enabled configuration)")
    else:
        partner = state.partners.get(cmd.partner_id)
        route = partner.route if partner else None
        if route is None:
            return _reject(cid, f"partner {cmd.partner_id} has no enabled partner-wide configuration")
    return Decision(cid, "accepted", test=TestTarget(route.destination_id, route.destination_type,
                                                     route.destination, route.s3_prefix, cmd.workspace_id or "",
                                                     cmd.check))


def _accept(cid: str, key: str, row: dict, warning: str | None = None) -> Decision:
    return Decision(cid, "accepted_with_warning" if warning else "accepted", warning=warning,
                    row_key=key.encode(), row_value=row)


def _dump(model) -> dict | None:
    return None if model is None else model.model_dump(mode="json")


def cutoff(now: datetime, policy: Policy) -> datetime:
    return now - timedelta(seconds=2 * policy.command_max_age_s)
