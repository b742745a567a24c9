"""Admin client: build, sign and send settings commands, and wait for their results.

Used by `streamer settings ...`, the demo and the tests. Plaintext secrets in a
configuration file are encrypted here, before the command leaves the admin's machine, so
the control topic only ever carries envelopes, each bound to the workspace or partner and
field it is for (streamer/settings/secrets.py).

Before a command is produced it goes through the worker's own checks that need no settings
state (`rules.authenticate` without the signature, `rules.check_standalone`): a command the
worker would refuse for its content (a plaintext `Authorization` header, a URL with
credentials, a private address, a size limit) is refused here and never reaches the topic,
which keeps it for 30 days.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime, timezone
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streamer import topics as T
from streamer.kafka_client import KafkaSecurity, client_kwargs
from streamer.idempotence import IdempotentProducer
from streamer.settings import secrets, signing
from streamer.settings.rules import Policy, authenticate, check_standalone
from streamer.settings.state import SettingsState

SECRET_FIELDS = ("api_key", "token", "secret_access_key", "account_key", "sas_token", "connection_string",
                 "service_account_key", "client_secret")
# Secrets inside a REST destination's `auth` and `tls` objects.
NESTED_SECRET_FIELDS = {"auth": ("password", "value", "token", "client_secret"), "tls": ("client_key",)}


class CommandRefused(ValueError):
    """The command fails the worker's checks; it was not sent."""


def scope_for(fields: dict[str, Any]) -> str | None:
    """The settings scope a command's configuration belongs to: `ws/<id>` or `partner/<id>`."""
    if fields.get("workspace_id") is not None:
        return f"ws/{fields['workspace_id']}"
    if fields.get("partner_id") is not None:
        return f"partner/{fields['partner_id']}"
    return None


def encrypt_secrets(config: dict[str, Any], keys: dict[str, bytes], scope: str) -> dict[str, Any]:
    """Return a copy of a configuration with plaintext secret fields encrypted for `scope`."""
    config = orjson.loads(orjson.dumps(config))
    dest = config.get("destination") if isinstance(config, dict) else None
    if not isinstance(dest, dict):
        return config  # malformed: the validation words the reason
    for name in SECRET_FIELDS:
        if isinstance(dest.get(name), str):
            dest[name] = {"enc": secrets.encrypt(dest[name], keys, scope, f"destination.{name}")}
    headers = dest.get("secret_headers")
    for name, value in list(headers.items() if isinstance(headers, dict) else ()):
        if isinstance(value, str):
            headers[name] = {"enc": secrets.encrypt(value, keys, scope, f"destination.secret_headers.{name}")}
    for parent, names in NESTED_SECRET_FIELDS.items():
        inner = dest.get(parent)
        for name in names if isinstance(inner, dict) else ():
            if isinstance(inner.get(name), str):
                inner[name] = {"enc": secrets.encrypt(inner[name], keys, scope, f"destination.{parent}.{name}")}
    if dest.get("type", "http") == "http" and dest.get("provider") == "sumo" and isinstance(dest.get("url"), str):
        # A Sumo Logic source URL is its credential: the token is the last part of its path.
        dest["url"] = {"enc": secrets.encrypt(dest["url"], keys, scope, "destination.url")}
    return config


def local_check(command: dict[str, Any], policy: Policy) -> str | None:
    """None when the worker would accept the command's content, else its reason (the
    signature and the rules that depend on the settings state are the worker's alone)."""
    _cid, cmd, reason = authenticate(orjson.dumps(command), policy, verify_signature=False)
    if cmd is None:
        return reason
    return check_standalone(cmd, policy)


def build_command(kind: str, fields: dict[str, Any], actor: str, key_id: str, key: bytes,
                  command_id: str | None = None, issued_at: datetime | None = None) -> dict[str, Any]:
    body = {"type": kind, "command_id": command_id or f"cmd-{uuid.uuid4().hex}",
            "issued_at": (issued_at or datetime.now(timezone.utc)).isoformat(), "actor": actor, **fields}
    return signing.signed(body, key_id, key)


