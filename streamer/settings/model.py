"""Settings: workspace registrations, configurations, destinations, and the admin commands.

Secret fields (`SecretStr` below) travel and rest only as `Encrypted` envelopes; the admin
CLI encrypts them before a command is produced, so no plaintext secret ever reaches a topic.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from streamer.keys import unsafe_prefix
from streamer.settings import limits as L

WorkspaceId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
PartnerId = WorkspaceId
Text = Annotated[str, Field(max_length=L.MAX_FIELD_CHARS)]
# RFC 9110 token: what a header name may be; anything else could split or smuggle a header.
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_CTL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # control characters except tab
SECRET_HEADER_NAMES = {"authorization", "dd-api-key", "x-api-key", "proxy-authorization", "cookie"}


def _url_size(v: str | None) -> str | None:
    if v is not None and len(v.encode()) > L.MAX_URL_BYTES:
        raise ValueError(L.too_big("url", len(v.encode()), L.MAX_URL_BYTES))
    return v


def _header_name(name: str) -> None:
    if len(name.encode()) > L.MAX_HEADER_NAME_BYTES:
        raise ValueError(L.too_big(f"header name {name[:40]!r}...", len(name.encode()), L.MAX_HEADER_NAME_BYTES))
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"header name {name[:64]!r} is not a valid HTTP header name")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Encrypted(Strict):
    """A secret encrypted with the deployment's key (AES-256-GCM), see streamer/settings/secrets.py."""

    enc: Annotated[str, Field(max_length=L.MAX_SECRET_ENVELOPE_CHARS, pattern=r"^v[12]:[A-Za-z0-9_.-]+:[A-Za-z0-9_=-]+$")]


