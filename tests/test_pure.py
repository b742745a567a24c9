"""Unit tests of pure functions: templates and S3 keys."""

from __future__ import annotations

from datetime import datetime, timezone

import orjson
import pytest

from streamer.keys import activity_key, job_key, job_path
from streamer.templates import TemplateError, compile_template, try_compile

EVENT = orjson.dumps({"id": "j-1", "text": 'quote " and \\ and\nnewline', "n": 1.5})


def test_spec_example_template_embeds_the_event_as_an_object():
    t = compile_template('{"source": "workato", "environment": "staging", "logEntries": {{log_message}}}')
    out = orjson.loads(t.render(EVENT))
    assert out == {"source": "workato", "environment": "staging", "logEntries": orjson.loads(EVENT)}


def test_triple_brace_log_message_is_the_same_object():
    t = compile_template('{"e": {{{log_message}}}}')
    assert orjson.loads(t.render(EVENT)) == {"e": orjson.loads(EVENT)}


def test_log_message_str_is_an_escaped_json_string():
    t = compile_template('{"s": {{{log_message_str}}}}')
    out = orjson.loads(t.render(EVENT))
    assert isinstance(out["s"], str) and orjson.loads(out["s"]) == orjson.loads(EVENT)


def test_time_placeholders():
    ns = 1_773_505_802_123_456_789
    t = compile_template('{"m": {{log_message}}, "a": {{{now}}}, "b": {{{now_utc}}}, '
                         '"c": {{{now_utc_micro}}}, "d": {{{now_utc_nano}}}}')
    out = orjson.loads(t.render(EVENT, now_ns=ns))
    assert out["b"] == ns // 1_000_000 and out["c"] == ns // 1000 and out["d"] == ns
    assert isinstance(out["b"], int)
    parsed = datetime.fromisoformat(out["a"])
    assert parsed.tzinfo is not None and abs(parsed.timestamp() - ns / 1e9) < 0.001


def test_rendered_messages_are_one_line_even_from_a_pretty_template():
    t = compile_template('{\n  "a": 1,\n  "m": {{log_message}}\n}')
    assert b"\n" not in t.render(EVENT)


@pytest.mark.parametrize("text,why", [
    ('{"a": 1}', "no {{log_message}}"),
    ('{"a": {{log_message}}', "not valid JSON"),
    ('{"a": "{{log_message}}"', "not valid JSON"),
    ('{"a": "x {{{log_message_str}}}"}', "not valid JSON"),
    ("{{now}}", "no {{log_message}}"),
])
def test_invalid_templates_fall_back_with_a_warning(text, why):
    with pytest.raises(TemplateError, match=why.replace("{", r"\{")):
        compile_template(text)
    compiled, warning = try_compile(text)
    assert compiled is None and "default message" in warning


def test_job_path_of_numeric_ids_and_handles():
    assert job_path(100) == "000/000/000/000/000/000/100"
    assert job_path(123456789012345678901) == "123/456/789/012/345/678/901"
    assert job_path("j-KGAKfhsz-GYoLeD") == "j-KGAKfhsz-GYoLeD"


def test_spec_object_keys():
    at = datetime(2018, 5, 21, tzinfo=timezone.utc)
    assert job_key(5234, 234, 100, "succeeded", at) == (
        "5234/jobs/234/20180521/000/000/000/000/000/000/100/5234-234-100-20180521000000-succeeded.json")
    at2 = datetime(2022, 6, 14, 9, 30, tzinfo=timezone.utc)
    assert job_key(1234, 456, "j-KGAKfhsz-GYoLeD", "succeeded", at2) == (
        "1234/jobs/456/20220614/j-KGAKfhsz-GYoLeD/1234-456-j-KGAKfhsz-GYoLeD-20220614093000-succeeded.json")
    assert activity_key(78125, "user_login", "ua-1", at2, prefix="audit/") == (
        "audit/78125/activities/20220614/78125-user_login-ua-1-20220614093000.json")