class AdminClient:
    def __init__(self, bootstrap_servers: str, prefix: str = "", signing_keys: dict[str, bytes] | None = None,
                 encryption_keys: dict[str, bytes] | None = None, actor: str = "admin",
                 security: KafkaSecurity | None = None, allow_private_destinations: bool | None = None,
                 command_max_age_s: float = 300.0):
        from streamer.config import Config

        self.bootstrap = bootstrap_servers
        self.security = security  # None: this process's STREAMER_SECURITY_* settings
        self.prefix = prefix
        self.signing_keys = signing_keys or {}
        self.encryption_keys = encryption_keys or {}
        self.actor = actor
        if allow_private_destinations is None:
            allow_private_destinations = Config.from_env().allow_private_destinations
        self.policy = Policy(self.signing_keys, self.encryption_keys, allow_private_destinations, command_max_age_s)
        self._producer: AIOKafkaProducer | None = None

    async def __aenter__(self) -> "AdminClient":
        self._producer = IdempotentProducer(bootstrap_servers=self.bootstrap,
                                            **client_kwargs(self.security))
        try:
            await self._producer.start()
        except BaseException:
            await self._producer.stop()
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        await self._producer.stop()

    def command(self, kind: str, **fields: Any) -> dict[str, Any]:
        """A signed command, not checked (tests use this to send commands the worker must refuse)."""
        if "config" in fields:
            fields["config"] = encrypt_secrets(fields["config"], self.encryption_keys, scope_for(fields) or "")
        key_id, key = next(iter(self.signing_keys.items()))
        return build_command(kind, fields, self.actor, key_id, key)

    def checked(self, kind: str, **fields: Any) -> dict[str, Any]:
        """A signed command that passed the worker's content checks; raises CommandRefused."""
        command = self.command(kind, **fields)
        reason = local_check(command, self.policy)
        if reason:
            raise CommandRefused(reason)
        return command

    async def send_raw(self, value: bytes) -> None:
        await self._producer.send_and_wait(self.prefix + T.SETTINGS_COMMANDS, value)

    async def send(self, command: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        """Send a command and wait for its result."""
        start = await self._results_end()
        await self.send_raw(orjson.dumps(command))
        return await self.wait_result(command["command_id"], start, timeout)

    async def run(self, kind: str, timeout: float = 30.0, **fields: Any) -> dict[str, Any]:
        """Build, check locally (CommandRefused: nothing was sent), send, and wait for the result."""
        return await self.send(self.checked(kind, **fields), timeout)

    async def _results_end(self) -> int:
        c = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, **client_kwargs(self.security))
        try:
            await c.start()
            tp = TopicPartition(self.prefix + T.SETTINGS_RESULTS, 0)
            return (await c.end_offsets([tp]))[tp]
        finally:
            await c.stop()

    async def wait_result(self, command_id: str, from_offset: int = 0, timeout: float = 30.0) -> dict[str, Any]:
        tp = TopicPartition(self.prefix + T.SETTINGS_RESULTS, 0)
        c = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                             **client_kwargs(self.security))
        try:
            await c.start()
            c.assign([tp])
            c.seek(tp, from_offset)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                for msgs in (await c.getmany(tp, timeout_ms=200)).values():
                    for m in msgs:
                        if m.key == command_id.encode():
                            return orjson.loads(m.value)
            raise TimeoutError(f"no result for command {command_id} within {timeout:.0f}s; is a worker running?")
        finally:
            await c.stop()


async def read_settings(bootstrap_servers: str, prefix: str = "",
                        security: KafkaSecurity | None = None) -> SettingsState:
    """Read the whole settings table once (for `streamer settings get/list`)."""
    tp = TopicPartition(prefix + T.SETTINGS_TABLE, 0)
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False, **client_kwargs(security))
    state = SettingsState()
    try:
        await c.start()
        c.assign([tp])
        end = (await c.end_offsets([tp]))[tp]
        c.seek(tp, (await c.beginning_offsets([tp]))[tp])
        while end and await c.position(tp) < end:
            for msgs in (await c.getmany(tp, timeout_ms=500)).values():
                for m in msgs:
                    state.apply(m.key, m.value, m.offset)
    finally:
        await c.stop()
    return state


def run(coro):
    return asyncio.run(coro)
