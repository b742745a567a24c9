"""Azure Blob destinations without I/O: credentials, error classification, the checks a
configuration passes when a command is accepted, and the CLI's encryption of its secrets."""

from __future__ import annotations

import os

import pytest

from streamer.admin import encrypt_secrets
from streamer.settings.model import Configuration
from streamer.settings.rules import Policy, check_configuration
from streamer.settings.secrets import decrypt, encrypt
from streamer.sinks.azure_blob.request import (account_name_from_url, check_destination, classify, credential,
                                               parse_connection_string)

KEYS = {"k1": os.urandom(32)}
POLICY = Policy({}, KEYS, allow_private_destinations=False, command_max_age_s=300)
URL = "https://acct1.blob.core.windows.net"


SCOPE = "ws/1"  # secrets are bound to the settings scope and field they belong to


def env(text: str, field: str) -> dict:
    return {"enc": encrypt(text, KEYS, SCOPE, f"destination.{field}")}


def open_(envelope: str, field: str) -> str:
    return decrypt(envelope, KEYS, SCOPE, field)


def test_connection_string_values_keep_their_equals_signs():
    parts = parse_connection_string("DefaultEndpointsProtocol=https;AccountName=a1;AccountKey=abc==;EndpointSuffix=core.windows.net;")
    assert parts == {"DefaultEndpointsProtocol": "https", "AccountName": "a1", "AccountKey": "abc==",
                     "EndpointSuffix": "core.windows.net"}
    with pytest.raises(ValueError):
        parse_connection_string("no-equals-here")


@pytest.mark.parametrize("url, name", [(URL, "acct1"), ("https://acct2.blob.core.windows.net/", "acct2"),
                                       ("http://127.0.0.1:10000/devstoreaccount1", "devstoreaccount1"),
                                       ("http://localhost:10000/dev2/", "dev2")])
def test_account_name_comes_from_the_host_or_an_emulators_path(url, name):
    assert account_name_from_url(url) == name


def test_each_credential_kind():
    c = credential({"account_url": URL, "account_key": env("K==", "account_key")}, open_)
    assert (c.kind, c.account_name, c.secret) == ("key", "acct1", "K==")
    c = credential({"account_url": URL, "account_name": "other", "account_key": env("K==", "account_key")}, open_)
    assert (c.kind, c.account_name, c.secret) == ("key", "other", "K==")
    c = credential({"account_url": URL, "sas_token": env("?sv=1&sig=x", "sas_token")}, open_)
    assert (c.kind, c.secret) == ("sas", "sv=1&sig=x")
    c = credential({"account_url": URL, "connection_string": env("AccountName=cs;AccountKey=Q==", "connection_string")}, open_)
    assert (c.kind, c.account_name, c.secret) == ("key", "cs", "Q==")
    c = credential({"account_url": URL, "connection_string": env("BlobEndpoint=x;SharedAccessSignature=sv=2&sig=y", "connection_string")},
                   open_)
    assert (c.kind, c.secret) == ("sas", "sv=2&sig=y")
    assert credential({"account_url": URL}, open_).kind == "default"


def test_one_credential_at_most_and_a_usable_connection_string():
    both = {"account_url": URL, "account_key": env("K", "account_key"), "sas_token": env("s", "sas_token")}
    assert "one credential" in check_destination(both, open_)
    assert "neither AccountKey" in check_destination({"account_url": URL, "connection_string": env("AccountName=a", "connection_string")},
                                                     open_)
    assert check_destination({"account_url": URL, "sas_token": env("s", "sas_token")}, open_) is None


@pytest.mark.parametrize("status, code, retryable", [
    (404, "ContainerNotFound", False), (403, "AuthenticationFailed", False), (403, "AuthorizationFailure", False),
    (400, "InvalidBlobOrBlock", False), (413, "RequestBodyTooLarge", False),
    (500, "InternalError", True), (503, "ServerBusy", True), (429, None, True), (408, None, True),
    (None, None, True)])
def test_errors_are_fatal_or_retryable(status, code, retryable):
    outcome = classify(status, code, "m", retry_after=3.0)
    assert not outcome.ok and outcome.retryable is retryable and outcome.retry_after == 3.0
    assert classify(201, None).ok


def config(**dest) -> Configuration:
    return Configuration.model_validate({"destination": {"type": "azure_blob", "account_url": URL,
                                                         "container": "audit-logs", **dest}})


def test_the_account_url_passes_the_ssrf_guard():
    reason, _ = check_configuration(config(account_url="http://127.0.0.1:10000/devstoreaccount1"), POLICY, SCOPE)
    assert reason and "account_url" in reason
    reason, _ = check_configuration(config(account_url="https://10.0.0.7/acct"), POLICY, SCOPE)
    assert reason and "private" in reason
    assert check_configuration(config(account_key=env("K", "account_key")), POLICY, SCOPE, resolved={"acct1.blob.core.windows.net":
                                                                                ["20.60.1.1"]}) == (None, None)
    reason, _ = check_configuration(config(account_key=env("K", "account_key"), sas_token=env("s", "sas_token")), POLICY, SCOPE,
                                    resolved={"acct1.blob.core.windows.net": ["20.60.1.1"]})
    assert "one credential" in reason


def test_the_cli_encrypts_every_azure_secret():
    plain = {"destination": {"type": "azure_blob", "account_url": URL, "container": "c",
                             "account_key": "K1", "sas_token": "S1", "connection_string": "C1"}}
    dest = encrypt_secrets(plain, KEYS, SCOPE)["destination"]
    assert [open_(dest[f]["enc"], f"destination.{f}") for f in ("account_key", "sas_token", "connection_string")] == ["K1", "S1", "C1"]


async def test_a_default_credential_that_fails_is_retried_with_its_reason():
    from azure.core.exceptions import ClientAuthenticationError

    from streamer.sinks.azure_blob.service import _call

    async def no_identity():
        raise ClientAuthenticationError(message="DefaultAzureCredential failed to retrieve a token\ndetails")

    outcome = await _call(no_identity(), 201)
    assert (outcome.ok, outcome.retryable) == (False, True)
    assert outcome.error == "azure_blob credential: DefaultAzureCredential failed to retrieve a token"
