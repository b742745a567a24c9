"""Control plane and input hardening (issue 17), the pure parts: each test names its point.

The same behaviours are shown through the real broker in tests/test_hardening_e2e.py and
tests/test_fuzz_e2e.py.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone

import orjson
import pytest

from streamer.admin import build_command, encrypt_secrets, local_check
from streamer.events.parse import Rejection, parse_event
from streamer.routing import Routed, message_json, route
from streamer.settings import limits, secrets, signing
from streamer.settings.rules import Policy, decide
from streamer.settings.state import SettingsState
from streamer.settings.urls import address_problem, check_url, literal_problem, urls_in
from tests.support import job_event

SIGN = b"s" * 32
ENC = {"e1": b"e" * 32}
POLICY = Policy({"k1": SIGN}, ENC, allow_private_destinations=False, command_max_age_s=300)
NOW = datetime(2026, 3, 14, 12, 0, tzinfo=timezone.utc)


def signed(kind: str, issued_at: datetime = NOW, **fields) -> dict:
    return build_command(kind, fields, "admin", "k1", SIGN, issued_at=issued_at)


def registered(*workspaces: str) -> SettingsState:
    state = SettingsState()
    for i, ws in enumerate(workspaces):
        state.apply(f"ws/{ws}".encode(), orjson.dumps({"registration": {
            "workspace_id": ws, "partner_id": "P", "role": "customer", "external_id": None}, "config": None}), i)
    return state


def public_config(**dest) -> dict:
    return {"jobs": "status", "destination": {"type": "http", "provider": "generic", "url": "https://93.184.215.14/x",
                                              **dest}}


# -- 1. malformed commands never raise ------------------------------------------------------------

@pytest.mark.parametrize("body", [
    {"type": "put_workspace_config", "command_id": "cmd-12345678", "config": "x"},
    {"type": "put_workspace_config", "command_id": "cmd-12345678", "config": ["x"]},
    {"type": "put_workspace_config", "command_id": "cmd-12345678", "config": {"destination": "x"}},
    {"command_id": ["x"], "config": {"destination": {"url": 5}}},
])
def test_urls_in_never_raises_on_a_malformed_command(body):
    assert urls_in(body) == []


def test_a_signed_command_with_a_malformed_config_is_rejected_with_the_field():
    raw = orjson.dumps(signed("put_workspace_config", workspace_id="7", config=["x"]))
    d = decide(registered("7"), raw, 0, POLICY, NOW, {})
    assert d.status == "rejected" and "field 'config'" in d.reason


def test_an_unsigned_command_is_rejected_for_its_signature_before_anything_else():
    body = {"type": "put_workspace_config", "command_id": "cmd-12345678", "config": "x"}
    d = decide(registered("7"), orjson.dumps(body), 0, POLICY, NOW, {})
    assert d.status == "rejected" and "not signed" in d.reason and d.command_id == "cmd-12345678"


# -- 2. SSRF guard: globally routable addresses only ----------------------------------------------

@pytest.mark.parametrize("ip,kind", [
    ("100.100.100.200", "shared address space"), ("100.64.0.1", "shared address space"),
    ("192.0.0.1", "private"), ("198.18.0.1", "private"), ("224.0.0.1", "multicast"),
    ("::ffff:100.100.100.200", "shared address space"), ("::ffff:127.0.0.1", "loopback"),
    ("2002:7f00:1::", "loopback"), ("2002:a00:1::", "private"), ("fec0::1", "site-local"),
    ("255.255.255.255", "private"), ("0.0.0.0", "unspecified"), ("fe80::1%eth0", "link-local"),
])
def test_addresses_that_are_not_globally_routable_are_refused(ip, kind):
    assert kind in address_problem(ip)


def test_public_addresses_pass_and_the_metadata_address_is_refused_as_a_url():
    assert address_problem("8.8.8.8") is None and address_problem("2606:4700::1") is None
    assert "RFC 6598" in check_url("https://100.100.100.200/latest", False)
    assert "RFC 6598" in check_url("https://meta.example/x", False, {"meta.example": ["100.100.100.200"]})
    assert "loopback" in literal_problem("https://127.0.0.1:9000/")
    assert literal_problem("https://s3.example/") is None and literal_problem("https://8.8.8.8/") is None


def test_s3_endpoint_urls_are_checked_like_rest_urls():
    cfg = {"destination": {"type": "s3", "bucket": "bkt", "endpoint_url": "https://100.100.100.200"}}
    d = decide(registered("7"), orjson.dumps(signed("put_workspace_config", workspace_id="7", config=cfg)), 0,
               POLICY, NOW, {})
    assert d.status == "rejected" and "s3 endpoint" in d.reason and "RFC 6598" in d.reason


# -- 3. size caps ---------------------------------------------------------------------------------

@pytest.mark.parametrize("config,limit", [
    ({**public_config(), "template": '{"m": {{log_message}}, "pad": "' + "x" * 70_000 + '"}'},
     f"limit of {limits.MAX_TEMPLATE_BYTES} bytes"),
    (public_config(headers={f"X-H{i}": "v" for i in range(51)}), f"limit of {limits.MAX_HEADERS} headers"),
    (public_config(headers={"X-Big": "v" * 9000}), f"limit of {limits.MAX_HEADER_VALUE_BYTES} bytes"),
    (public_config(url="https://93.184.215.14/" + "p" * 3000), f"limit of {limits.MAX_URL_BYTES} bytes"),
    (public_config(headers={"X-Split": "a\r\nInjected: 1"}), "control character"),
    (public_config(headers={"Bad Name": "v"}), "not a valid HTTP header name"),
    (public_config(headers={"X-A\n": "v"}), "not a valid HTTP header name"),
    (public_config(provider="sumo", sumo_category="a\r\nX-Injected: 1"), "sent as a header"),
])
def test_configuration_size_caps_name_the_limit(config, limit):
    raw = orjson.dumps(signed("put_workspace_config", workspace_id="7", config=config))
    d = decide(registered("7"), raw, 0, POLICY, NOW, {})
    assert d.status == "rejected" and limit in d.reason, d.reason


def test_a_command_over_one_mebibyte_is_refused_unparsed():
    raw = orjson.dumps(signed("register_workspace", workspace_id="7", partner_id="P", role="customer",
                              external_id="x" * 100))
    raw = raw[:-1] + b',"pad":"' + b"x" * limits.MAX_COMMAND_BYTES + b'"}'
    d = decide(registered(), raw, 0, POLICY, NOW, {})
    assert d.status == "rejected" and f"limit of {limits.MAX_COMMAND_BYTES} bytes" in d.reason


def test_a_secret_over_the_header_value_cap_is_refused():
    cfg = encrypt_secrets(public_config(secret_headers={"Authorization": "x" * 9000}), ENC, "ws/7")
    d = decide(registered("7"), orjson.dumps(signed("put_workspace_config", workspace_id="7", config=cfg)), 0,
               POLICY, NOW, {})
    assert d.status == "rejected" and "secret destination.secret_headers.Authorization" in d.reason


# -- 4. secrets echoed by a destination -----------------------------------------------------------

def test_redact_text_removes_secrets_in_every_form_a_server_may_echo():
    key = 'k/ey"with+odd'
    text = f'API key {key} is not valid; json "{json.dumps(key)[1:-1]}"; url k%2Fey%22with%2Bodd'
    out = secrets.redact_text(text, [key])
    assert "k/ey" not in out and "k%2Fey" not in out and out.count("***") == 3


# -- 5. the CLI runs the worker's checks before producing ----------------------------------------

@pytest.mark.parametrize("config,reason", [
    (public_config(headers={"Authorization": "Bearer X"}), "secret_headers"),
    (public_config(url="https://user:pw@93.184.215.14/x"), "credentials"),
    (public_config(url="https://10.0.0.1/x"), "private"),
    ({**public_config(), "template": "x" * 70_000}, "limit of 65536 bytes"),
    ({"destination": "x"}, "field 'config.destination'"),
])
def test_local_check_refuses_what_the_worker_would(config, reason):
    body = signed("put_workspace_config", workspace_id="7", config=encrypt_secrets(config, ENC, "ws/7"))
    assert reason in local_check(body, POLICY)
    assert decide(registered("7"), orjson.dumps(body), 0, POLICY, NOW, {}).status == "rejected"


def test_local_check_passes_a_good_command():
    body = signed("put_workspace_config", workspace_id="7",
                  config=encrypt_secrets(public_config(secret_headers={"Authorization": "Bearer X"}), ENC, "ws/7"))
    assert local_check(body, POLICY) is None


# -- 6. exact pass-through of big integers ---------------------------------------------------------

def test_integers_beyond_64_bits_pass_through_exactly():
    body = orjson.dumps(job_event(7, "j-1"))[:-1] + (b',"big":1208925819614629174706176,"n":99999999999999999999,'
                                                     b'"neg":-9223372036854775809,"f":1.5,"s":"\\u00e9\\n"}')
    event = parse_event("job_summary", body)
    data = message_json(event, 10**6)
    assert b'"big":1208925819614629174706176' in data and b'"n":99999999999999999999' in data
    assert b'"neg":-9223372036854775809' in data
    assert json.loads(data) == json.loads(body) and b"\n" not in data


def test_normal_events_keep_the_fast_parser_and_big_ids_get_a_clear_reason():
    assert parse_event("job_summary", orjson.dumps(job_event(7, "j-1", nano=1773505802123456789))).exact is False
    in_string = job_event(7, "j-1", trace_id="00-0000000000000000000000000000002a-000000000000002a-01")
    assert parse_event("job_summary", orjson.dumps(in_string)).exact is False
    pretty = orjson.dumps({**job_event(7, "j-1"), "big": 0}, option=orjson.OPT_INDENT_2).replace(
        b'"big": 0', b'"big": [\n    1208925819614629174706176]')
    assert json.loads(message_json(parse_event("job_summary", pretty), 10**6))["big"] == [1208925819614629174706176]
    big = orjson.dumps(job_event(7, "j-1"))[:-1] + b',"id":1208925819614629174706176}'
    r = parse_event("job_summary", big)
    assert isinstance(r, Rejection) and "outside the 64-bit range" in r.reason and "'id'" in r.reason


# -- 7. object keys --------------------------------------------------------------------------------

def _s3_state(prefix: str = "") -> SettingsState:
    state = registered("501")
    state.apply(b"ws/501", orjson.dumps({
        "registration": {"workspace_id": "501", "partner_id": "P", "role": "customer", "external_id": None},
        "config": {"jobs": "status", "destination": {"type": "s3", "bucket": "bkt", "prefix": prefix}}}), 5)
    return state


@pytest.mark.parametrize("job_id,why", [
    ("j-x/../../502", "object key"), ("..", "object key"), ("j a", "object key"), ("j\\x", "object key"),
    ("j-é", "object key"), ("j:x", "object key"), ("a..b", "object key"),
    ("j-a\x00b", "control character"), ("a" * 201, "at most 200 characters"),
])
def test_unsafe_ids_are_rejected_before_an_object_key_is_built(job_id, why):
    out = route(_s3_state(), "job_summary", orjson.dumps(job_event(501, job_id)), b"501", 10**6)
    assert isinstance(out, Rejection) and why in out.reason, out


def test_safe_ids_make_keys_and_unsafe_prefixes_are_refused_in_configuration():
    out = route(_s3_state("audit/x"), "job_summary", orjson.dumps(job_event(501, "j-Ab_1.2")), b"501", 10**6)
    assert isinstance(out, Routed) and dict(out.headers)["okey"].startswith(b"audit/x/501/jobs/")
    for prefix in ("../x", "a//b", "/abs", "a/./b", "a b"):
        cfg = {"destination": {"type": "s3", "bucket": "bkt", "prefix": prefix}}
        d = decide(registered("7"), orjson.dumps(signed("put_workspace_config", workspace_id="7", config=cfg)),
                   0, POLICY, NOW, {})
        assert d.status == "rejected" and "prefix segment" in d.reason, (prefix, d.reason)


# -- 8. secrets bound to their scope and field; freshness by record time --------------------------

def test_an_envelope_decrypts_only_for_its_scope_and_field():
    env = secrets.encrypt("dd-key", ENC, "ws/7", "destination.api_key")
    assert env.startswith("v2:e1:")
    assert secrets.decrypt(env, ENC, "ws/7", "destination.api_key") == "dd-key"
    for scope, field in (("ws/8", "destination.api_key"), ("partner/7", "destination.api_key"),
                         ("ws/7", "destination.token")):
        with pytest.raises(secrets.SecretError, match="another destination"):
            secrets.decrypt(env, ENC, scope, field)


def test_a_moved_envelope_is_refused_and_v1_only_decrypts_in_the_sinks():
    cfg7 = encrypt_secrets(public_config(provider="datadog", api_key="dd-key"), ENC, "ws/7")
    d = decide(registered("7", "8"), orjson.dumps(signed("put_workspace_config", workspace_id="8", config=cfg7)),
               0, POLICY, NOW, {})
    assert d.status == "rejected" and "ws/8" in d.reason
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = b"n" * 12
    v1 = "v1:e1:" + base64.urlsafe_b64encode(nonce + AESGCM(ENC["e1"]).encrypt(nonce, b"old", b"streamer-secret-v1")).decode()
    assert secrets.decrypt(v1, ENC, "ws/7", "destination.api_key") == "old"
    cfg = public_config(provider="datadog", api_key={"enc": v1})
    d = decide(registered("7"), orjson.dumps(signed("put_workspace_config", workspace_id="7", config=cfg)), 0,
               POLICY, NOW, {})
    assert d.status == "rejected" and "v1 envelope" in d.reason


def test_freshness_is_judged_against_the_record_time():
    issued = NOW - timedelta(minutes=30)
    raw = orjson.dumps(signed("register_workspace", issued_at=issued, workspace_id="7", partner_id="P",
                              role="customer"))
    # Appended a minute after it was issued, processed half an hour later: still fresh.
    assert decide(registered(), raw, 0, POLICY, issued + timedelta(minutes=1), {}).status == "accepted"
    late = decide(registered(), raw, 0, POLICY, issued + timedelta(minutes=6), {})
    assert late.status == "rejected" and "record time" in late.reason


def test_signing_is_unchanged_by_the_binding():
    body = signed("register_workspace", workspace_id="7", partner_id="P", role="customer")
    assert signing.verify(body, {"k1": SIGN}) is None


def test_accepted_rows_are_marked_and_apply_as_the_validated_configuration():
    """The processor marks what it validated (row_format), so workers apply it without a
    second validation; the entry is the one an unmarked row would give."""
    from streamer.settings.state import row_format

    cfg = public_config(headers={"X-Team": "audit"})
    d = decide(registered("7"), orjson.dumps(signed("put_workspace_config", workspace_id="7", config=cfg)), 3,
               POLICY, NOW, {})
    assert d.status == "accepted" and d.row_value["format"] == row_format()
    marked, unmarked = registered(), registered()
    marked.apply(d.row_key, orjson.dumps(d.row_value), 1)
    unmarked.apply(d.row_key, orjson.dumps({k: v for k, v in d.row_value.items() if k != "format"}), 1)
    a, b = marked.workspaces["7"], unmarked.workspaces["7"]
    assert (a.route, a._config_json(), a._registration) == (b.route, b._config_json(), b._registration)
    assert a.config.destination.headers == {"X-Team": "audit"}
