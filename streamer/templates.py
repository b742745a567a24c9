"""Custom message templates (spec section 3), compiled once into byte fragments.

A template is JSON with placeholders in value positions. Compiling swaps each placeholder
for a unique string sentinel, parses the result (so an invalid template is caught when the
command is accepted, not per event), re-serialises it compactly (so every message is one
line, which newline-delimited providers need) and splits it into literal byte fragments
around the placeholders. Rendering is then a join: no JSON parsing per event.
"""

from __future__ import annotations

import functools
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import orjson

# `{{log_message}}` and `{{{log_message}}}` mean the same: the event as a JSON object.
_PLACEHOLDER = re.compile(r"\{\{\{(log_message|log_message_str|now|now_utc|now_utc_micro|now_utc_nano)\}\}\}"
                          r"|\{\{(log_message)\}\}")
KINDS = ("log_message", "log_message_str", "now", "now_utc", "now_utc_micro", "now_utc_nano")


class TemplateError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class CompiledTemplate:
    fragments: tuple[bytes, ...]  # len(fragments) == len(slots) + 1
    slots: tuple[str, ...]
    needs_str: bool
    needs_time: bool

    def render(self, event_json: bytes, now_ns: int | None = None) -> bytes:
        values = {"log_message": event_json}
        if self.needs_str:
            values["log_message_str"] = orjson.dumps(event_json.decode("utf-8"))
        if self.needs_time:
            ns = time.time_ns() if now_ns is None else now_ns
            values["now_utc"] = str(ns // 1_000_000).encode()
            values["now_utc_micro"] = str(ns // 1_000).encode()
            values["now_utc_nano"] = str(ns).encode()
            iso = datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).isoformat(timespec="milliseconds")
            values["now"] = orjson.dumps(iso)
        out = [self.fragments[0]]
        for slot, frag in zip(self.slots, self.fragments[1:]):
            out.append(values[slot])
            out.append(frag)
        return b"".join(out)


def compile_template(text: str) -> CompiledTemplate:
    """Compile, or raise TemplateError saying why the default message must be used instead."""
    token = secrets.token_hex(8)
    found: list[str] = []

    def swap(m: re.Match) -> str:
        found.append(m.group(1) or m.group(2))
        return f'"@@{token}:{len(found) - 1}@@"'

    substituted = _PLACEHOLDER.sub(swap, text)
    if "log_message" not in found and "log_message_str" not in found:
        raise TemplateError("template has no {{log_message}} or {{{log_message_str}}} placeholder")
    try:
        parsed = orjson.loads(substituted)
    except orjson.JSONDecodeError as e:
        raise TemplateError(f"template is not valid JSON once placeholders are substituted: {e}") from None
    compact = orjson.dumps(parsed)
    parts = re.split(rb'"@@' + token.encode() + rb":(\d+)@@\"", compact)
    fragments = tuple(parts[0::2])
    slots = tuple(found[int(i)] for i in parts[1::2])
    if len(slots) != len(found):
        # A placeholder inside a JSON string would not survive as a whole value.
        raise TemplateError("placeholders must stand as whole JSON values, not inside strings")
    return CompiledTemplate(fragments=fragments, slots=slots,
                            needs_str="log_message_str" in slots,
                            needs_time=any(s.startswith("now") for s in slots))


@functools.lru_cache(maxsize=4096)
def try_compile(text: str | None) -> tuple[CompiledTemplate | None, str | None]:
    """(compiled, None), or (None, warning) when the default message will be sent instead.

    Cached: many configurations share a template text, and a compiled template is immutable,
    so they share one in memory."""
    if text is None:
        return None, None
    try:
        return compile_template(text), None
    except TemplateError as e:
        return None, f"{e}; the default message (the plain event) will be sent"