class S3Destination(Strict):
    type: Literal["s3"] = "s3"
    bucket: Annotated[str, Field(min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$")]
    region: Annotated[str, Field(max_length=64, pattern=r"^[a-z0-9-]+$")] = "us-east-1"
    prefix: Text = Field(default="", description="Folders before every key: '/'-separated segments of "
                                                  "A-Z a-z 0-9 _ . - (no '.' or '..' segment).")
    endpoint_url: str | None = Field(default=None, description="For S3-compatible stores.")
    access_key_id: Annotated[str, Field(max_length=256)] | None = Field(
        default=None, description="None: the deployment's default AWS credentials.")
    secret_access_key: Encrypted | None = None
    # Cross-account buckets: a role assumed with the credentials above (or the default ones).
    role_arn: str | None = Field(default=None, max_length=2048,
                                 pattern=r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/[A-Za-z0-9_+=,.@/-]+$")
    external_id: str | None = Field(default=None, min_length=2, max_length=1224, pattern=r"^[A-Za-z0-9_+=,.@:/-]+$")
    role_session_name: str = Field(default="streamer", min_length=2, max_length=64, pattern=r"^[A-Za-z0-9_+=,.@-]+$")
    server_side_encryption: Literal["AES256", "aws:kms"] | None = Field(
        default=None, description="SSE-S3 (AES256) or SSE-KMS (aws:kms, with kms_key_id or the bucket's AWS managed key).")
    kms_key_id: str | None = Field(default=None, min_length=1, max_length=2048)
    storage_class: Literal["STANDARD", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING", "GLACIER_IR",
                           "GLACIER", "DEEP_ARCHIVE", "REDUCED_REDUNDANCY"] | None = None
    acl: Literal["bucket-owner-full-control"] | None = Field(default=None, description="For buckets of another account.")

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        reason = unsafe_prefix(v)
        if reason:
            raise ValueError(reason)
        return v

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint_size(cls, v: str | None) -> str | None:
        return _url_size(v)


Provider = Literal["generic", "sumo", "datadog", "splunk"]
Pem = Annotated[str, Field(min_length=1, max_length=L.MAX_PEM_CHARS)]


def _no_ctl(v: str | None) -> str | None:
    if v is not None and _CTL.search(v):
        raise ValueError("contains a control character (it is sent in a header or a form)")
    return v


class NoAuth(Strict):
    type: Literal["none"] = "none"


class BasicAuth(Strict):
    """`Authorization: Basic base64(username:password)` (RFC 7617)."""

    type: Literal["basic"]
    username: Annotated[str, Field(min_length=1, max_length=1024, pattern=r"^[^:]*$",
                                   description="No ':' (RFC 7617: the first colon ends the user id).")]
    password: Encrypted

    @field_validator("username")
    @classmethod
    def _username(cls, v: str) -> str:
        return _no_ctl(v)


class ApiKeyAuth(Strict):
    """An API key sent in a header of the destination's choosing."""

    type: Literal["api_key"]
    header: Annotated[str, Field(min_length=1, max_length=L.MAX_HEADER_NAME_BYTES)] = "X-API-Key"
    value: Encrypted

    @field_validator("header")
    @classmethod
    def _header(cls, v: str) -> str:
        _header_name(v)
        return v


class BearerAuth(Strict):
    """`Authorization: Bearer <token>`, a static token."""

    type: Literal["bearer"]
    token: Encrypted


class OAuth2ClientCredentials(Strict):
    """`Authorization: Bearer <token>` with a token fetched by the client-credentials grant
    (RFC 6749 4.4), cached, renewed before it expires and once when the destination answers 401."""

    type: Literal["oauth2_client_credentials"]
    token_url: Annotated[str, Field(min_length=8, max_length=L.MAX_URL_BYTES)]
    client_id: Annotated[str, Field(min_length=1, max_length=1024)]
    client_secret: Encrypted
    scope: Annotated[str, Field(max_length=L.MAX_FIELD_CHARS)] | None = None
    client_auth: Literal["basic", "body"] = Field(
        default="basic", description="How the client authenticates to the token endpoint: HTTP Basic "
                                     "(RFC 6749 2.3.1, which every server must support) or client_id and "
                                     "client_secret in the form body (e.g. Microsoft Entra).")

    @field_validator("client_id", "scope")
    @classmethod
    def _text(cls, v: str | None) -> str | None:
        return _no_ctl(v)


Auth = Annotated[Union[NoAuth, BasicAuth, ApiKeyAuth, BearerAuth, OAuth2ClientCredentials],
                 Field(discriminator="type")]


class Tls(Strict):
    """TLS towards one destination: the CAs its certificate must chain to (instead of the
    system's), and a client certificate for mutual TLS."""

    ca_bundle: Pem | None = Field(default=None, description="PEM certificates; replaces the system CAs for "
                                                            "this destination.")
    client_cert: Pem | None = Field(default=None, description="PEM client certificate (and its chain).")
    client_key: Encrypted | None = Field(default=None, description="PEM private key of client_cert, unencrypted "
                                                                   "PEM before the CLI encrypts it.")

    @model_validator(mode="after")
    def _pair(self) -> "Tls":
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("client_cert and client_key go together")
        return self


class HttpDestination(Strict):
    type: Literal["http"] = "http"
    provider: Provider = "generic"
    url: Annotated[str, Field(min_length=8)] | Encrypted = Field(
        description="Sumo Logic: the source URL, which carries its token, encrypted by the CLI.")
    auth: Auth | None = Field(default=None, description="How requests authenticate; none when absent.")
    tls: Tls | None = None
    proxy_url: Annotated[str, Field(min_length=8, max_length=L.MAX_URL_BYTES)] | None = Field(
        default=None, description="http(s)://host:port of a forward proxy for this destination; default: the "
                                  "deployment's HTTPS_PROXY / NO_PROXY.")
    headers: dict[str, str] = Field(default_factory=dict, description="Plain, non-secret headers.")
    secret_headers: dict[str, Encrypted] = Field(default_factory=dict,
                                                 description="Headers whose values are secrets (e.g. Authorization).")
    api_key: Encrypted | None = Field(default=None, description="Datadog DD-API-KEY.")
    token: Encrypted | None = Field(default=None, description="Splunk HEC token.")
    indexer_acknowledgements: bool = Field(default=False, description=(
        "Splunk HEC: a delivery counts only once Splunk acknowledges it was indexed (the token must have "
        "indexer acknowledgement on: Splunk Enterprise)."))
    gzip: bool = False
    # Provider-specific fields; each provider reads only its own.
    ddsource: Text = "workato"
    service: Text = "audit-log"
    ddtags: Text = ""
    hostname: Text = ""
    index: Text | None = None
    source: Text | None = None
    sourcetype: Text = "_json"
    host: Text | None = None
    sumo_category: Text | None = None
    sumo_name: Text | None = None
    sumo_host: Text | None = None
    sumo_fields: Text | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | Encrypted) -> str | Encrypted:
        return _url_size(v) if isinstance(v, str) else v

    @field_validator("headers")
    @classmethod
    def _plain_headers(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            _header_name(name)
            if name.lower() in SECRET_HEADER_NAMES:
                raise ValueError(f"header '{name}' carries a secret: put it in secret_headers, encrypted")
            if len(value.encode()) > L.MAX_HEADER_VALUE_BYTES:
                raise ValueError(L.too_big(f"header '{name}' value", len(value.encode()), L.MAX_HEADER_VALUE_BYTES))
            if _CTL.search(value):
                raise ValueError(f"header '{name}' value contains a control character")
        return v

    @field_validator("secret_headers")
    @classmethod
    def _secret_header_names(cls, v: dict[str, Encrypted]) -> dict[str, Encrypted]:
        for name in v:
            _header_name(name)
        return v

    @field_validator("sumo_category", "sumo_name", "sumo_host", "sumo_fields")
    @classmethod
    def _sumo_header_values(cls, v: str | None) -> str | None:
        # Sent as X-Sumo-* headers: a line break would add a header of the tenant's choosing.
        if v is not None and _CTL.search(v):
            raise ValueError("contains a control character (it is sent as a header)")
        return v

    @model_validator(mode="after")
    def _acks_are_splunks(self) -> "HttpDestination":
        if self.indexer_acknowledgements and self.provider != "splunk":
            raise ValueError("indexer_acknowledgements is a Splunk HEC option (provider: splunk)")
        return self

    @model_validator(mode="after")
    def _header_count(self) -> "HttpDestination":
        count = len(self.headers) + len(self.secret_headers)
        if count > L.MAX_HEADERS:
            raise ValueError(L.too_big("headers and secret_headers together", count, L.MAX_HEADERS, "headers"))
        return self

    @model_validator(mode="after")
    def _auth_header_is_its_own(self) -> "HttpDestination":
        # Only the new auth field is checked against the rest: a stricter rule on headers
        # alone would make stored configurations unreadable after an upgrade.
        name = auth_header_name(self.auth)
        if name is None:
            return self
        taken = {n.lower(): f"{where} '{n}'" for where, names in (("headers", self.headers),
                                                                  ("secret_headers", self.secret_headers))
                 for n in names}
        if self.provider == "splunk" and self.token is not None:
            taken["authorization"] = "the splunk token"
        if self.provider == "datadog" and self.api_key is not None:
            taken["dd-api-key"] = "the datadog api_key"
        if name.lower() in taken:
            raise ValueError(f"auth sets the {name} header, which {taken[name.lower()]} sets too")
        return self


def auth_header_name(auth: "Auth | None") -> str | None:
    """The request header an auth type sets (None: it sets none)."""
    if auth is None or isinstance(auth, NoAuth):
        return None
    return auth.header if isinstance(auth, ApiKeyAuth) else "Authorization"


class AzureBlobDestination(Strict):
    """Azure Blob Storage: one blob per event at the S3 key layout (spec 4.1).

    `account_url` is always given, even with a connection string: where the events go is
    then visible in `settings get` and checked by the SSRF guard; from a connection string
    only its credential (AccountKey or SharedAccessSignature) is used. No credential at all:
    the deployment's default Azure credentials (environment, workload or managed identity)."""

    type: Literal["azure_blob"] = "azure_blob"
    account_url: Annotated[str, Field(min_length=8, max_length=2048,
                                      description="https://<account>.blob.core.windows.net")]
    container: Annotated[str, Field(min_length=3, max_length=63, pattern=r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")]
    prefix: str = ""
    account_name: str | None = Field(default=None, description="With account_key; default: from account_url.")
    account_key: Encrypted | None = None
    sas_token: Encrypted | None = None
    connection_string: Encrypted | None = None


class GcsDestination(Strict):
    """Google Cloud Storage: one object per event at the S3 key layout (spec 4.1).

    `service_account_key` is the JSON key file's content, encrypted; None: the deployment's
    default Google credentials (GOOGLE_APPLICATION_CREDENTIALS, the metadata server)."""

    type: Literal["gcs"] = "gcs"
    # Google's bucket naming rules: the name goes into the JSON API's request path as it is,
    # so nothing else (a "/", "..", "?") may reach it.
    bucket: Annotated[str, Field(min_length=3, max_length=222, pattern=r"^[a-z0-9][a-z0-9._-]*[a-z0-9]$")]
    prefix: str = ""
    service_account_key: Encrypted | None = None
    endpoint_url: str | None = Field(default=None, description="For emulators; default https://storage.googleapis.com.")


class AzureMonitorDestination(Strict):
    """Azure Monitor Logs through the Logs Ingestion API: records posted to a data collection
    rule's stream, authenticated by an Entra app registration (client credentials)."""

    type: Literal["azure_monitor"] = "azure_monitor"
    endpoint: Annotated[str, Field(min_length=8, max_length=2048,
                                   description="Data collection endpoint (or the rule's logs ingestion endpoint).")]
    rule_id: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$",
                                  description="The data collection rule's immutable id (dcr-...).")]
    stream: Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9_.-]+$",
                                 description="The rule's stream, e.g. Custom-WorkatoAudit_CL.")]
    tenant_id: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")]
    client_id: Annotated[str, Field(min_length=1, max_length=128)]
    client_secret: Encrypted
    authority: str = Field(default="https://login.microsoftonline.com",
                           description="Microsoft Entra authority (another for sovereign clouds).")
    gzip: bool = False


