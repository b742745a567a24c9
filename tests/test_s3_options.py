"""S3 options without I/O: the signed headers for encryption, storage class and ACL, the
AssumeRole arguments, and the checks a configuration passes on acceptance."""

from __future__ import annotations

import os

import pytest
from botocore.credentials import Credentials
from pydantic import ValidationError

from streamer.settings.model import Configuration
from streamer.settings.rules import Policy, check_configuration
from streamer.sinks.s3.request import assume_role_args, object_headers, signed_headers

ROLE = "arn:aws:iam::123456789012:role/streamer-writer"
POLICY = Policy({}, {"k1": os.urandom(32)}, allow_private_destinations=True, command_max_age_s=300)


def test_encryption_storage_class_and_acl_are_signed_headers():
    dest = {"server_side_encryption": "aws:kms", "kms_key_id": "arn:aws:kms:eu-west-1:123456789012:key/k1",
            "storage_class": "GLACIER_IR", "acl": "bucket-owner-full-control"}
    headers = object_headers(dest)
    assert headers == {"Content-Type": "application/json", "x-amz-server-side-encryption": "aws:kms",
                       "x-amz-server-side-encryption-aws-kms-key-id": dest["kms_key_id"],
                       "x-amz-storage-class": "GLACIER_IR", "x-amz-acl": "bucket-owner-full-control"}
    signed = signed_headers("https://b.s3.eu-west-1.amazonaws.com/k.json", b"{}",
                            Credentials("AKIDEXAMPLE", "secret").get_frozen_credentials(), "eu-west-1", headers)
    signed_names = signed["Authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
    assert {"x-amz-server-side-encryption", "x-amz-server-side-encryption-aws-kms-key-id", "x-amz-storage-class",
            "x-amz-acl", "content-type"} <= set(signed_names)
    assert object_headers({"server_side_encryption": "AES256"}) == {
        "Content-Type": "application/json", "x-amz-server-side-encryption": "AES256"}
    assert object_headers({}) == {"Content-Type": "application/json"}


def test_assume_role_arguments():
    assert assume_role_args({"role_arn": ROLE}) == {"RoleSessionName": "streamer"}
    assert assume_role_args({"role_arn": ROLE, "external_id": "x-1", "role_session_name": "s1"}) == {
        "RoleSessionName": "s1", "ExternalId": "x-1"}


def config(**dest) -> Configuration:
    return Configuration.model_validate({"destination": {"type": "s3", "bucket": "audit-logs", **dest}})


def test_option_combinations_are_checked():
    assert check_configuration(config(role_arn=ROLE, external_id="acme-1", server_side_encryption="aws:kms",
                                      kms_key_id="alias/audit"), POLICY, "ws/1") == (None, None)
    reason, _ = check_configuration(config(server_side_encryption="AES256", kms_key_id="alias/audit"), POLICY, "ws/1")
    assert "kms_key_id" in reason
    reason, _ = check_configuration(config(external_id="acme-1"), POLICY, "ws/1")
    assert "role_arn" in reason
    for bad in ({"role_arn": "arn:aws:iam::12:role/x"}, {"server_side_encryption": "aws:kms:dsse"},
                {"acl": "public-read"}, {"storage_class": "COLD"}):
        with pytest.raises(ValidationError):
            config(**bad)
