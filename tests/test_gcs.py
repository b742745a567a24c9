"""Google Cloud Storage destinations without I/O: the key's checks, the token URI rule,
error classification and the CLI's encryption of the key."""

from __future__ import annotations

import os

import orjson
import pytest

from streamer.admin import encrypt_secrets
from streamer.settings.model import Configuration
from streamer.settings.rules import Policy, check_configuration
from streamer.settings.secrets import decrypt, encrypt
from streamer.sinks.gcs.request import GOOGLE_TOKEN_URI, check_token_uri, classify, parse_key

KEYS = {"k1": os.urandom(32)}
KEY = {"type": "service_account", "client_email": "s@p.iam.gserviceaccount.com", "private_key": "PEM",
       "token_uri": GOOGLE_TOKEN_URI}


def policy(allow_private: bool = False) -> Policy:
    return Policy({}, KEYS, allow_private_destinations=allow_private, command_max_age_s=300)


def config(key: dict | str | None = None, **dest) -> Configuration:
    if key is not None:
        dest["service_account_key"] = {"enc": encrypt(key if isinstance(key, str) else orjson.dumps(key).decode(),
                                                      KEYS, "ws/1", "destination.service_account_key")}
    return Configuration.model_validate({"destination": {"type": "gcs", "bucket": "audit-logs", **dest}})


@pytest.mark.parametrize("text, reason", [("not json", "not JSON"), ('{"type": "authorized_user"}', "service-account"),
                                          ('{"type": "service_account", "client_email": "x"}', "private_key, token_uri")])
def test_a_key_that_cannot_work_is_named_without_its_content(text, reason):
    with pytest.raises(ValueError, match=reason):
        parse_key(text)
    assert parse_key(orjson.dumps(KEY).decode()) == KEY


def test_the_token_uri_must_be_googles_unless_private_destinations_are_allowed():
    assert check_token_uri(KEY, False) is None
    other = {**KEY, "token_uri": "https://169.254.169.254/token"}
    assert "must be" in check_token_uri(other, False)
    assert check_token_uri(other, True) is None
    reason, _ = check_configuration(config(other), policy(), "ws/1")
    assert reason and "token_uri" in reason


def test_configurations_are_checked_on_acceptance():
    assert check_configuration(config(KEY), policy(), "ws/1") == (None, None)
    assert check_configuration(config(), policy(), "ws/1") == (None, None)  # default credentials
    reason, _ = check_configuration(config("{}"), policy(), "ws/1")
    assert reason and "service_account_key" in reason
    reason, _ = check_configuration(config(KEY, endpoint_url="http://127.0.0.1:4443"), policy(), "ws/1")
    assert reason and "endpoint_url" in reason
    assert check_configuration(config(KEY, endpoint_url="http://127.0.0.1:4443"), policy(True), "ws/1") == (None, None)


@pytest.mark.parametrize("status, retryable", [(400, False), (401, False), (403, False), (404, False), (413, False),
                                               (408, True), (429, True), (500, True), (503, True), (None, True)])
def test_errors_are_fatal_or_retryable(status, retryable):
    outcome = classify(status, "m", 2.0)
    assert not outcome.ok and outcome.retryable is retryable and outcome.retry_after == 2.0
    assert classify(200).ok


def test_the_cli_encrypts_the_key():
    plain = orjson.dumps(KEY).decode()
    dest = encrypt_secrets({"destination": {"type": "gcs", "bucket": "b", "service_account_key": plain}},
                           KEYS, "ws/1")["destination"]
    assert decrypt(dest["service_account_key"]["enc"], KEYS, "ws/1", "destination.service_account_key") == plain


@pytest.mark.parametrize("bucket, ok", [("audit-logs", True), ("my_bucket.example.com", True), ("a/../b", False),
                                        ("bucket?alt=media", False), ("Bucket", False), ("-bucket", False)])
def test_bucket_names_follow_googles_rules(bucket, ok):
    from pydantic import ValidationError

    from streamer.settings.model import GcsDestination

    if ok:
        assert GcsDestination(bucket=bucket).bucket == bucket
    else:
        with pytest.raises(ValidationError):
            GcsDestination(bucket=bucket)