Destination = Annotated[Union[S3Destination, HttpDestination, AzureBlobDestination, GcsDestination,
                                   AzureMonitorDestination], Field(discriminator="type")]


class Configuration(Strict):
    """What to stream and where: one per partner (partner-wide) or per workspace."""

    enabled: bool = True
    jobs: Literal["off", "status", "details"] = "status"
    user_activity: bool = True
    template: str | None = Field(default=None, description="Custom message template (spec section 3), "
                                                           "at most 64 KiB.")
    destination: Destination

    @field_validator("template")
    @classmethod
    def _template_size(cls, v: str | None) -> str | None:
        if v is not None and len(v.encode()) > L.MAX_TEMPLATE_BYTES:
            raise ValueError(L.too_big("template", len(v.encode()), L.MAX_TEMPLATE_BYTES))
        return v


class Registration(Strict):
    workspace_id: WorkspaceId
    partner_id: PartnerId
    role: Literal["customer", "admin"]
    external_id: Text | None = None


class _Command(Strict):
    command_id: Annotated[str, Field(min_length=8, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")]
    issued_at: datetime
    actor: Annotated[str, Field(min_length=1, max_length=200)]
    key_id: Annotated[str, Field(min_length=1, max_length=64)]
    signature: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class RegisterWorkspace(_Command):
    type: Literal["register_workspace"]
    workspace_id: WorkspaceId
    partner_id: PartnerId
    role: Literal["customer", "admin"]
    external_id: Text | None = None


class UnregisterWorkspace(_Command):
    type: Literal["unregister_workspace"]
    workspace_id: WorkspaceId


class PutPartnerConfig(_Command):
    type: Literal["put_partner_config"]
    partner_id: PartnerId
    config: Configuration


class DeletePartnerConfig(_Command):
    type: Literal["delete_partner_config"]
    partner_id: PartnerId


class PutWorkspaceConfig(_Command):
    type: Literal["put_workspace_config"]
    workspace_id: WorkspaceId
    config: Configuration


class DeleteWorkspaceConfig(_Command):
    type: Literal["delete_workspace_config"]
    workspace_id: WorkspaceId


class ReplayDeadLetters(_Command):
    """Send chosen dead letters back into delivery, to the workspace's current destination."""

    type: Literal["replay_dead_letters"]
    workspace_id: WorkspaceId | None = None
    destination_id: Annotated[str, Field(max_length=200)] | None = None
    event_ids: Annotated[list[Annotated[str, Field(max_length=200)]], Field(max_length=L.MAX_EVENT_IDS)] | None = None
    since: datetime | None = Field(default=None, description="Dead-lettered at or after.")
    until: datetime | None = Field(default=None, description="Dead-lettered before.")
    max_records: int = Field(default=10_000, ge=1, le=1_000_000)


class TestDestination(_Command):
    """Test a workspace's effective destination, a partner's partner-wide one, or `config`
    (to try it before saving it), through the real sink path. Accepted when the destination
    took the test (or passed the probe); rejected with the destination's answer if not."""

    __test__ = False  # not a pytest test class

    type: Literal["test_destination"]
    workspace_id: WorkspaceId | None = None
    partner_id: PartnerId | None = None
    config: Configuration | None = None
    check: Literal["write", "probe"] = Field(
        default="write", description="write: send a synthetic test event (S3, Azure Blob, GCS: a real object under "
                                     "the prefix; REST: a real POST). probe: ask without writing where the provider "
                                     "can be asked (S3 HeadBucket, Azure Blob container properties, GCS bucket, "
                                     "Datadog key validation, Splunk HEC health); Sumo Logic, generic HTTP and "
                                     "Azure Monitor have no such endpoint, so their probe writes the test event.")


Command = Annotated[
    Union[RegisterWorkspace, UnregisterWorkspace, PutPartnerConfig, DeletePartnerConfig,
          PutWorkspaceConfig, DeleteWorkspaceConfig, ReplayDeadLetters, TestDestination],
    Field(discriminator="type"),
]


class CommandResult(Strict):
    command_id: str
    status: Literal["accepted", "accepted_with_warning", "rejected"]
    reason: str | None = None
    warning: str | None = None
    settings_version: int | None = Field(default=None, description="Settings table offset after the change.")
    replayed: int | None = Field(default=None, description="Dead letters sent back to delivery (replay only).")
    skipped: int | None = Field(default=None, description="Matching dead letters whose workspace has no "
                                                          "destination of the same type now (replay only).")
    tested_destination: str | None = Field(default=None, description="The destination a test command tried "
                                                                      "(test only).")
    check: str | None = Field(default=None, description="What the test did, e.g. 's3 PutObject', 'datadog "
                                                        "validate', 'sumo POST (sumo has no probe endpoint: the "
                                                        "test event was written)' (test only).")
    provider_status: int | None = Field(default=None, description="The destination's HTTP status, when it answered "
                                                                  "(test only; a write that succeeded may not "
                                                                  "report one).")
    processed_at: datetime
    offset: int | None = Field(default=None, description="Offset of the command's record on the commands topic: "
                                                         "every record gets exactly one result.")
